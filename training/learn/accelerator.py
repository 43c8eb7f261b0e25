"""GPU set-up for training: memory growth and mixed precision when a GPU is present.

On CPU-only machines this does nothing. Called once per training process before building
a model (policies are global to Keras).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def configure_accelerator(mixed_precision: bool = True) -> list[str]:
    """Enable memory growth on every GPU and, if any, the mixed_float16 policy.

    Returns the GPU device names found (empty on CPU).
    """
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised: growth can only be set before first use
            log.debug("memory growth not set on %s (GPU already initialised)", gpu.name)
    if gpus and mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    log.info("training on %s", ", ".join(g.name for g in gpus) or "CPU")
    return [g.name for g in gpus]
