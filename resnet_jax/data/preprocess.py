"""What is done to one image: decoding, the paper's training augmentations (Sec. 3.4, 4.2) and the evaluation
views (centre, 10-crop, resized scales), in TensorFlow ops for the tf.data pipelines."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from resnet_jax import storage
from resnet_jax.data.backend import decode, has_tensorflow, resize, tensorflow, to_uint8
from resnet_jax.data.errors import DataError
from resnet_jax.data.files import decode_files, eval_views, fetched
from resnet_jax.data.geometry import center_resize, ten_crop_boxes

# ImageNet statistics in [0, 255] (per channel) and the PCA of its RGB pixels (AlexNet [21], Sec. 3.4).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
TRAIN_PRESETS = ("cifar", "imagenet", "inception")
EVAL_PRESETS = ("cifar", "center", "10", "multiscale")
MULTISCALE_SIZES = (224, 256, 384, 480, 640)


def _shape(tf, data):
    shape = tf.cond(tf.io.is_jpeg(data), lambda: tf.image.extract_jpeg_shape(data),
                    lambda: tf.shape(tf.io.decode_image(data, channels=3, expand_animations=False)))
    return shape[0], shape[1]


def _uniform(tf, seed, lo, hi):
    return tf.random.stateless_uniform([], seed, lo, hi)


def _flip(tf, image, seed):
    return tf.cond(_uniform(tf, seed, 0.0, 1.0) < 0.5, lambda: tf.reverse(image, [1]), lambda: image)


def train_preprocess(data, seed, preset: str, image_size: int):
    """One training example: ``cifar`` [4.2], ``imagenet`` [3.4] or ``inception`` (modern option)."""
    tf = tensorflow()
    seeds = tf.random.experimental.stateless_split(seed, 5)
    if preset == "cifar":  # 4 zero pixels on each side, random crop, flip
        image = decode(tf, data, accurate=False)
        image = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
        image = tf.image.stateless_random_crop(image, [image_size, image_size, 3], seeds[0])
        return _flip(tf, image, seeds[1])
    h, w = _shape(tf, data)
    if preset == "imagenet":
        # Shorter side resized to s ~ U[256, 480], then a random 224 crop: equivalently, crop a window of
        # 224 / scale pixels of the original and resize only that (decoded fused for JPEGs). Other image sizes
        # scale the range with the crop (64: s ~ U[73, 137]).
        shorter = tf.cast(tf.minimum(h, w), tf.float32)
        scale = _uniform(tf, seeds[0], 256.0 * image_size / 224, 481.0 * image_size / 224) / shorter
        side = tf.minimum(tf.cast(tf.round(image_size / scale), tf.int32), tf.minimum(h, w))
        y = tf.random.stateless_uniform([], seeds[1], 0, h - side + 1, dtype=tf.int32)
        x = tf.random.stateless_uniform([], seeds[2], 0, w - side + 1, dtype=tf.int32)
        crop = tf.stack([y, x, side, side])
    elif preset == "inception":  # random-resized crop: 8-100 % of the area, aspect 3/4-4/3
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.stack([h, w, 3]), tf.zeros([1, 0, 4]), seeds[0], min_object_covered=0.1,
            aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
            use_image_if_no_bounding_boxes=True)
        crop = tf.stack([begin[0], begin[1], size[0], size[1]])
    else:
        raise ValueError(f"unknown train preset {preset!r}; valid: {TRAIN_PRESETS}")
    image = tf.image.resize(decode(tf, data, accurate=False, crop=crop), [image_size, image_size])
    if preset == "imagenet":  # AlexNet PCA colour augmentation, alpha ~ N(0, 0.1)
        alpha = tf.random.stateless_normal([3], seeds[3], stddev=0.1)
        offset = tf.linalg.matvec(tf.constant(PCA_EIGVEC), alpha * tf.constant(PCA_EIGVAL)) * 255.0
        image = image + offset
    return _flip(tf, to_uint8(tf, image), seeds[4])


def eval_preprocess(data, preset: str, image_size: int, resize_size: int | None = None):
    """Deterministic evaluation views, decoded once with the accurate IDCT (bit-identical to PIL).

    ``cifar``: the image itself (centrally cropped or zero-padded if it is not ``image_size`` square).
    ``center``: shorter side ``resize_size`` (256), central ``image_size`` (224).
    ``10``: four corners and centre of the resized image, and their horizontal flips -> (10, S, S, 3).
    """
    tf = tensorflow()
    if preset == "cifar":
        return tf.image.resize_with_crop_or_pad(decode(tf, data, accurate=True), image_size, image_size)
    resize_size = center_resize(image_size, resize_size)
    if preset == "center":  # crop first, resize the window: the same pixels as resize-then-crop, faster
        h, w = _shape(tf, data)
        side = tf.cast(tf.round(tf.cast(tf.minimum(h, w), tf.float32) * image_size / resize_size), tf.int32)
        crop = tf.stack([(h - side) // 2, (w - side) // 2, side, side])
        return resize(tf, decode(tf, data, accurate=True, crop=crop), [image_size, image_size])
    if preset == "10":
        image = resize_shorter(tf, decode(tf, data, accurate=True), resize_size)
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        crops = [image[y:y + image_size, x:x + image_size] for y, x in ten_crop_boxes(h, w, image_size)]
        crops = tf.stack(crops)
        return tf.concat([crops, tf.reverse(crops, [2])], axis=0)
    raise ValueError(f"unknown eval preset {preset!r}; valid: {EVAL_PRESETS[:3]}")


def resize_shorter(tf, image, size: int):
    """Resize so that the shorter side is ``size``, keeping the aspect ratio."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    scale = size / tf.cast(tf.minimum(h, w), tf.float32)
    new = [tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32),
           tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32)]
    return resize(tf, image, tf.maximum(new, size))


def decode_images(files: Sequence[str], preset: str, image_size: int, resize_size: int | None = None) -> np.ndarray:
    """Evaluation views of image files (for inference); an unreadable file raises naming it. The ``cifar`` view
    needs no TensorFlow, nor do the others where it is not installed (PIL and numpy, within one level)."""
    if preset == "cifar":
        return decode_files(files, image_size)
    if not has_tensorflow():
        return eval_views(files, preset, image_size, resize_size)
    tf = tensorflow()
    out = []
    for path, content in zip(files, fetched(files)):
        try:
            if isinstance(content, Exception):
                raise content
            encoded = tf.io.read_file(path) if content is None else tf.constant(content)
            out.append(eval_preprocess(encoded, preset, image_size, resize_size).numpy())
        except Exception as e:
            raise DataError(f"cannot read image {path}: {storage.one_line(e)}") from e
    return np.stack(out)
