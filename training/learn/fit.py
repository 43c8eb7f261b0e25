"""Fitting a model to labelled clips: warm starts from a parent version, the callbacks,
BatchNorm recalibration, and the float32 copy that is published.

Progress goes through a callback as ``{"stage": "train", "epoch", "epochs", ...metrics}``
(``"pretrain"`` and ``"pseudo"`` for a first model's pre-training and pseudo-label rounds).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from training.learn.config import Progress, TrainConfig, no_progress
from training.learn.dataset import ClipArrays, class_weights
from training.learn.pipeline import make_dataset
from training.learn.warm_model import WARM_MODEL, ModelShape, set_learning_rate
from training.model.build import build_model
from training.model.config import ModelConfig
from training.model.kept_versions import KEPT_VERSIONS
from training.versions.store import VersionInfo
from training.video.clip import SamplingConfig

log = logging.getLogger(__name__)

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
    old = KEPT_VERSIONS.load(parent.model_path)
    same = {
        "classes": list(parent.labels) == list(labels),
        "timeline": list(parent.meta.get("timeline_labels") or []) == list(timeline_labels),
    }
    copied = copy_layers(model, old, skip=[name for name, kept in same.items() if not kept])
    if not copied:
        return "scratch"
    return "parent" if all(same.values()) else "parent-new-head"


def copy_layers(model, source, skip: Sequence[str] = ()) -> int:
    """Copy ``source``'s weights into ``model``'s layers of the same name and weight shapes,
    but those named in ``skip``; returns how many layers were copied."""
    copied = 0
    for layer in model.layers:
        if not layer.weights or layer.name in skip:
            continue
        try:
            weights = source.get_layer(layer.name).get_weights()
        except ValueError:
            continue
        if [w.shape for w in weights] == [w.shape for w in layer.get_weights()]:
            layer.set_weights(weights)
            copied += 1
    return copied


def fit(
    train: ClipArrays,
    val: ClipArrays | None,
    labels: Sequence[str],
    sampling: SamplingConfig,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    parent: VersionInfo | None = None,
    progress: Progress = no_progress,
    timeline_labels: Sequence[str] = (),
    unlabelled: ClipArrays | None = None,
):
    """Train a model; returns (model, history dict, init). Keeps the best-validation weights.

    With ``parent``, starts from that version's weights (see :func:`warm_start`) at a lower
    learning rate; ``init`` says which start was taken. Without one, and with
    ``train_config.pretrain``, starts from a pretext model trained on ``unlabelled`` and the
    training clips (training/learn/pretext.py; ``init`` ``"pretext:<task>"``); and with
    ``train_config.pseudo_rounds``, is fine-tuned on its confident predictions of
    ``unlabelled`` (training/learn/pseudo_labels.py; ``history["pseudo_labels"]``: clips
    taken per round). ``labels`` may be empty when ``timeline_labels`` is not (a
    timeline-only model); then ``train.frame_y`` is required.
    """
    import keras

    keras.utils.set_random_seed(train_config.seed)
    n_timeline = len(timeline_labels)
    shape = ModelShape(len(labels), n_timeline, sampling, model_config, train_config.seed)
    model = WARM_MODEL.model_for(
        shape, lambda: build_model(len(labels), sampling, model_config, timeline_labels=n_timeline)
    )
    init = "scratch"
    if parent is not None:
        init = warm_start(model, parent, labels, timeline_labels)
    factor = WARM_START_LR_FACTOR if init != "scratch" else 1.0
    set_learning_rate(model, model_config.learning_rate * factor)
    if init == "scratch" and train_config.pretrain != "none" and unlabelled is not None:
        init = _pretrained_start(
            model, unlabelled, train, sampling, model_config, train_config, progress
        )
    train_ds, val_ds = training_datasets(train, val, len(labels), n_timeline, train_config)
    callbacks: list = [
        report_epochs(train_config.epochs, progress),
        *training_callbacks(train_config, has_val=val_ds is not None),
    ]
    result = model.fit(
        train_ds, validation_data=val_ds, epochs=train_config.epochs, verbose=0, callbacks=callbacks
    )
    history = {k: [float(v) for v in vs] for k, vs in result.history.items()}
    if parent is None:  # a first model only (later runs fine-tune it)
        _pseudo_labelled(
            model, train, val, unlabelled, labels, n_timeline, train_config, history, progress
        )
    recalibrate_batchnorm(model, train, train_config.batch_size)
    clean = as_float32(model, len(labels), sampling, model_config, n_timeline)
    return clean, history, init


def _pretrained_start(
    model,
    unlabelled: ClipArrays,
    train: ClipArrays,
    sampling: SamplingConfig,
    model_config: ModelConfig,
    train_config: TrainConfig,
    progress: Progress,
) -> str:
    """Pre-train on the pretext task and copy every layer but the heads into ``model``;
    returns the init (``"pretext:<task>"``, or ``"scratch"`` when nothing was copied)."""
    from training.learn.pretext import pretrain

    pretext, _ = pretrain(unlabelled, train, sampling, model_config, train_config, progress)
    copied = copy_layers(model, pretext, skip=("classes", "timeline"))
    return f"pretext:{train_config.pretrain}" if copied else "scratch"


def _pseudo_labelled(
    model,
    train: ClipArrays,
    val: ClipArrays | None,
    unlabelled: ClipArrays | None,
    labels: Sequence[str],
    timeline_labels: int,
    train_config: TrainConfig,
    history: dict,
    progress: Progress,
) -> None:
    """A first model's pseudo-label rounds (training/learn/pseudo_labels.py), when asked for
    and possible: unlabelled clips given, class labels, no timeline head (a pseudo-labelled
    clip has no frame targets). Their epochs extend ``history``; ``history["pseudo_labels"]``
    counts the clips each round took."""
    if not train_config.pseudo_rounds or unlabelled is None or not len(unlabelled):
        return
    if not train_config.pseudo_labels_apply(bool(labels), bool(timeline_labels)):
        log.info("pseudo-labels skipped: only for a class head without a timeline head")
        return
    from training.learn.pseudo_labels import fine_tune_on_pseudo_labels

    more, taken = fine_tune_on_pseudo_labels(
        model, train, val, unlabelled, len(labels), train_config, progress
    )
    for key, values in more.items():
        history.setdefault(key, []).extend(values)
    history["pseudo_labels"] = [float(sum(counts)) for counts in taken]


def training_datasets(
    train: ClipArrays,
    val: ClipArrays | None,
    num_classes: int,
    timeline_labels: int,
    train_config: TrainConfig,
):
    """The training pipeline (shuffled, augmented, class-weighted, frame-weighted) and the
    validation one (None without validation clips)."""
    frame_weights = (
        class_weights(train.frame_y.ravel(), timeline_labels + 1)
        if timeline_labels and train.frame_y is not None
        else None
    )
    datasets = functools.partial(
        make_dataset,
        num_classes=num_classes,
        batch_size=train_config.batch_size,
        timeline_labels=timeline_labels,
        frame_weights=frame_weights,
    )
    train_ds = datasets(
        train,
        shuffle=True,
        augment=train_config.augment,
        temporal=train_config.augment_temporal,
        min_batches=train_config.min_batches,
        seed=train_config.seed,
        weights=class_weights(train.y, num_classes),
    )
    has_val = val is not None and len(val) > 0
    val_ds = datasets(val, shuffle=False, augment=False, seed=0) if has_val else None
    return train_ds, val_ds


def report_epochs(epochs: int, progress: Progress, stage: str = "train"):
    """A callback that logs each epoch's metrics and passes them to ``progress`` as
    ``{"stage": stage, "epoch", "epochs", ...metrics}``."""
    import keras

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = {k: round(float(v), 4) for k, v in (logs or {}).items()}
            log.info("%s epoch %d/%d %s", stage, epoch + 1, epochs, logs)
            progress({"stage": stage, "epoch": epoch + 1, "epochs": epochs, **logs})

    return Report()


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
