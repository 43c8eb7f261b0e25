"""The CNN-LSTM: a per-frame CNN that keeps spatial layout, an LSTM over time, softmax.

Design (figures from docs/design.md and ``bench/``): global average pooling after the CNN throws
away *where* things are, and with it the direction of motion (42 % on a 4-class motion set,
against 77 % for the origin's Flatten, which costs 95 M parameters). Here each frame's
features keep a coarse spatial grid instead:

* the input is the frame **and its difference from the previous frame** (6 channels), so
  motion is visible to the CNN from the first layer at no extra cost;
* a small strided conv stack brings 112x112 down to a 7x7 grid (by default depthwise-separable
  after the first conv, then a (2+1)D temporal conv over 3 frames at each grid cell, residual:
  0.16 M parameters in all, against the first default's 0.31 M, and as accurate on the
  ``motion4`` set: bench/RESULTS.md "Motion set");
* a 1x1 convolution projects that grid to a few channels, which are flattened (keeping
  position) and passed through one narrow dense layer: 7*7*8 -> 128;
* time is folded into the batch (B*T frames through the CNN once), not wrapped in
  ``TimeDistributed`` (11-85 s build/first-step cost for large CNNs measured here);
* an LSTM reads the per-frame features with a mask for padded frames (or, as the origin
  guide's extensions suggest, a bidirectional LSTM, attention pooling over the LSTM's
  outputs, or no temporal model at all: frame averaging, the baseline);
* heads: a softmax over the clip's classes (from the LSTM's last state) for <Choices>,
  and/or a per-frame softmax (from the LSTM's outputs at every frame, plus a "no label"
  class) for <TimelineLabels>.

Pixels enter as uint8 and are scaled inside the model, so preprocessing is saved with it.
"""

from __future__ import annotations

import functools

import keras
from keras import layers, ops

from training.model.config import (
    APPEARANCE_MODES,
    BACKBONES,
    FRAME_NETS,
    ModelConfig,
    check_temporal,
)
from training.video.clip import SamplingConfig


