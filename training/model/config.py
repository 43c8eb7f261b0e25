"""The model's architecture and optimiser settings, as data: no Keras here.

Stored in each version's meta.json and read by code that must not import TensorFlow (the
settings, the command line's argument checks); training/model/build.py builds the graph from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

BACKBONES = ("small", "mobilenet_v3_small")


APPEARANCE_MODES = ("pooled", "full", "none")
"""How the small backbone sees the frames themselves (ModelConfig.appearance)."""

FRAME_NETS = ("grid", "separable")
"""The small backbone's per-frame network (ModelConfig.frame_net)."""

LEGACY_FIELDS = {"frame_net": "grid", "temporal_kernel": 0}
"""What a version saved before these fields existed was built with: ModelConfig.from_dict
fills them in when a stored config lacks them, so a fine-tune of an old version rebuilds the
old architecture (its meta.json names every other field)."""

TEMPORAL_HEADS = ("lstm", "bilstm", "attention", "average")
"""What reads the per-frame features over time (ModelConfig.temporal)."""


AUTO_TEMPORAL = "auto"
"""TRAIN_TEMPORAL's default: :func:`default_temporal` picks the head from the project."""


def default_temporal(timeline: bool) -> str:
    """The temporal head for a project's first model: ``bilstm`` when it labels frames
    (a frame's label depends on what follows it too: bench/quality.py measures the heads on
    a set whose label changes inside the clip), else the origin's ``lstm``."""
    return "bilstm" if timeline else "lstm"


NETWORKS: dict[str, dict] = {
    "grid": {"frame_net": "grid", "temporal_kernel": 0, "lstm_units": 128},
    "compact": {"frame_net": "separable", "temporal_kernel": 3, "lstm_units": 64},
}
"""The per-frame networks of a project's first model (TRAIN_NETWORK), as ModelConfig fields:
``grid``, plain convolutions and LSTM(128), 0.31 M parameters at 16 x 112 x 112; ``compact``,
depthwise-separable convolutions, a temporal convolution over 3 frames and LSTM(64), 0.16 M
(under 1 % of the origin guide's 22.2 M). Both classify motion4's test clips all right; the
compact one labels timeline frames 4 points worse (bench/RESULTS.md#motion-set)."""


def default_network(timeline: bool) -> str:
    """The per-frame network of a project's first model: ``compact`` for a classification
    project (half the parameters, as accurate on motion4), ``grid`` where frames are labelled
    (its wider LSTM labels them better: 0.906 of the frames against 0.866)."""
    return "grid" if timeline else "compact"


def _one_of(name: str, choices, what: str) -> str:
    """``name`` if it is one of ``choices``; else ValueError naming them."""
    if name not in choices:
        raise ValueError(f"unknown {what} {name!r}; one of {', '.join(choices)}")
    return name


def check_network(name: str) -> str:
    """``name`` if it is one of NETWORKS (ValueError naming them otherwise)."""
    return _one_of(name, NETWORKS, "network")


def check_temporal(name: str) -> str:
    """``name`` if it is one of TEMPORAL_HEADS (ValueError naming them otherwise)."""
    return _one_of(name, TEMPORAL_HEADS, "temporal head")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and optimiser settings; stored in each version's meta.json."""

    backbone: str = "small"
    """'small' (conv stack, random init) or 'mobilenet_v3_small'."""
    backbone_weights: str | None = None
    """For mobilenet_v3_small: None (random init), 'imagenet' (downloads), or a .weights.h5 path."""
    conv_filters: tuple[int, ...] = (16, 32, 64, 64)
    frame_net: str = "grid"
    """The small backbone's motion stream (mobilenet_v3_small ignores it): 'grid' (plain 3x3
    convs, the default) or 'separable' (a plain first conv, then depthwise-separable ones,
    about a tenth of the weights; not the default yet: it labels timeline frames worse,
    bench/RESULTS.md#motion-set)."""
    temporal_kernel: int = 0
    """> 0: a (2+1)D-style temporal convolution of this many frames over each grid cell of
    the motion stream, after the spatial convs and before the grid is flattened, so motion
    over several frames (a speed, a growth) is seen at each position; 0: none (as versions
    saved before this field existed were built). The small backbone only."""
    grid_channels: int = 8
    """Channels of the 1x1 projection whose spatial grid is flattened (keeps position)."""
    frame_features: int = 128
    lstm_units: int = 128
    """128 (0.31 M parameters in all); NETWORKS["compact"] (the first model of a
    classification project) has 64 (0.16 M)."""
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
    temporal: str = "lstm"
    """The temporal model (the origin guide's options): 'lstm' (default; its last state
    classifies the clip), 'bilstm' (both directions; the two last states), 'attention' (an
    LSTM whose outputs are pooled by attention), or 'average' (no temporal model: the mean of
    the per-frame features, the baseline that cannot tell temporal order)."""
    attention_units: int = 64
    learning_rate: float = 1e-3
    clipnorm: float = 1.0
    label_smoothing: float = 0.1

    def to_dict(self) -> dict:
        data = asdict(self)
        data["conv_filters"] = list(self.conv_filters)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """A stored config (meta.json's ``model``); unknown keys are ignored, and the fields
        of LEGACY_FIELDS that it lacks take their legacy values, not today's defaults."""
        known = {
            **LEGACY_FIELDS,
            **{k: v for k, v in data.items() if k in cls.__dataclass_fields__},
        }
        if "conv_filters" in known:
            known["conv_filters"] = tuple(known["conv_filters"])
        return cls(**known)


def first_model_config(timeline: bool, temporal: str, network: str) -> ModelConfig:
    """A project's first model: TRAIN_TEMPORAL's head and TRAIN_NETWORK's network, each
    ``auto`` resolved by whether the project labels frames (``timeline``)."""
    if temporal == AUTO_TEMPORAL:
        temporal = default_temporal(timeline)
    if network == AUTO_TEMPORAL:
        network = default_network(timeline)
    return ModelConfig(temporal=temporal, **NETWORKS[network])
