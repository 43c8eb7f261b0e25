"""The origin guide's extensions as bench variants of the default model (issue 17).

Why here and not in the product: an extension becomes a ModelConfig option only if a figure
justifies it (bench/RESULTS.md#extensions-issue-17). Each variant is the default
classification network (``compact``: training/model/config.py NETWORKS) with one change, built
by the product's own ``build_model`` with one of its steps swapped while
:func:`extension_built` is active, so it trains through the product's ``fit`` (pipeline,
augmentation, callbacks, BatchNorm recalibration) exactly as the default does:

* ``conv3d stem``: the motion stream's first convolution is a 3 x 3 x 3 Conv3D over the
  sequence (spatial stride 2) instead of a per-frame 3 x 3 Conv2D, and the (2+1)D temporal
  convolution is dropped: a mixed-convolution network (3D at the bottom, 2D above; Tran et
  al. 2018, "MC2"). A 3D conv at every layer costs about 5 times the default's multiply-adds
  per clip, which these 2 cores cannot train in the time the bench has.
* ``two-stream <flow>``: dense optical flow between consecutive frames (bench/optical_flow.py,
  computed inside the model from the uint8 frames, so augmentation reaches it and ms/clip
  includes it) through a small separable conv stream of its own, flattened by position and
  concatenated with the RGB features of each frame before the temporal head.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

from training.model.config import NETWORKS

FLOW_FILTERS = (16, 32, 32, 32)
"""The flow stream's convs (the flow has 2 channels and little texture: a narrow stack)."""
FLOW_FEATURES = 64
EXTENSIONS: dict[str, dict] = {
    "conv3d stem": {"fields": {**NETWORKS["compact"], "temporal_kernel": 0}, "stem3d": True},
    "two-stream dis": {"fields": NETWORKS["compact"], "flow": "dis"},
    "two-stream farneback": {"fields": NETWORKS["compact"], "flow": "farneback"},
    "two-stream normal": {"fields": NETWORKS["compact"], "flow": "normal"},
}
"""Bench rows: ModelConfig fields, and which step of the build is swapped."""


@contextmanager
def extension_built(name: str, frames: int) -> Iterator[None]:
    """While inside, ``training.model.build.build_model`` (which ``fit`` calls) builds
    extension ``name`` for clips of ``frames`` frames. A bench process trains one row."""
    from training.model import build

    spec = EXTENSIONS[name]
    saved = build._small_cnn, build._frame_features
    if spec.get("stem3d"):
        build._small_cnn = functools.partial(_stem3d_cnn, saved[0], frames)
    if spec.get("flow"):
        build._frame_features = functools.partial(
            _two_stream_features, saved[1], saved[0], spec["flow"]
        )
    try:
        yield
    finally:
        build._small_cnn, build._frame_features = saved


def _stem3d_cnn(small_cnn, frames: int, x, filters, prefix: str = "", separable: bool = False):
    """The motion stream (``prefix`` ""): a Conv3D stem over time, then the product's per-frame
    convs for the other filters; any other stream is left as it is."""
    if prefix:
        return small_cnn(x, filters, prefix, separable)
    from keras import layers

    from training.model.build import FoldTime, UnfoldTime

    y = UnfoldTime(frames, name="stem3d_unfold_time")(x)
    y = layers.Conv3D(
        filters[0], 3, strides=(1, 2, 2), padding="same", use_bias=False, name="stem3d_conv"
    )(y)
    y = layers.BatchNormalization(momentum=0.9, name="stem3d_bn")(y)
    y = layers.ReLU(name="stem3d_relu")(y)
    return small_cnn(FoldTime(name="stem3d_fold_time")(y), filters[1:], prefix, separable)


def _two_stream_features(frame_features, small_cnn, method: str, scaled, sampling, config):
    """The product's per-frame features (B*T, F) with the flow stream's beside them."""
    from keras import layers

    from training.model.build import FoldTime

    rgb = frame_features(scaled, sampling, config)
    flow = FoldTime(name="flow_fold_time")(optical_flow_layer(method, name="optical_flow")(scaled))
    flow = small_cnn(flow, FLOW_FILTERS, "flow_", separable=True)
    flow = layers.Conv2D(4, 1, activation="relu", name="flow_grid")(flow)
    flow = layers.Dropout(config.dropout, name="flow_dropout")(layers.Flatten()(flow))
    flow = layers.Dense(FLOW_FEATURES, activation="relu", name="flow_features")(flow)
    return layers.Concatenate(name="two_streams")([rgb, flow])


@functools.cache
def _flow_layer():
    """The OpticalFlow layer class (made on first use: keeps Keras out of imports)."""
    import keras
    import tensorflow as tf
    from keras import layers, ops
    from optical_flow import batch_flow

    @keras.saving.register_keras_serializable(package="bench")
    class OpticalFlow(layers.Layer):
        """(B, T, H, W, 3) frames in [0, 1] -> (B, T, H, W, 2) flow into each frame, computed
        on the CPU by bench/optical_flow.py (no gradient flows to the frames: none needed)."""

        def __init__(self, method: str, **kwargs):
            super().__init__(**kwargs)
            self.method = method
            self.supports_jit = False  # a numpy function cannot be compiled by XLA

        def call(self, x):
            luma = ops.sum(x * ops.convert_to_tensor([0.299, 0.587, 0.114], x.dtype), axis=-1)
            gray = ops.cast(ops.clip(ops.round(luma * 255.0), 0, 255), "uint8")
            flow = tf.numpy_function(
                functools.partial(batch_flow, method=self.method), [gray], tf.float32
            )
            return tf.ensure_shape(flow, (None, *x.shape[1:4], 2))

        def compute_output_shape(self, shape):
            return (*shape[:-1], 2)

        def get_config(self):
            return {**super().get_config(), "method": self.method}

    return OpticalFlow


def optical_flow_layer(method: str, **kwargs):
    """An OpticalFlow layer computing ``method``'s flow (bench/optical_flow.py METHODS)."""
    return _flow_layer()(method, **kwargs)