@keras.saving.register_keras_serializable(package="videoloop")
class FrameDifferences(layers.Layer):
    """Appends x[t] - x[t-1] to each frame's channels (zero for the first frame).

    With ``keep_frames=False`` only the differences are returned.
    """

    def __init__(self, keep_frames: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.keep_frames = keep_frames

    def call(self, x):
        previous = ops.concatenate([x[:, :1], x[:, :-1]], axis=1)
        if not self.keep_frames:
            return x - previous
        return ops.concatenate([x, x - previous], axis=-1)

    def get_config(self):
        return {**super().get_config(), "keep_frames": self.keep_frames}


@keras.saving.register_keras_serializable(package="videoloop")
class FoldTime(layers.Layer):
    """(B, T, ...) -> (B*T, ...): run the per-frame CNN once over all frames."""

    def call(self, x):
        return ops.reshape(x, (-1, *x.shape[2:]))


@keras.saving.register_keras_serializable(package="videoloop")
class UnfoldTime(layers.Layer):
    """(B*T, ...) -> (B, T, ...): the inverse of FoldTime for a known T."""

    def __init__(self, frames: int, **kwargs):
        super().__init__(**kwargs)
        self.frames = frames

    def call(self, x):
        return ops.reshape(x, (-1, self.frames, *x.shape[1:]))

    def get_config(self):
        return {**super().get_config(), "frames": self.frames}


@keras.saving.register_keras_serializable(package="videoloop")
class BoolMask(layers.Layer):
    """Casts the mask input (1 = real frame, 0 = padding) to bool for the LSTM."""

    def call(self, mask):
        return ops.cast(mask, "bool")


@keras.saving.register_keras_serializable(package="videoloop")
class MaskedMean(layers.Layer):
    """Mean over time of the real (unpadded) frames: (B, T, F), (B, T) -> (B, F)."""

    def call(self, x, valid):
        m = ops.expand_dims(ops.cast(valid, x.dtype), -1)
        return ops.sum(x * m, axis=1) / ops.maximum(ops.sum(m, axis=1), 1.0)


@keras.saving.register_keras_serializable(package="videoloop")
class AttentionPooling(layers.Layer):
    """Attention over time (Bahdanau-style scores, softmax over the real frames), the
    weighted sum of the sequence: (B, T, F), (B, T) -> (B, F). Lets the clip vector come from
    the frames that matter instead of only the last state."""

    def __init__(self, units: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.supports_masking = True  # the padding comes in as ``valid``; no mask goes out
        self.project = layers.Dense(units, activation="tanh", name="project")
        self.score = layers.Dense(1, use_bias=False, name="score")

    def build(self, x_shape, valid_shape=None):
        self.project.build(x_shape)
        self.score.build((*x_shape[:-1], self.units))

    def call(self, x, valid):
        logits = ops.squeeze(self.score(self.project(x)), -1)  # (B, T)
        valid = ops.cast(valid, "bool")
        logits = ops.where(valid, logits, ops.full_like(logits, -1e9))
        weights = ops.softmax(logits, axis=-1)
        return ops.sum(x * ops.expand_dims(weights, -1), axis=1)

    def compute_mask(self, x, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _small_cnn(x, filters: tuple[int, ...], prefix: str = "", separable: bool = False):
    """Strided 3x3 convs with BatchNorm and ReLU; ``separable``: depthwise-separable after
    the first (which sees few channels, so a plain conv costs little there)."""
    for i, n in enumerate(filters):
        conv = layers.SeparableConv2D if separable and i else layers.Conv2D
        x = conv(n, 3, strides=2, padding="same", use_bias=False, name=f"{prefix}conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{prefix}bn{i}")(x)
        x = layers.ReLU(name=f"{prefix}relu{i}")(x)
    return x


def _temporal_conv(x, frames: int, kernel: int):
    """(2+1)D: a convolution over ``kernel`` frames at each grid cell of (B*T, h, w, C)
    features, added to them (residual), so each cell sees motion over several frames."""
    channels = x.shape[-1]
    y = UnfoldTime(frames, name="grid_unfold_time")(x)
    y = layers.Conv3D(
        channels, (kernel, 1, 1), padding="same", use_bias=False, name="temporal_conv"
    )(y)
    y = layers.BatchNormalization(momentum=0.9, name="temporal_bn")(y)
    y = FoldTime(name="grid_fold_time")(y)
    return layers.ReLU(name="temporal_relu")(layers.Add(name="temporal_residual")([x, y]))


def _mobilenet(x, config: ModelConfig, sampling: SamplingConfig):
    weights = config.backbone_weights
    if weights and weights != "imagenet" and not str(weights).endswith(".h5"):
        raise ValueError(f"backbone_weights must be None, 'imagenet' or a .h5 file: {weights}")
    rgb = x[..., :3] * 255.0  # MobileNetV3's own preprocessing expects [0, 255]
    net = keras.applications.MobileNetV3Small(
        input_shape=(sampling.height, sampling.width, 3),
        include_top=False,
        weights=weights,
        include_preprocessing=True,
    )
    features = net(rgb)
    if config.frame_differences:
        # keep a cheap motion path beside the pretrained RGB features
        motion = _small_cnn(x[..., 3:], (8, 16, 32, 32), prefix="motion_")
        motion = layers.Resizing(features.shape[1], features.shape[2], name="motion_grid")(motion)
        features = layers.Concatenate(name="rgb_motion")([features, motion])
    return features


def build_model(
    num_classes: int,
    sampling: SamplingConfig,
    config: ModelConfig,
    timeline_labels: int = 0,
) -> keras.Model:
    """Build and compile the CNN-LSTM.

    Args:
        num_classes: size of the clip-level softmax (0: no classes head).
        sampling: frames per clip and frame size the model takes.
        config: architecture and optimiser settings.
        timeline_labels: number of frame-level labels (0: no timeline head); the timeline
            softmax has one more output, 0, for "no label".

    Returns:
        A compiled model with inputs ``frames`` (B,T,H,W,3) uint8 and ``mask`` (B,T) bool
        (1 = real frame, 0 = padding) and a dict of named outputs: ``"classes"`` (B,
        num_classes) when num_classes > 0, ``"timeline"`` (B, T, 1 + timeline_labels) when
        timeline_labels > 0.
    """
    if config.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {config.backbone!r}; choose one of {BACKBONES}")
    if config.appearance not in APPEARANCE_MODES:
        raise ValueError(f"unknown appearance {config.appearance!r}; one of {APPEARANCE_MODES}")
    if config.frame_net not in FRAME_NETS:
        raise ValueError(f"unknown frame_net {config.frame_net!r}; one of {FRAME_NETS}")
    check_temporal(config.temporal)
    if num_classes == 1 or num_classes < 0 or (num_classes == 0 and timeline_labels < 1):
        raise ValueError(
            f"need 0 or at least 2 classes and at least one head, got {num_classes} classes "
            f"and {timeline_labels} timeline labels"
        )
    t, h, w = sampling.frames, sampling.height, sampling.width
    frames = keras.Input((t, h, w, 3), dtype="uint8", name="frames")
    mask = keras.Input((t,), dtype="bool", name="mask")

    scaled = layers.Rescaling(1.0 / 255.0, name="scale")(frames)
    x = _frame_features(scaled, sampling, config)
    x = UnfoldTime(t, name="unfold_time")(x)
    sequence, clip = _temporal(x, mask, config)
    outputs = _heads(sequence, clip, num_classes, timeline_labels, config)
    model = keras.Model({"frames": frames, "mask": mask}, outputs, name="cnn_lstm")
    compile_model(model, config)
    return model


def _frame_features(scaled, sampling: SamplingConfig, config: ModelConfig):
    """Per-frame features (B*T, F) that keep a coarse spatial grid: the CNN (with frame
    differences), a 1x1 projection flattened by position, a narrow dense layer, and the
    pooled appearance stream beside it."""
    small = config.backbone == "small"
    split_streams = small and config.frame_differences and config.appearance != "full"
    x = scaled
    if config.frame_differences:
        x = FrameDifferences(keep_frames=not split_streams, name="frame_differences")(x)
    x = FoldTime(name="fold_time")(x)
    if small:
        x = _small_cnn(x, config.conv_filters, separable=config.frame_net == "separable")
        if config.temporal_kernel > 0:
            x = _temporal_conv(x, sampling.frames, config.temporal_kernel)
    else:  # frame_net and temporal_kernel are the small backbone's
        x = _mobilenet(x, config, sampling)
    # Keep the spatial grid: project channels, flatten positions, narrow dense.
    grid = layers.Conv2D(config.grid_channels, 1, activation="relu", name="grid_projection")(x)
    grid = layers.Flatten(name="grid_flatten")(grid)
    grid = layers.Dropout(config.dropout, name="frame_dropout")(grid)
    features = layers.Dense(config.frame_features, activation="relu", name="frame_features")(grid)
    parts = [features]
    if config.pooled_features:
        parts.append(layers.GlobalAveragePooling2D(name="pooled")(x))
    if split_streams and config.appearance == "pooled":
        look = FoldTime(name="fold_time_frames")(scaled)
        look = _small_cnn(look, tuple(max(8, n // 2) for n in config.conv_filters), "look_")
        look = layers.GlobalAveragePooling2D(name="look_pooled")(look)
        parts.append(layers.Dropout(config.appearance_dropout, name="look_dropout")(look))
    x = layers.Concatenate(name="frame_parts")(parts) if len(parts) > 1 else features
    return x


def _heads(sequence, clip, num_classes: int, timeline_labels: int, config: ModelConfig) -> dict:
    """The named outputs: ``"classes"`` from the clip vector, ``"timeline"`` per frame."""
    outputs = {}
    if num_classes:
        head = layers.Dropout(config.dropout, name="head_dropout")(clip)
        outputs["classes"] = layers.Dense(
            num_classes, activation="softmax", name="classes", dtype="float32"
        )(head)
    if timeline_labels:
        per_frame = layers.Dropout(config.dropout, name="timeline_dropout")(sequence)
        outputs["timeline"] = layers.Dense(
            timeline_labels + 1, activation="softmax", name="timeline", dtype="float32"
        )(per_frame)
    return outputs


def _temporal(x, mask, config: ModelConfig):
    """The temporal model over per-frame features (B, T, F): returns the per-frame sequence
    (for the timeline head) and one vector per clip (for the classes head)."""
    lstm_mask = BoolMask(name="bool_mask")(mask)
    lstm = functools.partial(
        layers.LSTM,
        config.lstm_units,
        dropout=config.dropout,
        recurrent_dropout=config.recurrent_dropout,
        return_sequences=True,
    )
    if config.temporal == "average":
        return x, MaskedMean(name="masked_mean")(x, mask)
    if config.temporal == "lstm":
        # the state after the last real frame: masked steps carry it unchanged
        sequence, last, _ = lstm(return_state=True, name="lstm")(x, mask=lstm_mask)
        return sequence, last
    if config.temporal == "bilstm":
        sequence, forward, _, backward, _ = layers.Bidirectional(
            lstm(return_state=True), name="bilstm"
        )(x, mask=lstm_mask)
        return sequence, layers.Concatenate(name="bilstm_states")([forward, backward])
    sequence = lstm(name="lstm")(x, mask=lstm_mask)
    return sequence, AttentionPooling(config.attention_units, name="attention")(sequence, mask)


def load_keras_model(path) -> keras.Model:
    """A saved model with named outputs, whatever version of videoloop saved it.

    Classifiers saved before every model had named outputs have one plain output; it is named
    ``"classes"`` here, once, so everything downstream reads a dict of outputs.
    """
    model = keras.saving.load_model(path, compile=False)
    if not isinstance(model.output, dict):
        model = keras.Model(model.input, {"classes": model.output}, name=model.name)
    return model


def compile_model(model: keras.Model, config: ModelConfig, learning_rate=None) -> None:
    """Adam with gradient clipping, label-smoothed cross-entropy, accuracy.

    A model with a timeline head gets one loss per output; their accuracies are weighted by
    the sample weights, which are 0 for padded frames and for clips an output has no label
    for (training/learn/train.py).
    """
    optimizer = keras.optimizers.Adam(
        learning_rate=learning_rate or config.learning_rate, clipnorm=config.clipnorm
    )
    heads = tuple(model.output)
    loss = {
        head: keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
        for head in heads
    }
    if heads == ("classes",):  # class weights weigh the loss; accuracy counts every clip
        model.compile(optimizer=optimizer, loss=loss, metrics={"classes": ["accuracy"]})
        return
    # Padded frames and clips without a label of a head weigh 0: accuracy must skip them.
    model.compile(
        optimizer=optimizer, loss=loss, weighted_metrics={head: ["accuracy"] for head in heads}
    )
