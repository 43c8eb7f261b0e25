"""Training a CNN-LSTM on labelled clips, evaluating it on a held-out split, publishing it.

Used by ``videoloop train`` (offline) and by the RQ training job. Progress is reported as
plain dicts through a callback (``{"stage": "decode"|"train"|"evaluate"|"gate"|"publish",
...}``), which the CLI draws as a progress bar and the job stores in its RQ meta.

The quality gate: before publishing, the new version and the project's current one are
scored on the same held-out clips (this run's test split, minus any clip the current version
trained or early-stopped on), and the figures go into ``meta["gate"]``. Whether the new
version then becomes current is the caller's decision (:func:`gate_allows`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.learn.dataset import (
    ClipArrays,
    LabelledVideo,
    as_labelled_video,
    class_weights,
    content_keys,
    decode_labelled,
    stable_split,
)
from training.learn.metrics import classification_metrics
from training.learn.reports import (
    CONFUSION_MATRIX_FILE,
    LEARNING_CURVE_FILE,
    TIMELINE_CONFUSION_MATRIX_FILE,
    plot_confusion_matrix,
    plot_learning_curve,
)
from training.model.build import ModelConfig, build_model, compile_model
from training.model.loaded import as_outputs
from training.versions.store import MODEL_FILE, SPLIT_FILE, ModelStore, VersionInfo
from training.video.clip import SamplingConfig

if TYPE_CHECKING:
    from training.video.clipcache import ClipCache

log = logging.getLogger(__name__)

Progress = Callable[[dict], None]


class TrainingError(RuntimeError):
    """The data cannot train a model (too few usable videos or labels)."""


@dataclass(frozen=True)
class TrainConfig:
    """How long and on what split to train; stored in meta.json."""

    epochs: int = 40
    batch_size: int = 8
    patience: int = 10
    """Epochs without validation-loss improvement before stopping (best weights are kept)."""
    min_epochs: int = 12
    """Epochs before early stopping and learning-rate cuts may act (capped at ``epochs``).

    Why: with the few clips of an early retrain (tens, a handful of batches an epoch),
    validation accuracy sat at chance for the first ~12 epochs and then jumped to 1.0
    (2 labels x 13 clips at 64 px); stopping on the epoch-1 validation loss kept a model
    that had learnt nothing. Best weights are tracked from this epoch on."""
    test_fraction: float = 0.2
    """Held out for the final evaluation, never seen in training or early stopping."""
    val_fraction: float = 0.15
    augment: bool = True
    """Brightness/contrast and small translations, the same for all frames of a clip:
    they keep temporal order and direction (no flips, no time reversal)."""
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _noop(_: dict) -> None:
    pass


def make_dataset(
    data: ClipArrays,
    num_classes: int,
    batch_size: int,
    *,
    shuffle: bool,
    augment: bool,
    seed: int,
    weights: dict[int, float] | None = None,
    timeline_labels: int = 0,
    frame_weights: dict[int, float] | None = None,
):
    """A tf.data pipeline over uint8 clips: shuffle, augment, batch, prefetch.

    Without a timeline head the targets are the one-hot classes with ``weights`` as sample
    weights (the model has one output). With ``timeline_labels`` > 0 targets and sample
    weights are dicts keyed by output: ``"classes"`` (when num_classes > 0; weight 0 for a
    clip without a class) and ``"timeline"`` (one-hot per frame over 1 + timeline_labels,
    weight ``frame_weights[target]`` per frame and 0 where the target is IGNORE).
    """
    import tensorflow as tf

    n, t, h, w = len(data), *data.frames.shape[1:4]
    has_class = data.y >= 0
    onehot = np.zeros((n, max(num_classes, 1)), np.float32)
    onehot[has_class, data.y[has_class]] = 1.0
    sample_w = np.asarray(
        [(weights or {}).get(int(c), 1.0) if c >= 0 else 0.0 for c in data.y], np.float32
    )
    frame_onehot = frame_w = None
    if timeline_labels:
        if data.frame_y is None:
            raise ValueError("a timeline model needs per-frame targets (ClipArrays.frame_y)")
        counted = data.frame_y >= 0
        frame_onehot = np.zeros((n, t, timeline_labels + 1), np.float32)
        frame_onehot[counted, data.frame_y[counted]] = 1.0
        lookup = np.asarray(
            [(frame_weights or {}).get(i, 1.0) for i in range(timeline_labels + 1)], np.float32
        )
        frame_w = np.where(counted, lookup[np.clip(data.frame_y, 0, None)], 0.0).astype(np.float32)
    rng = np.random.default_rng(seed)

    def targets(i):
        if not timeline_labels:
            return onehot[i], sample_w[i]
        y, sw = {"timeline": frame_onehot[i]}, {"timeline": frame_w[i]}
        if num_classes:
            y["classes"], sw["classes"] = onehot[i], sample_w[i]
        return y, sw

    def generate():
        order = rng.permutation(n) if shuffle else np.arange(n)
        for i in order:
            y, sw = targets(i)
            yield {"frames": data.frames[i], "mask": data.mask[i]}, y, sw

    class_spec = tf.TensorSpec((num_classes,), tf.float32)
    if not timeline_labels:
        y_spec, sw_spec = class_spec, tf.TensorSpec((), tf.float32)
    else:
        y_spec = {"timeline": tf.TensorSpec((t, timeline_labels + 1), tf.float32)}
        sw_spec = {"timeline": tf.TensorSpec((t,), tf.float32)}
        if num_classes:
            y_spec["classes"], sw_spec["classes"] = class_spec, tf.TensorSpec((), tf.float32)
    signature = (
        {
            "frames": tf.TensorSpec((t, h, w, 3), tf.uint8),
            "mask": tf.TensorSpec((t,), tf.bool),
        },
        y_spec,
        sw_spec,
    )
    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    if augment:
        pad = max(2, h // 16)

        def jitter(x, y, sw):
            f = tf.cast(x["frames"], tf.float32)
            f = f * tf.random.uniform((), 0.75, 1.25) + tf.random.uniform((), -25.0, 25.0)
            f = tf.pad(f, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
            oy = tf.random.uniform((), 0, 2 * pad + 1, tf.int32)
            ox = tf.random.uniform((), 0, 2 * pad + 1, tf.int32)
            f = f[:, oy : oy + h, ox : ox + w, :]
            f = tf.cast(tf.clip_by_value(f, 0.0, 255.0), tf.uint8)
            return {"frames": tf.ensure_shape(f, (t, h, w, 3)), "mask": x["mask"]}, y, sw

        ds = ds.map(jitter, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def predict_outputs(model, data: ClipArrays, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Every output for every clip, batch by batch, without model.predict's overhead."""
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(data), batch_size):
        batch = {"frames": data.frames[i : i + batch_size], "mask": data.mask[i : i + batch_size]}
        for head, value in as_outputs(model.predict_on_batch(batch)).items():
            parts.setdefault(head, []).append(value)
    if not parts:  # no clips: empty arrays of the right width
        outputs = model.output if isinstance(model.output, dict) else {"classes": model.output}
        return {k: np.zeros((0, *v.shape[1:]), np.float32) for k, v in outputs.items()}
    return {head: np.concatenate(values) for head, values in parts.items()}


