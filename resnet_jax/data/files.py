"""Image files: decoding with PIL (the accurate IDCT, in threads), the evaluation views and the CIFAR training
augmentation computed in numpy, and checking that a file is a readable image.

No TensorFlow: training and evaluation on CIFAR-style image folders need only these, and so does evaluating
ImageNet-style folders (center and 10-crop views) where TensorFlow is not installed."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np

from resnet_jax import storage
from resnet_jax.data.errors import DataError
from resnet_jax.data.geometry import center_resize, ten_crop_boxes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def image_problem(path: str, decode: bool = False, content: bytes | Exception | None = None) -> str | None:
    """What is wrong with an image file (None: nothing found): by its leading bytes, or (``decode``) by decoding
    it fully with PIL, which also finds truncated and corrupt files. ``content``: its bytes, already fetched
    (the whole file with ``decode``, else at least its first 8)."""
    if isinstance(content, Exception):
        return f"unreadable ({storage.one_line(content, 200)})"
    if content is None:
        with open(path, "rb") as f:
            head = f.read(8)
    else:
        head = content[:8]
    if not head.startswith(IMAGE_MAGIC):
        return "not an image file"
    if decode:
        try:
            _read_rgb(path, content)
        except DataError as e:
            return "truncated" if "truncated" in str(e).lower() else f"corrupt ({str(e).split(': ', 1)[-1]})"
    return None


def image_problems(paths: Sequence[str], decode: bool = False) -> list[str | None]:
    """``image_problem`` of many files (in a bucket, their bytes fetched together; decoding in threads)."""
    contents = fetched(paths, None if decode else 8)
    if not decode:  # the leading bytes only: nothing to decode in threads
        return [image_problem(p, False, c) for p, c in zip(paths, contents)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda i: image_problem(paths[i], True, contents[i]), range(len(paths))))


def fetched(paths: Sequence[str], end: int | None = None) -> list[bytes | Exception | None]:
    """The files' bytes where they are in a bucket (fetched together), else None for each (read where decoded)."""
    if not any(storage.is_remote(p) for p in paths):
        return [None] * len(paths)
    return storage.read_many(list(paths), end)


def unreadable_files(paths: Sequence[str]) -> list[tuple[str, str]]:
    """(path, problem) of the files among ``paths`` that do not decode (each decoded fully, in threads)."""
    return [(p, problem) for p, problem in zip(paths, image_problems(paths, decode=True)) if problem]


def _read_rgb(path: str, content: bytes | Exception | None = None) -> np.ndarray:
    """An image file (or its bytes, ``content``, already fetched) decoded to uint8 RGB; DataError naming it."""
    from PIL import Image

    if isinstance(content, Exception):
        raise DataError(f"cannot read image {path}: {storage.one_line(content)}")
    try:
        with Image.open(io.BytesIO(content) if content is not None else path) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def _crop_or_pad(image: np.ndarray, size: int) -> np.ndarray:
    """Central crop or zero padding to ``size`` x ``size`` (as ``tf.image.resize_with_crop_or_pad``)."""
    out = np.zeros((size, size, 3), np.uint8)
    h, w = min(image.shape[0], size), min(image.shape[1], size)
    y, x = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    oy, ox = (size - h) // 2, (size - w) // 2
    out[oy:oy + h, ox:ox + w] = image[y:y + h, x:x + w]
    return out


def decode_files(paths: Sequence[str], image_size: int | None = None, threads: int | None = None) -> np.ndarray:
    """Image files decoded with PIL in ``threads`` threads (default: one per CPU, at most 16) into uint8
    (N, H, W, 3) RGB; JPEGs with the accurate IDCT, the same pixels as the TensorFlow evaluation path (tested).
    With ``image_size`` each image is centrally cropped or zero-padded to it (the ``cifar`` view); without, all
    must have one size. Errors name the file."""
    from concurrent.futures import ThreadPoolExecutor

    contents = fetched(paths)
    threads = threads or min(16, os.cpu_count() or 1)
    if threads == 1:
        images = [_read_rgb(path, content) for path, content in zip(paths, contents)]
    else:
        with ThreadPoolExecutor(threads) as pool:
            images = list(pool.map(lambda i: _read_rgb(paths[i], contents[i]), range(len(paths))))
    if image_size is not None:
        images = [im if im.shape[:2] == (image_size, image_size) else _crop_or_pad(im, image_size) for im in images]
    for path, image in zip(paths, images):
        if image.shape != images[0].shape:
            raise DataError(f"{path} is {image.shape[1]}x{image.shape[0]} but {paths[0]} is "
                            f"{images[0].shape[1]}x{images[0].shape[0]}; images loaded into memory must share one "
                            f"size")
    return np.stack(images) if images else np.zeros((0, image_size or 0, image_size or 0, 3), np.uint8)


