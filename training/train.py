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

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.dataset import (
    ClipArrays,
    class_weights,
    content_keys,
    decode_labelled,
    stable_split,
)
from training.metrics import classification_metrics
from training.model import ModelConfig, build_model, compile_model
from training.reports import (
    CONFUSION_MATRIX_FILE,
    LEARNING_CURVE_FILE,
    plot_confusion_matrix,
    plot_learning_curve,
)
from training.sampling import SamplingConfig
from training.store import MODEL_FILE, SPLIT_FILE, ModelStore, VersionInfo

if TYPE_CHECKING:
    from training.clipcache import ClipCache

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
):
    """A tf.data pipeline over uint8 clips: shuffle, augment, batch, prefetch."""
    import tensorflow as tf

    n, t, h, w = len(data), *data.frames.shape[1:4]
    onehot = np.eye(num_classes, dtype=np.float32)[data.y]
    sample_w = np.asarray([(weights or {}).get(int(c), 1.0) for c in data.y], np.float32)
    rng = np.random.default_rng(seed)

    def generate():
        order = rng.permutation(n) if shuffle else np.arange(n)
        for i in order:
            yield {"frames": data.frames[i], "mask": data.mask[i]}, onehot[i], sample_w[i]

    signature = (
        {
            "frames": tf.TensorSpec((t, h, w, 3), tf.uint8),
            "mask": tf.TensorSpec((t,), tf.bool),
        },
        tf.TensorSpec((num_classes,), tf.float32),
        tf.TensorSpec((), tf.float32),
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


def predict_arrays(model, data: ClipArrays, batch_size: int = 16) -> np.ndarray:
    """Probabilities for every clip, batch by batch, without model.predict's overhead."""
    out = [
        np.asarray(
            model.predict_on_batch(
                {"frames": data.frames[i : i + batch_size], "mask": data.mask[i : i + batch_size]}
            )
        )
        for i in range(0, len(data), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


WARM_START_LR_FACTOR = 0.3
"""Fine-tuning from a parent version starts at this fraction of the learning rate."""


def warm_start(model, parent: VersionInfo, labels: Sequence[str]) -> str:
    """Copy a parent version's weights into ``model``, layer by layer (by name and shape).

    Returns how the model starts: ``"parent"`` (same labels: every layer, output included),
    ``"parent-new-head"`` (labels changed: CNN and LSTM kept, a new output layer), or
    ``"scratch"`` when no layer matched.
    """
    import keras

    import training.model  # noqa: F401  (custom layers for deserialisation)

    old = keras.saving.load_model(parent.model_path, compile=False)
    same_labels = list(parent.labels) == list(labels)
    copied = 0
    for layer in model.layers:
        if not layer.weights or (layer.name == "classes" and not same_labels):
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
    return "parent" if same_labels else "parent-new-head"


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
):
    """Train a model; returns (model, history dict, init). Keeps the best-validation weights.

    With ``parent``, starts from that version's weights (see :func:`warm_start`) at a lower
    learning rate; ``init`` says which start was taken.
    """
    import keras

    keras.utils.set_random_seed(train_config.seed)
    model = build_model(len(labels), sampling, model_config)
    init = "scratch"
    if parent is not None:
        init = warm_start(model, parent, labels)
        if init != "scratch":
            compile_model(model, model_config, model_config.learning_rate * WARM_START_LR_FACTOR)
    weights = class_weights(train.y, len(labels))
    train_ds = make_dataset(
        train,
        len(labels),
        train_config.batch_size,
        shuffle=True,
        augment=train_config.augment,
        seed=train_config.seed,
        weights=weights,
    )
    has_val = val is not None and len(val) > 0
    val_ds = (
        make_dataset(
            val, len(labels), train_config.batch_size, shuffle=False, augment=False, seed=0
        )
        if has_val
        else None
    )
    epochs = train_config.epochs

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = {k: round(float(v), 4) for k, v in (logs or {}).items()}
            log.info("epoch %d/%d %s", epoch + 1, epochs, logs)
            progress({"stage": "train", "epoch": epoch + 1, "epochs": epochs, **logs})

    callbacks: list = [Report()]
    monitor = "val_loss" if has_val else "loss"
    callbacks.append(
        keras.callbacks.EarlyStopping(
            monitor=monitor, patience=train_config.patience, restore_best_weights=True
        )
    )
    callbacks.append(
        keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=0.5, patience=max(2, train_config.patience // 3), min_lr=1e-5
        )
    )
    result = model.fit(
        train_ds, validation_data=val_ds, epochs=epochs, verbose=0, callbacks=callbacks
    )
    history = {k: [float(v) for v in vs] for k, vs in result.history.items()}
    return as_float32(model, len(labels), sampling, model_config), history, init


def as_float32(model, num_classes: int, sampling: SamplingConfig, model_config: ModelConfig):
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
        clean = build_model(num_classes, sampling, model_config)
        clean.set_weights(model.get_weights())
    finally:
        keras.mixed_precision.set_global_policy(policy)
    return clean


GATE_METRIC = "accuracy"
"""What the quality gate compares: the share of held-out clips each version gets right."""
_GATE_EPSILON = 1e-9


def quality_gate(
    candidate_probs: np.ndarray,
    test: ClipArrays,
    labels: Sequence[str],
    sampling: SamplingConfig,
    current: VersionInfo | None,
    *,
    tolerance: float = 0.0,
    threads: int = 2,
    cache: ClipCache | None = None,
) -> dict:
    """Score a candidate and the current version on the same held-out clips.

    The clips are ``test`` less those the current version trained or early-stopped on (its
    ``split.json``; versions without one are assumed to have seen none of them). The current
    model predicts with its own sampling (clips are decoded again when it differs) and its own
    labels: a label it does not know counts as a miss.

    Args:
        candidate_probs: the candidate's probabilities for every clip of ``test``.
        test: this run's test clips, with their keys.
        labels: the candidate's labels (what ``test.y`` indexes).
        sampling: how ``test`` was sampled.
        current: the version to beat; None when the project has none.
        tolerance: how much lower (0-1) the candidate may score and still pass.

    Returns:
        ``{"metric", "candidate", "current", "current_version", "tolerance", "passed",
        "clips", "reason"}``; ``passed`` is True whenever there is nothing to compare with
        (no current version, no clip it has not seen, a current model that cannot be read).
    """
    overall = float(np.mean(candidate_probs.argmax(axis=1) == test.y)) if len(test) else None
    gate: dict = {
        "metric": GATE_METRIC,
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
    idx = [i for i, key in enumerate(test.keys) if key not in seen]
    gate["excluded_seen_by_current"] = len(test) - len(idx)
    if not idx:
        return {**gate, "reason": "no held-out clip that the current version has not seen"}
    try:
        current_correct = _current_correct(
            current, test.subset(idx), labels, sampling, threads, cache
        )
    except Exception as exc:  # a broken current model must not stop a new one from replacing it
        log.warning("gate: current version %s cannot be scored", current.version, exc_info=True)
        return {**gate, "reason": f"the current version cannot be scored: {exc}"}
    keep = [i for i, ok in zip(idx, current_correct, strict=True) if ok is not None]
    if not keep:
        return {**gate, "reason": "no held-out clip the current version can read"}
    candidate_ok = candidate_probs[keep].argmax(axis=1) == test.y[keep]
    candidate = float(np.mean(candidate_ok))
    current_acc = float(np.mean([ok for ok in current_correct if ok is not None]))
    passed = candidate + _GATE_EPSILON >= current_acc - tolerance
    verdict = "not worse than" if passed else "worse than"
    return {
        **gate,
        "candidate": round(candidate, 4),
        "current": round(current_acc, 4),
        "passed": bool(passed),
        "clips": len(keep),
        "reason": (
            f"{GATE_METRIC} {candidate:.3f} on {len(keep)} held-out clips is {verdict} the "
            f"current version's {current_acc:.3f} (tolerance {tolerance:g})"
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


def _current_correct(
    current: VersionInfo,
    clips: ClipArrays,
    labels: Sequence[str],
    sampling: SamplingConfig,
    threads: int,
    cache: ClipCache | None,
) -> list[bool | None]:
    """Per clip: did the current version predict its label (None: it could not read it)."""
    import keras

    import training.model  # noqa: F401  (custom layers for deserialisation)
    from training.decode import decode_many
    from training.sampling import stack_clips

    model = keras.saving.load_model(current.model_path, compile=False)
    current_sampling = SamplingConfig.from_dict(current.meta["sampling"])
    if current_sampling == sampling:
        arrays, readable = clips, list(range(len(clips)))
    else:
        decoded = decode_many(clips.sources, current_sampling, threads=threads, cache=cache)
        readable = [i for i, c in enumerate(decoded) if not isinstance(c, Exception)]
        if not readable:
            return [None] * len(clips)
        frames, mask = stack_clips([decoded[i] for i in readable])
        arrays = ClipArrays(frames, mask, clips.y[readable], [clips.sources[i] for i in readable])
    predicted = predict_arrays(model, arrays).argmax(axis=1)
    current_labels = list(current.meta["labels"])
    correct: list[bool | None] = [None] * len(clips)
    for i, p in zip(readable, predicted, strict=True):
        correct[i] = current_labels[int(p)] == labels[int(clips.y[i])]
    return correct


def train_and_publish(
    store: ModelStore,
    project: str,
    videos: Sequence[tuple[str | os.PathLike, str]],
    *,
    labels: Sequence[str] | None = None,
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

    The split is stable (:func:`training.dataset.stable_split` on ``keys``): a video keeps its
    part across runs, so the quality gate's clips are ones the current version never trained
    on. The gate's figures go into ``meta["gate"]``, the split's keys into ``split.json``.

    Args:
        store: where the version is published.
        project: Label Studio project id.
        videos: (video path, label) pairs.
        labels: the label order of the model's output; default: sorted labels of ``videos``.
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
        TrainingError: fewer than two labels, or a label without any readable video.
    """
    if parent is not None:
        sampling = sampling or SamplingConfig.from_dict(parent.meta["sampling"])
        model_config = model_config or ModelConfig.from_dict(parent.meta["model"])
    sampling = sampling or SamplingConfig()
    model_config = model_config or ModelConfig()
    train_config = train_config or TrainConfig()
    labels = list(labels) if labels is not None else sorted({label for _, label in videos})
    if len(labels) < 2:
        raise TrainingError(f"need at least two labels to train, got {labels}")
    started = time.perf_counter()

    if keys is None:
        keys = content_keys([path for path, _ in videos])
    progress({"stage": "decode", "done": 0, "total": len(videos)})
    data, skipped = decode_labelled(
        videos,
        labels,
        sampling,
        threads=threads,
        cache=cache,
        progress=lambda done, total: progress({"stage": "decode", "done": done, "total": total}),
        keys=keys,
    )
    counts = np.bincount(data.y, minlength=len(labels))
    if (counts == 0).any():
        missing = [label for label, c in zip(labels, counts, strict=True) if c == 0]
        raise TrainingError(f"no readable video for labels {missing}")

    train_idx, test_idx, val_idx = stable_split(
        data.keys, data.y, (train_config.test_fraction, train_config.val_fraction)
    )
    train, test, val = data.subset(train_idx), data.subset(test_idx), data.subset(val_idx)
    log.info(
        "project %s: %d train, %d val, %d test clips", project, len(train), len(val), len(test)
    )

    model, history, init = fit(
        train, val, labels, sampling, model_config, train_config, parent=parent, progress=progress
    )

    progress({"stage": "evaluate"})
    test_probs = predict_arrays(model, test)
    metrics = {
        "test": classification_metrics(test.y, test_probs, labels),
        "val": classification_metrics(val.y, predict_arrays(model, val), labels),
    }
    log.info("project %s: test metrics %s", project, metrics["test"])

    progress({"stage": "gate"})
    current = parent if parent is not None else store.get_current_info(project)
    gate = quality_gate(
        test_probs,
        test,
        labels,
        sampling,
        current,
        tolerance=gate_tolerance,
        threads=threads,
        cache=cache,
    )
    log.info("project %s: quality gate: %s", project, gate["reason"])
    seconds = round(time.perf_counter() - started, 1)

    progress({"stage": "publish"})

    def write(folder: Path) -> dict:
        model.save(folder / MODEL_FILE)
        plot_learning_curve(history, folder / LEARNING_CURVE_FILE)
        matrix = np.asarray(metrics["test"]["confusion_matrix"])
        plot_confusion_matrix(matrix, labels, folder / CONFUSION_MATRIX_FILE)
        split = {"train": train.keys, "val": val.keys, "test": test.keys}
        (folder / SPLIT_FILE).write_text(json.dumps(split))
        return {
            "labels": labels,
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
            "dataset": {
                "videos": len(videos),
                "train": len(train),
                "val": len(val),
                "test": len(test),
                "per_label": {label: int(c) for label, c in zip(labels, counts, strict=True)},
                "skipped": [{"video": v, "reason": r} for v, r in skipped],
                "split": "stable",
            },
            "parent": parent.version if parent is not None and init != "scratch" else None,
            "init": init,
            "previous_current": store.get_current(project),
            **(extra_meta or {}),
            "created_at": time.time(),
            "software": _software_versions(),
        }

    info = store.publish(project, write, make_current=make_current)
    progress(
        {"stage": "done", "version": info.version, "test_accuracy": metrics["test"]["accuracy"]}
    )
    return info


def _software_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__}