def predict_arrays(model, data: ClipArrays, batch_size: int = 16) -> np.ndarray:
    """Class probabilities for every clip (the ``"classes"`` output)."""
    return predict_outputs(model, data, batch_size)["classes"]


WARM_START_LR_FACTOR = 0.3
"""Fine-tuning from a parent version starts at this fraction of the learning rate."""


def warm_start(
    model, parent: VersionInfo, labels: Sequence[str], timeline_labels: Sequence[str] = ()
) -> str:
    """Copy a parent version's weights into ``model``, layer by layer (by name and shape).

    Returns how the model starts: ``"parent"`` (same labels on every head: every layer,
    outputs included), ``"parent-new-head"`` (labels changed, or a head was added: CNN and
    LSTM kept, new output layers where the labels differ), or ``"scratch"`` when no layer
    matched.
    """
    import keras

    import training.model.build  # noqa: F401  (custom layers for deserialisation)

    old = keras.saving.load_model(parent.model_path, compile=False)
    same = {
        "classes": list(parent.labels) == list(labels),
        "timeline": list(parent.meta.get("timeline_labels") or []) == list(timeline_labels),
    }
    copied = 0
    for layer in model.layers:
        if not layer.weights or not same.get(layer.name, True):
            continue
        try:
            source = old.get_layer(layer.name)
        except ValueError:
            continue
        weights = source.get_weights()
        if [w.shape for w in weights] == [w.shape for w in layer.get_weights()]:
            layer.set_weights(weights)
            copied += 1
    if not copied:
        return "scratch"
    return "parent" if all(same.values()) else "parent-new-head"


