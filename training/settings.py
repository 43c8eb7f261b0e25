"""Configuration read once from environment variables, with defaults that work locally.

Every variable is documented in the README's configuration table; keep the two in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from training.learn.augment import parse_augment
from training.learn.config import TrainConfig, check_pretext
from training.logs import LOG_FORMATS
from training.model.acquisition import parse_strategy
from training.model.config import AUTO_TEMPORAL, check_network, check_temporal
from training.model.litert import EXPORT_MODES, RUNTIMES, check_choice
from training.model.uncertainty import parse_measure
from training.versions.configured import parse_store_url
from training.video.clip import SAMPLE_MODES, SamplingConfig
from training.video.media_policy import parse_allowed_hosts


def _env_number(name: str, default: float, parse: type, what: str):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return parse(raw)
    except ValueError:
        raise ValueError(f"{name} must be {what}, got {raw!r}") from None


def _env_int(name: str, default: int) -> int:
    return _env_number(name, default, int, "an integer")


def _env_float(name: str, default: float) -> float:
    return _env_number(name, default, float, "a number")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _env_bool(name: str, default: bool) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case); anything else is an error, so a
    typo never silently flips a switch."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"{name} must be one of {'/'.join(_TRUE)} or {'/'.join(_FALSE)}, got {raw!r}")


def _env_str(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


@dataclass(frozen=True)
class Settings:
    """All of videoloop's tunables. Build with :meth:`from_env`; tests pass fields directly."""

    model_dir: Path = Path(".videoloop/models")
    cache_dir: Path = Path(".videoloop/cache")
    cache_max_mb: int = 2048
    label_studio_url: str = ""
    label_studio_api_key: str = field(default="", repr=False)
    media_allowed_hosts: str = ""
    """Comma-separated ``host`` or ``host:port`` that task media may come from even at a
    private, loopback or other non-public address (training/video/media_policy.py)."""
    media_max_redirects: int = 3
    """Most redirects one media download follows, each hop checked again."""
    max_video_mb: int = 500
    """Largest video downloaded (Content-Length or bytes read), in MB."""
    download_deadline_s: float = 60.0
    """Longest one media download may take, start to end, in seconds."""
    max_video_pixels: int = 3840 * 2160
    """Largest frame decoded, width x height in pixels (training/video/decode_limits.py)."""
    max_video_seconds: float = 14400.0
    """Longest video decoded, in seconds (declared, or counted while decoding)."""
    max_video_frames: int = 1_000_000
    """Most frames in a video decoded (declared, estimated, or counted while decoding)."""
    decode_deadline_s: float = 60.0
    """Longest one video's decode may take (sample_clip, start to end), in seconds."""
    redis_url: str = ""
    host: str = "0.0.0.0"
    port: int = 9090
    workers: int = 1
    threads: int = 8
    basic_auth_user: str = ""
    basic_auth_pass: str = field(default="", repr=False)
    webhook_secret: str = field(default="", repr=False)
    """When set, /webhook requires the header ``X-Webhook-Secret`` with this value."""
    predict_deadline_s: float = 80.0
    """Seconds a /predict works before answering (Label Studio gives up at 100 s): tasks not
    ready by then get no prediction in that answer and are handed to the background refresh."""
    max_request_mb: int = 16
    """Largest request body the backend reads, in MiB; a larger one is answered 413."""
    force_training_every_s: int = 60
    """Seconds between two forced runs ("Start training") of one project; a forced request
    sooner than that counts as an ordinary training request."""
    log_level: str = "INFO"
    log_format: str = "text"
    """``text`` (human-readable lines) or ``json`` (one object per line, training/logs.py)."""
    predict_batch_size: int = 8
    decode_threads: int = 2
    serving_clip_cache: bool = True
    """/predict keeps decoded clips in CACHE_DIR/clips (keyed by video content and sampling),
    as the refresh and training jobs do: a video asked for again is not decoded again."""
    max_models_in_memory: int = 8
    min_per_label: int = 2
    train_every: int = 1
    train_epochs: int = 30
    train_frames: int = 16
    train_frame_size: int = 112
    sample_fps: float = 0.0
    """Windowed sampling of a project's first model (training/video/windows.py): videos read
    at this many frames per second and cut into windows of TRAIN_FRAMES; 0: TRAIN_FRAMES
    spread over each whole video. Later versions keep their parent's sampling."""
    window_stride: int = 0
    """Samples between two windows' starts under SAMPLE_FPS; 0: half a window."""
    sample_mode: str = "uniform"
    """How a project's first model picks the TRAIN_FRAMES of a long video: ``uniform`` or
    ``keyframe`` (the nearest keyframes: faster, a little less accurate; not with SAMPLE_FPS).
    Later versions keep their parent's."""
    train_timeout_s: int = 3600
    train_lease_s: int = 30
    recover_every_s: int = 5
    worker_max_jobs: int = 50
    """Jobs a ``videoloop worker`` process runs before it replaces itself with a fresh one
    (training/jobs/worker.py): it keeps TensorFlow loaded between jobs; 0 never recycles."""
    worker_keep_warm: bool = True
    """A ``videoloop worker`` keeps its last trained model built and traced, and the version
    models it loaded, for its next jobs (training/learn/warm_model.py,
    training/model/kept_versions.py)."""
    gate_tolerance: float = 0.0
    """How much lower (accuracy, 0-1) a new version may score than the current one and still
    become current."""
    keep_rejected_versions: int = 5
    """Rejected versions kept per project (at least 1); older ones are deleted from the store
    (training/versions/retention.py)."""
    promote_on_start_training: bool = False
    refresh_all_tasks: bool = False
    refresh_chunk_tasks: int = 200
    """A refresh of more tasks than this is split into chunk jobs of this many tasks, which
    idle workers share (training/jobs/refresh_chunks.py); 0 never splits."""
    select_new_version: bool = True
    """After a refresh, make the new version the project's selected predictions version in
    Label Studio (unless another model's is selected there): the score sort follows it."""
    uncertainty_measure: str = "least_confidence"
    """How a prediction's score is measured (training/model/uncertainty.py): least_confidence,
    margin or entropy."""
    train_temporal: str = "auto"
    """The temporal head of a project's first model (training/model/config.py TEMPORAL_HEADS),
    or ``auto``: bilstm for projects with a <TimelineLabels>, lstm for the others."""
    train_network: str = "auto"
    """The per-frame network of a project's first model (training/model/config.py NETWORKS),
    or ``auto``: grid for projects with a <TimelineLabels>, compact for the others."""
    # lean serving: LiteRT export at publish, and the serving runtime
    litert_export: str = "auto"
    """Export each published version to LiteRT (training/model/litert_export.py): 'off',
    'float', or the float file plus a quantised one, 'float16' or 'dynamic', served when it
    passes the parity check; 'auto': 'float16' where SERVING_RUNTIME is litert, else 'off'
    (the export and its parity check add seconds to every publish)."""
    serving_runtime: str = "tensorflow"
    """How serving processes run models: 'tensorflow' (Keras), or 'litert' (the version's
    LiteRT file; TensorFlow is never imported by the serving processes)."""

    # Model store without a shared filesystem (training/versions/s3_storage.py)
    model_store_url: str = ""
    """``s3://bucket/prefix``: versions live there and MODEL_DIR is this machine's cache of
    them; empty: MODEL_DIR is the store, shared by every process."""
    s3_endpoint_url: str = ""
    """An S3-compatible server's address (MinIO, Ceph...); empty for AWS S3. Credentials come
    from boto3's usual sources (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY...)."""

    # Unlabelled videos and augmentation (docs/unlabelled-data.md)
    augment: str = "spatial"
    """Label-keeping augmentation of training clips: ``spatial``, ``temporal``, both
    (comma-separated) or ``none`` (training/learn/augment.py)."""
    train_min_batches: int = 1
    """Batches every training epoch has at least: a small training set (a first model's 2
    clips a label) is gone over several times an epoch, augmented anew each time."""
    pretrain: str = "none"
    """A first model's pre-training on the project's unlabelled clips: ``order``, ``arrow``
    or ``none`` (training/learn/pretext.py)."""
    pretrain_clips: int = 200
    """Most unlabelled tasks a run decodes, for pre-training and pseudo-labels alike; 0 with
    either of them on is refused (they would learn from nothing)."""
    pretrain_epochs: int = 6
    pseudo_labels: int = 0
    """Rounds of a first model's fine-tuning on its confident predictions of the project's
    unlabelled tasks (training/learn/pseudo_labels.py); 0: off."""
    pseudo_threshold: float = 0.8
    """Lowest top probability of an unlabelled clip taken as a pseudo-label."""
    pseudo_per_class: int = 20
    """Most pseudo-labelled clips a class takes in a round (the most confident first)."""
    pseudo_epochs: int = 10
    train_scratch_below: int = 0
    """While a project has fewer labelled tasks than this, each run trains a new model from
    scratch as a first model does (PRETRAIN, PSEUDO_LABELS) instead of fine-tuning the current
    version; the gate still compares with it. 0: always fine-tune (docs/active-learning.md)."""
    train_all_below: int = 0
    """While a run has fewer labelled tasks whose video could be read than this, it trains on
    all of them: no validation or test part, so no quality gate. 0: always hold out
    (TrainConfig.split_fractions)."""

    # Acquisition (issue 15): the order the refresh writes for annotators to sort by
    acquisition: str = "score"
    """How the refresh orders unlabelled tasks (training/model/acquisition.py): ``score`` (the
    prediction score sort alone; no field written), ``bald``, ``kcenter`` or ``badge``."""
    acquisition_batch: int = 32
    """How many tasks ``kcenter``/``badge`` choose together; the rest follow by uncertainty."""
    acquisition_mc_samples: int = 20
    """Dropout passes through the classifier head per clip for ``bald``."""
    acquisition_field: str = "videoloop_rank"
    """The task data field the refresh writes each unlabelled task's place in that order to."""

    def __post_init__(self) -> None:
        """Refuse a misspelt measure or head, half of basic auth, or several serving
        processes without Redis, at start-up."""
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError(
                "BASIC_AUTH_USER and BASIC_AUTH_PASS go together: set both, or neither"
            )
        if self.workers > 1 and not self.redis_url:
            raise ValueError(
                f"WORKERS={self.workers} needs REDIS_URL: without it each serving process would "
                "keep its own training queue and state (the embedded mode is one process)"
            )
        try:
            measure = parse_measure(self.uncertainty_measure).value
        except ValueError as exc:
            raise ValueError(f"UNCERTAINTY_MEASURE: {exc}") from None
        object.__setattr__(self, "uncertainty_measure", measure)
        self._check_acquisition()
        if self.train_temporal != AUTO_TEMPORAL:
            try:
                check_temporal(self.train_temporal)
            except ValueError as exc:
                raise ValueError(f"TRAIN_TEMPORAL: {exc} (or {AUTO_TEMPORAL})") from None
        if self.train_network != AUTO_TEMPORAL:
            try:
                check_network(self.train_network)
            except ValueError as exc:
                raise ValueError(f"TRAIN_NETWORK: {exc} (or {AUTO_TEMPORAL})") from None
        self._check_media()
        if self.model_store_url:
            parse_store_url(self.model_store_url)  # ValueError naming MODEL_STORE_URL
        self._check_unlabelled()
        if self.sample_mode not in SAMPLE_MODES:
            raise ValueError(f"SAMPLE_MODE must be one of {', '.join(SAMPLE_MODES)}")
        try:
            self.first_sampling()
        except ValueError as exc:
            raise ValueError(
                f"TRAIN_FRAMES, TRAIN_FRAME_SIZE, SAMPLE_FPS, WINDOW_STRIDE, SAMPLE_MODE: {exc}"
            ) from None
        object.__setattr__(self, "log_format", self.log_format.lower())
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")
        if self.keep_rejected_versions < 1:
            raise ValueError("KEEP_REJECTED_VERSIONS must be at least 1")
        check_choice("LITERT_EXPORT", self.litert_export, EXPORT_MODES)
        check_choice("SERVING_RUNTIME", self.serving_runtime, RUNTIMES)

    def _check_unlabelled(self) -> None:
        """Refuse a misspelt augmentation or pretext task, or pseudo-label settings out of
        range; normalise AUGMENT."""
        try:
            augment = ",".join(parse_augment(self.augment)) or "none"
        except ValueError as exc:
            raise ValueError(f"AUGMENT: {exc}") from None
        object.__setattr__(self, "augment", augment)
        try:
            check_pretext(self.pretrain)
        except ValueError as exc:
            raise ValueError(f"PRETRAIN: {exc}") from None
        if self.pretrain_clips < 0 or self.pretrain_epochs < 1 or self.train_min_batches < 1:
            raise ValueError(
                "PRETRAIN_CLIPS must be 0 or more, PRETRAIN_EPOCHS and TRAIN_MIN_BATCHES at least 1"
            )
        if self.pseudo_labels < 0:
            raise ValueError("PSEUDO_LABELS (rounds) must be 0 (off) or more")
        if not 0.0 <= self.pseudo_threshold <= 1.0:
            raise ValueError("PSEUDO_THRESHOLD must be a probability, from 0 to 1")
        if self.pseudo_per_class < 1 or self.pseudo_epochs < 1:
            raise ValueError("PSEUDO_PER_CLASS and PSEUDO_EPOCHS must be at least 1")
        if self.train_scratch_below < 0 or self.train_all_below < 0:
            raise ValueError(
                "TRAIN_SCRATCH_BELOW and TRAIN_ALL_BELOW (labelled tasks) must be 0 (off) or more"
            )
        if self.pretrain_clips == 0 and (self.pretrain != "none" or self.pseudo_labels):
            raise ValueError(  # both learn from at most PRETRAIN_CLIPS unlabelled tasks
                "PRETRAIN and PSEUDO_LABELS learn from unlabelled tasks: with PRETRAIN_CLIPS=0 "
                "they would have none; set PRETRAIN_CLIPS above 0 or turn them off"
            )

    def first_sampling(self) -> SamplingConfig:
        """The sampling of a project's first model (TRAIN_FRAMES, TRAIN_FRAME_SIZE,
        SAMPLE_FPS, WINDOW_STRIDE, SAMPLE_MODE); later versions keep their parent's."""
        return SamplingConfig(
            frames=self.train_frames,
            height=self.train_frame_size,
            width=self.train_frame_size,
            sample_fps=self.sample_fps,
            window_stride=self.window_stride,
            sample_mode=self.sample_mode,
        )

    def train_config(self, **overrides) -> TrainConfig:
        """The TrainConfig of a run under these settings (TRAIN_EPOCHS, AUGMENT, PRETRAIN_*,
        PSEUDO_*), with ``overrides``."""
        augment = parse_augment(self.augment)
        values = {
            "epochs": self.train_epochs,
            "augment": "spatial" in augment,
            "augment_temporal": "temporal" in augment,
            "min_batches": self.train_min_batches,
            "pretrain": self.pretrain,
            "pretrain_clips": self.pretrain_clips,
            "pretrain_epochs": self.pretrain_epochs,
            "pseudo_rounds": self.pseudo_labels,
            "pseudo_threshold": self.pseudo_threshold,
            "pseudo_per_class": self.pseudo_per_class,
            "pseudo_epochs": self.pseudo_epochs,
            "train_all_below": self.train_all_below,
        }
        return TrainConfig(**{**values, **overrides})

    def _check_acquisition(self) -> None:
        try:
            object.__setattr__(self, "acquisition", parse_strategy(self.acquisition).value)
        except ValueError as exc:
            raise ValueError(f"ACQUISITION: {exc}") from None
        if self.acquisition_batch < 1 or self.acquisition_mc_samples < 2:
            raise ValueError(
                "ACQUISITION_BATCH must be 1 or more, ACQUISITION_MC_SAMPLES 2 or more"
            )
        if not self.acquisition_field.isidentifier():
            raise ValueError("ACQUISITION_FIELD must be a plain name (letters, digits, _)")

    def _check_media(self) -> None:
        """Refuse media limits that would disable themselves, and a malformed allow-list."""
        try:
            parse_allowed_hosts(self.media_allowed_hosts)
        except ValueError as exc:
            raise ValueError(f"MEDIA_ALLOWED_HOSTS: {exc}") from None
        if self.media_max_redirects < 0:
            raise ValueError("MEDIA_MAX_REDIRECTS must be 0 or more")
        if self.max_video_mb <= 0:
            raise ValueError("MAX_VIDEO_MB must be more than 0")
        if self.download_deadline_s <= 0:
            raise ValueError("DOWNLOAD_DEADLINE_S must be more than 0")
        for name in (
            "max_video_pixels",
            "max_video_seconds",
            "max_video_frames",
            "decode_deadline_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.upper()} must be more than 0")

    @classmethod
    def from_env(cls) -> Settings:
        """Read every setting from its environment variable (the upper-case field name)."""
        values: dict[str, object] = {}
        for f in fields(cls):
            default = f.default
            name = f.name.upper()
            if isinstance(default, bool):  # before int: bool is a subclass of int
                values[f.name] = _env_bool(name, default)
            elif isinstance(default, int):
                values[f.name] = _env_int(name, default)
            elif isinstance(default, float):
                values[f.name] = _env_float(name, default)
            elif isinstance(default, Path):
                values[f.name] = Path(_env_str(name, str(default)))
            else:
                values[f.name] = _env_str(name, str(default))
        return cls(**values)  # type: ignore[arg-type]

    @property
    def litert_export_mode(self) -> str:
        """LITERT_EXPORT with ``auto`` decided: what publishing exports."""
        if self.litert_export != "auto":
            return self.litert_export
        return "float16" if self.serving_runtime == "litert" else "off"

    @property
    def embedded(self) -> bool:
        """True when no REDIS_URL is set: jobs run in-process on an embedded queue."""
        return not self.redis_url