def _bilinear_axis(image: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Resize one axis to ``size`` by bilinear interpolation with half-pixel centres and no antialiasing
    (``tf.image.resize(..., "bilinear", antialias=False)``), in float32."""
    n = image.shape[axis]
    src = np.clip((np.arange(size, dtype=np.float32) + 0.5) * np.float32(n / size) - 0.5, 0, None)
    lo = np.minimum(np.floor(src).astype(np.int64), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    frac = (src - lo).astype(np.float32)
    shape = [1] * image.ndim
    shape[axis] = size
    a, b = np.take(image, lo, axis=axis), np.take(image, hi, axis=axis)
    return a + (b - a) * frac.reshape(shape)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (height, width, 3), as the TensorFlow evaluation path resizes (to within one level
    where float rounding lands differently)."""
    out = _bilinear_axis(_bilinear_axis(image.astype(np.float32), width, 1), height, 0)  # TF's order: x, then y
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def eval_view(path: str, preset: str, image_size: int, resize_size: int | None = None,
              content: bytes | Exception | None = None) -> np.ndarray:
    """The ``center`` (S, S, 3) or ``10`` (10, S, S, 3) evaluation view of an image file (or of its bytes,
    ``content``), with PIL and numpy: the same geometry as ``preprocess.eval_preprocess``."""
    image = _read_rgb(path, content)
    h, w = image.shape[:2]
    resize_size = center_resize(image_size, resize_size)
    if preset == "center":  # the central window that becomes the crop, resized
        side = int(np.round(np.float32(min(h, w)) * np.float32(image_size) / np.float32(resize_size)))
        y, x = (h - side) // 2, (w - side) // 2
        return resize_bilinear(image[y:y + side, x:x + side], image_size, image_size)
    if preset == "10":
        scale = np.float32(resize_size) / np.float32(min(h, w))
        new_h = max(int(np.round(np.float32(h) * scale)), resize_size)
        new_w = max(int(np.round(np.float32(w) * scale)), resize_size)
        resized = resize_bilinear(image, new_h, new_w)
        crops = np.stack([resized[y:y + image_size, x:x + image_size]
                          for y, x in ten_crop_boxes(new_h, new_w, image_size)])
        return np.concatenate([crops, crops[:, :, ::-1]])
    raise ValueError(f"eval_view: preset must be 'center' or '10', got {preset!r}")


def eval_views(paths: Sequence[str], preset: str, image_size: int, resize_size: int | None = None) -> np.ndarray:
    """``eval_view`` of many files, in threads."""
    from concurrent.futures import ThreadPoolExecutor

    contents = fetched(paths)
    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        return np.stack(list(pool.map(lambda i: eval_view(paths[i], preset, image_size, resize_size, contents[i]),
                                      range(len(paths)))))


def cifar_augment(images: np.ndarray, draws: np.ndarray, size: int) -> np.ndarray:
    """Sec. 4.2's augmentation of uint8 (N, H, W, 3) images: 4 zero pixels on each side, a random ``size`` crop
    and a horizontal flip with probability 1/2. ``draws``: (N, 3) numbers in [0, 1) per image, for the crop's
    row, its column and the flip."""
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    ys = (draws[:, 0] * (padded.shape[1] - size + 1)).astype(np.int64)
    xs = (draws[:, 1] * (padded.shape[2] - size + 1)).astype(np.int64)
    out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
    for k, (y, x, flip) in enumerate(zip(ys, xs, draws[:, 2] < 0.5)):
        crop = padded[k, y:y + size, x:x + size]
        out[k] = crop[:, ::-1] if flip else crop
    return out