def fit(
    train: ClipArrays,
    val: ClipArrays | None,
    labels: Sequence[str],
    sampling: SamplingConfig,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    parent: VersionInfo | None = None,
    progress: Progress = _noop,
    timeline_labels: Sequence[str] = (),
):
    """Train a model; returns (model, history dict, init). Keeps the best-validation weights.

    With ``parent``, starts from that version's weights (see :func:`warm_start`) at a lower
    learning rate; ``init`` says which start was taken. ``labels`` may be empty when
    ``timeline_labels`` is not (a timeline-only model); then ``train.frame_y`` is required.
    """
    import keras

    keras.utils.set_random_seed(train_config.seed)
    n_timeline = len(timeline_labels)
    model = build_model(len(labels), sampling, model_config, timeline_labels=n_timeline)
    init = "scratch"
    if parent is not None:
        init = warm_start(model, parent, labels, timeline_labels)
        if init != "scratch":
            compile_model(model, model_config, model_config.learning_rate * WARM_START_LR_FACTOR)
    frame_weights = (
        class_weights(train.frame_y.ravel(), n_timeline + 1)
        if n_timeline and train.frame_y is not None
        else None
    )
    datasets = functools.partial(
        make_dataset,
        num_classes=len(labels),
        batch_size=train_config.batch_size,
        timeline_labels=n_timeline,
        frame_weights=frame_weights,
    )
    train_ds = datasets(
        train,
        shuffle=True,
        augment=train_config.augment,
        seed=train_config.seed,
        weights=class_weights(train.y, len(labels)),
    )
    has_val = val is not None and len(val) > 0
    val_ds = datasets(val, shuffle=False, augment=False, seed=0) if has_val else None
    epochs = train_config.epochs

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = {k: round(float(v), 4) for k, v in (logs or {}).items()}
            log.info("epoch %d/%d %s", epoch + 1, epochs, logs)
            progress({"stage": "train", "epoch": epoch + 1, "epochs": epochs, **logs})

    callbacks: list = [Report(), *training_callbacks(train_config, has_val=has_val)]
    result = model.fit(
        train_ds, validation_data=val_ds, epochs=epochs, verbose=0, callbacks=callbacks
    )
    history = {k: [float(v) for v in vs] for k, vs in result.history.items()}
    recalibrate_batchnorm(model, train, train_config.batch_size)
    clean = as_float32(model, len(labels), sampling, model_config, n_timeline)
    return clean, history, init


