"""The CNN-LSTM: a per-frame CNN that keeps spatial layout, an LSTM over time, softmax.

Design (figures from DESIGN.md and ``bench/``): global average pooling after the CNN throws
away *where* things are, and with it the direction of motion (42 % on a 4-class motion set,
against 77 % for the origin's Flatten, which costs 95 M parameters). Here each frame's
features keep a coarse spatial grid instead:

* the input is the frame **and its difference from the previous frame** (6 channels), so
  motion is visible to the CNN from the first layer at no extra cost;
* a small strided conv stack brings 112x112 down to a 7x7 grid;
* a 1x1 convolution projects that grid to a few channels, which are flattened (keeping
  position) and passed through one narrow dense layer: 7*7*8 -> 128;
* time is folded into the batch (B*T frames through the CNN once), not wrapped in
  ``TimeDistributed`` (11-85 s build/first-step cost for large CNNs measured here);
* an LSTM reads the per-frame features with a mask for padded frames.

Pixels enter as uint8 and are scaled inside the model, so preprocessing is saved with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
from keras import layers, ops

from training.sampling import SamplingConfig

BACKBONES = ("small", "mobilenet_v3_small")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and optimiser settings; stored in each version's meta.json."""

    backbone: str = "small"
    """'small' (conv stack, random init) or 'mobilenet_v3_small'."""
    backbone_weights: str | None = None
    """For mobilenet_v3_small: None (random init), 'imagenet' (downloads), or a .weights.h5 path."""
    conv_filters: tuple[int, ...] = (16, 32, 64, 64)
    grid_channels: int = 8
    """Channels of the 1x1 projection whose spatial grid is flattened (keeps position)."""
    frame_features: int = 128
    lstm_units: int = 128
    dropout: float = 0.3
    recurrent_dropout: float = 0.0
    frame_differences: bool = True
    appearance: str = "pooled"
    """How the small backbone sees the frames themselves, beside their differences:
    'pooled' (default): a second, smaller conv stream over the frames, globally pooled and
    heavily dropped out: what is in the video, not where, so it cannot memorise backgrounds
    position by position; 'full': frames and differences stacked into one stream (6
    channels); 'none': differences only (static backgrounds cancel out; static content is
    invisible)."""
    appearance_dropout: float = 0.5
    pooled_features: bool = True
    """Also feed the LSTM the grid's channel averages: position-free detectors (say, of
    local motion direction in the difference channels) that generalise from few clips."""
    learning_rate: float = 1e-3
    clipnorm: float = 1.0
    label_smoothing: float = 0.1

    def to_dict(self) -> dict:
        data = asdict(self)
        data["conv_filters"] = list(self.conv_filters)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "conv_filters" in known:
            known["conv_filters"] = tuple(known["conv_filters"])
        return cls(**known)


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


APPEARANCE_MODES = ("pooled", "full", "none")


def _small_cnn(x, filters: tuple[int, ...], prefix: str = ""):
    for i, n in enumerate(filters):
        x = layers.Conv2D(n, 3, strides=2, padding="same", use_bias=False, name=f"{prefix}conv{i}")(
            x
        )
        x = layers.BatchNormalization(momentum=0.9, name=f"{prefix}bn{i}")(x)
        x = layers.ReLU(name=f"{prefix}relu{i}")(x)
    return x


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


def build_model(num_classes: int, sampling: SamplingConfig, config: ModelConfig) -> keras.Model:
    """Build and compile the CNN-LSTM.

    Args:
        num_classes: size of the softmax.
        sampling: frames per clip and frame size the model takes.
        config: architecture and optimiser settings.

    Returns:
        A compiled model with inputs ``frames`` (B,T,H,W,3) uint8 and ``mask`` (B,T) bool
        (1 = real frame, 0 = padding) and one softmax output (B, num_classes).
    """
    if config.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {config.backbone!r}; choose one of {BACKBONES}")
    if config.appearance not in APPEARANCE_MODES:
        raise ValueError(f"unknown appearance {config.appearance!r}; one of {APPEARANCE_MODES}")
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    t, h, w = sampling.frames, sampling.height, sampling.width
    frames = keras.Input((t, h, w, 3), dtype="uint8", name="frames")
    mask = keras.Input((t,), dtype="bool", name="mask")

    scaled = layers.Rescaling(1.0 / 255.0, name="scale")(frames)
    small = config.backbone == "small"
    split_streams = small and config.frame_differences and config.appearance != "full"
    x = scaled
    if config.frame_differences:
        x = FrameDifferences(keep_frames=not split_streams, name="frame_differences")(x)
    x = FoldTime(name="fold_time")(x)
    x = _small_cnn(x, config.conv_filters) if small else _mobilenet(x, config, sampling)
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
    x = UnfoldTime(t, name="unfold_time")(x)

    lstm_mask = BoolMask(name="bool_mask")(mask)
    x = layers.LSTM(
        config.lstm_units,
        dropout=config.dropout,
        recurrent_dropout=config.recurrent_dropout,
        name="lstm",
    )(x, mask=lstm_mask)
    x = layers.Dropout(config.dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="classes", dtype="float32")(x)

    model = keras.Model({"frames": frames, "mask": mask}, outputs, name="cnn_lstm")
    compile_model(model, config)
    return model


def compile_model(model: keras.Model, config: ModelConfig, learning_rate=None) -> None:
    """Adam with gradient clipping, label-smoothed cross-entropy, accuracy."""
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate=learning_rate or config.learning_rate, clipnorm=config.clipnorm
        ),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
