"""TensorFlow, imported lazily (only the tf.data pipelines need it; the GPU machines may not have it), and the
two TensorFlow image ops that the pipelines and multi-scale evaluation share."""

from __future__ import annotations

import importlib.util
from typing import Any


def has_tensorflow() -> bool:
    """Whether TensorFlow can be imported (without importing it)."""
    return importlib.util.find_spec("tensorflow") is not None


def tensorflow() -> Any:
    """The ``tensorflow`` module, kept off the accelerator that JAX uses."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    return tf


def decode(tf: Any, data: Any, accurate: bool, crop: Any = None) -> Any:
    """Decode to uint8 RGB (grayscale, CMYK, palette images included), optionally only a crop window
    [y, x, h, w]; JPEG crops decode fused. ``accurate``: libjpeg's accurate integer IDCT, bit-identical to PIL."""
    dct = "INTEGER_ACCURATE" if accurate else "INTEGER_FAST"

    def jpeg():
        if crop is None:
            return tf.io.decode_jpeg(data, channels=3, dct_method=dct)
        return tf.image.decode_and_crop_jpeg(data, crop, channels=3, dct_method=dct)

    def other():
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return image if crop is None else image[crop[0]:crop[0] + crop[2], crop[1]:crop[1] + crop[3]]

    image = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    image.set_shape([None, None, 3])
    return image


def to_uint8(tf: Any, image: Any) -> Any:
    """Round and clip a float image to uint8."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def resize(tf: Any, image: Any, size: Any) -> Any:
    """Bilinear resize without antialiasing, back to uint8."""
    return to_uint8(tf, tf.image.resize(image, size, method="bilinear", antialias=False))