def recalibrate_batchnorm(model, data: ClipArrays, batch_size: int = 8) -> int:
    """Set every BatchNormalization layer's moving mean and variance to their averages over
    ``data`` (the training clips, unaugmented), leaving every other weight as it is.

    Why: the moving statistics follow the batches with momentum 0.9, so they need a few
    dozen training steps to settle; a first model trained on 2 clips per label sees one
    batch an epoch, and its inference-mode statistics were still far from the data's (its
    test accuracy on 4 classes: 0.25 at 8 x 64 x 64, 0.33 after this; at 50 clips and more it
    changed nothing). Returns how many layers were recalibrated.
    """
    import keras

    layers: list = []

    def walk(layer) -> None:
        if isinstance(layer, keras.layers.BatchNormalization):
            layers.append(layer)
        for inner in getattr(layer, "layers", None) or ():
            walk(inner)

    walk(model)
    if not layers or not len(data):
        return 0
    momenta = [layer.momentum for layer in layers]
    try:
        for k, start in enumerate(range(0, len(data), batch_size), start=1):
            for layer in layers:
                layer.momentum = (k - 1) / k  # a running average over the batches
            batch = slice(start, start + batch_size)
            model({"frames": data.frames[batch], "mask": data.mask[batch]}, training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(layers)


def training_callbacks(train_config: TrainConfig, *, has_val: bool) -> list:
    """Early stopping (best weights kept) and learning-rate halving on plateaus, both on the
    validation loss (the training loss without validation clips), from ``min_epochs`` on."""
    import keras

    class ReduceLROnPlateauAfter(keras.callbacks.ReduceLROnPlateau):
        """ReduceLROnPlateau that starts watching at ``start`` (Keras has no such option)."""

        def __init__(self, start: int, **kwargs):
            super().__init__(**kwargs)
            self.start = start

        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 >= self.start:
                super().on_epoch_end(epoch, logs)

    start = max(0, min(train_config.min_epochs, train_config.epochs) - 1)
    monitor = "val_loss" if has_val else "loss"
    return [
        keras.callbacks.EarlyStopping(
            monitor=monitor,
            patience=train_config.patience,
            restore_best_weights=True,
            start_from_epoch=start,
        ),
        ReduceLROnPlateauAfter(
            start,
            monitor=monitor,
            factor=0.5,
            patience=max(2, train_config.patience // 3),
            min_lr=1e-5,
        ),
    ]


def as_float32(
    model,
    num_classes: int,
    sampling: SamplingConfig,
    model_config: ModelConfig,
    timeline_labels: int = 0,
):
    """The same model with float32 layers, for publishing.

    Trained under mixed precision (GPU), a model's layers compute in float16; serving on CPU
    should not inherit that. The variables are float32 either way, so copy them across.
    """
    import keras

    policy = keras.mixed_precision.global_policy()
    if policy.name == "float32":
        return model
    keras.mixed_precision.set_global_policy("float32")
    try:
        clean = build_model(num_classes, sampling, model_config, timeline_labels)
        clean.set_weights(model.get_weights())
    finally:
        keras.mixed_precision.set_global_policy(policy)
    return clean


GATE_METRICS = {"classes": "accuracy", "timeline": "frame_accuracy"}
"""What the quality gate compares, per head it judges: the share of held-out clips each
version classifies right, or (timeline-only models) the mean share of each clip's annotated
frames it labels right."""
_GATE_EPSILON = 1e-9


def gate_head(labels: Sequence[str], timeline_labels: Sequence[str] = ()) -> str:
    """The head the gate judges a model by: its classes when it has them, else its timeline."""
    return "classes" if labels else "timeline"


def clip_scores(
    probs: np.ndarray,
    data: ClipArrays,
    head: str,
    model_labels: Sequence[str],
    data_labels: Sequence[str],
) -> list[float | None]:
    """Per clip, how right one head of a model is: 1/0 for the class, the share of counted
    frames for the timeline; None where the clip has no target for that head.

    Labels are compared by name, so a model with other labels (the current version) is
    scored on the same footing: ``model_labels`` name the model's outputs, ``data_labels``
    what ``data.y`` / ``data.frame_y`` index (timeline index 0 is "no label" on both sides).
    """
    out: list[float | None] = []
    if head == "classes":
        predicted = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
        for p, y in zip(predicted, data.y, strict=True):
            out.append(None if y < 0 else float(model_labels[int(p)] == data_labels[int(y)]))
        return out
    names_out = ["", *model_labels]
    names_data = ["", *data_labels]
    predicted = probs.argmax(axis=-1) if len(probs) else np.zeros((0, 0), np.int64)
    frame_y = data.frame_y if data.frame_y is not None else np.full(data.mask.shape, -1)
    for p, y in zip(predicted, frame_y, strict=True):
        counted = y >= 0
        if not counted.any():
            out.append(None)
            continue
        pairs = zip(p[counted], y[counted], strict=True)
        right = [names_out[int(a)] == names_data[int(b)] for a, b in pairs]
        out.append(float(np.mean(right)))
    return out


def quality_gate(
    candidate: np.ndarray | dict[str, np.ndarray],
    test: ClipArrays,
    labels: Sequence[str],
    sampling: SamplingConfig,
    current: VersionInfo | None,
    *,
    tolerance: float = 0.0,
    threads: int = 2,
    cache: ClipCache | None = None,
    timeline_labels: Sequence[str] = (),
) -> dict:
    """Score a candidate and the current version on the same held-out clips.

    The clips are ``test`` less those the current version trained or early-stopped on (its
    ``split.json``; versions without one are assumed to have seen none of them), and less
    those without a target for the judged head (:func:`gate_head`). The current model
    predicts with its own sampling (clips are decoded again when it differs) and its own
    labels: a label it does not know counts as a miss.

    Args:
        candidate: the candidate's outputs for every clip of ``test`` (a dict by head, or
            the class probabilities of a plain classifier).
        test: this run's test clips, with their keys.
        labels, timeline_labels: the candidate's labels (what ``test.y`` and
            ``test.frame_y`` index).
        sampling: how ``test`` was sampled.
        current: the version to beat; None when the project has none.
        tolerance: how much lower (0-1) the candidate may score and still pass.

    Returns:
        ``{"metric", "candidate", "current", "current_version", "tolerance", "passed",
        "clips", "reason"}``; ``passed`` is True whenever there is nothing to compare with
        (no current version, no clip it has not seen, a current model that cannot be read or
        has no such head).
    """
    outputs = candidate if isinstance(candidate, dict) else {"classes": candidate}
    head = gate_head(labels, timeline_labels)
    names = labels if head == "classes" else timeline_labels
    scores = clip_scores(outputs[head], test, head, names, names)
    scored = [s for s in scores if s is not None]
    overall = float(np.mean(scored)) if scored else None
    metric = GATE_METRICS[head]
    gate: dict = {
        "metric": metric,
        "candidate": round(overall, 4) if overall is not None else None,
        "current": None,
        "current_version": current.version if current is not None else None,
        "tolerance": float(tolerance),
        "passed": True,
        "clips": 0,
        "reason": "",
    }
    if current is None:
        return {**gate, "reason": "no current version to compare with"}
    seen = _trained_keys(current)
    idx = [i for i, key in enumerate(test.keys) if key not in seen and scores[i] is not None]
    gate["excluded_seen_by_current"] = sum(1 for key in test.keys if key in seen)
    if not idx:
        return {**gate, "reason": "no held-out clip that the current version has not seen"}
    try:
        current_scores = _current_scores(
            current, test.subset(idx), head, names, sampling, threads, cache
        )
    except Exception as exc:  # a broken current model must not stop a new one from replacing it
        log.warning("gate: current version %s cannot be scored", current.version, exc_info=True)
        return {**gate, "reason": f"the current version cannot be scored: {exc}"}
    if current_scores is None:
        return {**gate, "reason": f"the current version has no comparable {head} output"}
    keep = [(i, c) for i, c in zip(idx, current_scores, strict=True) if c is not None]
    if not keep:
        return {**gate, "reason": "no held-out clip the current version can read"}
    candidate_score = float(np.mean([scores[i] for i, _ in keep]))
    current_score = float(np.mean([c for _, c in keep]))
    passed = candidate_score + _GATE_EPSILON >= current_score - tolerance
    verdict = "not worse than" if passed else "worse than"
    return {
        **gate,
        "candidate": round(candidate_score, 4),
        "current": round(current_score, 4),
        "passed": bool(passed),
        "clips": len(keep),
        "reason": (
            f"{metric} {candidate_score:.3f} on {len(keep)} held-out clips is {verdict} the "
            f"current version's {current_score:.3f} (tolerance {tolerance:g})"
        ),
    }


def gate_allows(gate: dict | None, *, force: bool = False) -> bool:
    """Whether a version with this gate result may become current (``force``: anyway)."""
    return force or gate is None or bool(gate.get("passed", True))


def _trained_keys(info: VersionInfo) -> set[str]:
    """Keys of the clips a version trained or early-stopped on (empty without split.json)."""
    try:
        split = json.loads((info.path / SPLIT_FILE).read_text())
    except (OSError, ValueError):
        return set()
    return {str(k) for part in ("train", "val") for k in split.get(part) or ()}


def _current_scores(
    current: VersionInfo,
    clips: ClipArrays,
    head: str,
    names: Sequence[str],
    sampling: SamplingConfig,
    threads: int,
    cache: ClipCache | None,
) -> list[float | None] | None:
    """Per clip, the current version's :func:`clip_scores` on ``head`` (None: it could not
    read the clip); None when the current version has no such head, or (timeline) samples
    other frames than ``sampling``, so the per-frame targets do not apply to it."""
    import keras

    import training.model.build  # noqa: F401  (custom layers for deserialisation)
    from training.video.clip import stack_clips
    from training.video.decoder import decode_many

    current_names = (
        list(current.meta["labels"])
        if head == "classes"
        else list(current.meta.get("timeline_labels") or [])
    )
    if not current_names:
        return None
    current_sampling = SamplingConfig.from_dict(current.meta["sampling"])
    if current_sampling == sampling:
        arrays, readable = clips, list(range(len(clips)))
    elif head == "timeline":
        return None
    else:
        decoded = decode_many(clips.sources, current_sampling, threads=threads, cache=cache)
        readable = [i for i, c in enumerate(decoded) if not isinstance(c, Exception)]
        if not readable:
            return [None] * len(clips)
        frames, mask = stack_clips([decoded[i] for i in readable])
        arrays = ClipArrays(frames, mask, clips.y[readable], [clips.sources[i] for i in readable])
    model = keras.saving.load_model(current.model_path, compile=False)
    outputs = predict_outputs(model, arrays)
    if head not in outputs:
        return None
    per_clip = clip_scores(outputs[head], arrays, head, current_names, names)
    scores: list[float | None] = [None] * len(clips)
    for i, score in zip(readable, per_clip, strict=True):
        scores[i] = score
    return scores


def train_and_publish(
    store: ModelStore,
    project: str,
    videos: Sequence[LabelledVideo | tuple[str | os.PathLike, str]],
    *,
    labels: Sequence[str] | None = None,
    timeline_labels: Sequence[str] = (),
    sampling: SamplingConfig | None = None,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    threads: int = 2,
    parent: VersionInfo | None = None,
    cache: ClipCache | None = None,
    extra_meta: dict | None = None,
    make_current: bool = True,
    keys: Sequence[str] | None = None,
    gate_tolerance: float = 0.0,
    progress: Progress = _noop,
) -> VersionInfo:
    """Decode, split, train, evaluate on the held-out split, gate and publish a new version.

    The split is stable (:func:`training.learn.dataset.stable_split` on ``keys``): a video keeps its
    part across runs, so the quality gate's clips are ones the current version never trained
    on. The gate's figures go into ``meta["gate"]``, the split's keys into ``split.json``.

    Args:
        store: where the version is published.
        project: Label Studio project id.
        videos: LabelledVideo items (a class, timeline segments, or both) or (path, label).
        labels: the class order of the model's output; default: sorted classes of ``videos``
            (may be empty when ``timeline_labels`` is not: a timeline-only model).
        timeline_labels: the frame-level labels (outputs 1..; 0 is "no label"); empty: no
            timeline head.
        sampling, model_config: default the parent's (to fine-tune it), else the defaults.
        parent: a version to fine-tune from (see :func:`warm_start`); None trains from scratch.
        cache: decoded-clip cache, so a retrain does not decode the same video again.
        extra_meta: more fields for meta.json (where the data came from, what triggered it).
        make_current: point the project's ``current`` at the new version, whatever the gate
            says (callers that honour the gate pass False and decide with
            :func:`gate_allows`).
        keys: one stable identity per video for the split (Label Studio task ids); default
            the videos' content hashes.
        gate_tolerance: see :func:`quality_gate`; the version compared with is ``parent``,
            else the project's current version.
        progress: called with dicts describing each stage.

    Returns:
        The published version (metrics in ``meta["metrics"]``).

    Raises:
        TrainingError: one class (or none, without timeline labels), a class without any
            readable video, or timeline labels without any annotated frame.
    """
    if parent is not None:
        sampling = sampling or SamplingConfig.from_dict(parent.meta["sampling"])
        model_config = model_config or ModelConfig.from_dict(parent.meta["model"])
    sampling = sampling or SamplingConfig()
    model_config = model_config or ModelConfig()
    train_config = train_config or TrainConfig()
    items = [as_labelled_video(v) for v in videos]
    timeline_labels = list(timeline_labels)
    if labels is None:
        labels = sorted({v.label for v in items if v.label is not None})
    labels = list(labels)
    if len(labels) == 1 or (not labels and not timeline_labels):
        raise TrainingError(f"need at least two labels to train, got {labels}")
    started = time.perf_counter()

    if keys is None:
        keys = content_keys([v.path for v in items])
    progress({"stage": "decode", "done": 0, "total": len(items)})
    data, skipped = decode_labelled(
        items,
        labels,
        sampling,
        threads=threads,
        cache=cache,
        progress=lambda done, total: progress({"stage": "decode", "done": done, "total": total}),
        keys=keys,
        timeline_labels=timeline_labels,
    )
    counts = np.bincount(data.y[data.has_class], minlength=len(labels))
    if labels and (counts == 0).any():
        missing = [label for label, c in zip(labels, counts, strict=True) if c == 0]
        raise TrainingError(f"no readable video for labels {missing}")
    frame_counts = (
        np.bincount(data.frame_y[data.frame_y >= 0], minlength=len(timeline_labels) + 1)
        if data.frame_y is not None
        else np.zeros(1, np.int64)
    )
    if timeline_labels and not frame_counts[1:].sum():
        raise TrainingError(f"no annotated frame of the timeline labels {timeline_labels}")

    train_idx, test_idx, val_idx = stable_split(
        data.keys, data.y, (train_config.test_fraction, train_config.val_fraction)
    )
    train, test, val = data.subset(train_idx), data.subset(test_idx), data.subset(val_idx)
    log.info(
        "project %s: %d train, %d val, %d test clips", project, len(train), len(val), len(test)
    )

    model, history, init = fit(
        train,
        val,
        labels,
        sampling,
        model_config,
        train_config,
        parent=parent,
        progress=progress,
        timeline_labels=timeline_labels,
    )

    progress({"stage": "evaluate"})
    test_outputs = predict_outputs(model, test)
    metrics = {
        "test": evaluate(test_outputs, test, labels, timeline_labels),
        "val": evaluate(predict_outputs(model, val), val, labels, timeline_labels),
    }
    log.info("project %s: test metrics %s", project, metrics["test"])

    progress({"stage": "gate"})
    current = parent if parent is not None else store.get_current_info(project)
    gate = quality_gate(
        test_outputs,
        test,
        labels,
        sampling,
        current,
        tolerance=gate_tolerance,
        threads=threads,
        cache=cache,
        timeline_labels=timeline_labels,
    )
    log.info("project %s: quality gate: %s", project, gate["reason"])
    seconds = round(time.perf_counter() - started, 1)

    progress({"stage": "publish"})

    def write(folder: Path) -> dict:
        model.save(folder / MODEL_FILE)
        plot_learning_curve(history, folder / LEARNING_CURVE_FILE)
        if labels:
            matrix = np.asarray(metrics["test"]["confusion_matrix"])
            plot_confusion_matrix(matrix, labels, folder / CONFUSION_MATRIX_FILE)
        if timeline_labels:
            matrix = np.asarray(metrics["test"]["timeline"]["confusion_matrix"])
            names = [NO_LABEL_NAME, *timeline_labels]
            plot_confusion_matrix(matrix, names, folder / TIMELINE_CONFUSION_MATRIX_FILE)
        split = {"train": train.keys, "val": val.keys, "test": test.keys}
        (folder / SPLIT_FILE).write_text(json.dumps(split))
        dataset = {
            "videos": len(items),
            "train": len(train),
            "val": len(val),
            "test": len(test),
            "per_label": {label: int(c) for label, c in zip(labels, counts, strict=True)},
            "skipped": [{"video": v, "reason": r} for v, r in skipped],
            "split": "stable",
        }
        if timeline_labels:
            dataset["timeline_frames"] = {
                name: int(c)
                for name, c in zip([NO_LABEL_NAME, *timeline_labels], frame_counts, strict=True)
            }
        return {
            "labels": labels,
            "timeline_labels": timeline_labels,
            "sampling": sampling.to_dict(),
            "model": {**model_config.to_dict(), "parameters": int(model.count_params())},
            "training": {
                **train_config.to_dict(),
                "epochs_run": len(history.get("loss", [])),
                "seconds": seconds,
            },
            "history": history,
            "metrics": metrics,
            "gate": gate,
            "dataset": dataset,
            "parent": parent.version if parent is not None and init != "scratch" else None,
            "init": init,
            "previous_current": store.get_current(project),
            **(extra_meta or {}),
            "created_at": time.time(),
            "software": _software_versions(),
        }

    info = store.publish(project, write, make_current=make_current)
    progress({"stage": "done", "version": info.version, "test_accuracy": gate["candidate"]})
    return info


NO_LABEL_NAME = "(no label)"
"""How timeline output 0 is named in metrics and pictures."""


def evaluate(
    outputs: dict[str, np.ndarray],
    data: ClipArrays,
    labels: Sequence[str],
    timeline_labels: Sequence[str] = (),
) -> dict:
    """A version's metrics on some clips: classification metrics of the clips with a class
    (``accuracy`` None for a timeline-only model) and, with a timeline head, ``"timeline"``:
    frame accuracy, segmental F1 and the per-frame confusion matrix."""
    from training.labelstudio.timeline import timeline_metrics
    from training.learn.metrics import confusion_matrix

    if labels:
        keep = data.has_class
        out = classification_metrics(data.y[keep], outputs["classes"][keep], labels)
    else:
        out = {"accuracy": None, "count": 0}
    if timeline_labels:
        frame_y = data.frame_y if data.frame_y is not None else np.full(data.mask.shape, -1)
        probs = outputs["timeline"]
        timeline = timeline_metrics(frame_y, probs, timeline_labels)
        counted = frame_y >= 0
        predicted = probs.argmax(axis=-1) if len(probs) else np.zeros_like(frame_y)
        timeline["confusion_matrix"] = confusion_matrix(
            frame_y[counted], predicted[counted], len(timeline_labels) + 1
        ).tolist()
        out["timeline"] = timeline
    return out


def _software_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__}
