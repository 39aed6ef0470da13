"""Image files: decoding with PIL (the accurate IDCT, in threads) and checking that a file is a readable image.

No TensorFlow: training and evaluation on CIFAR-style image folders need only these."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from resnet_jax.data.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def image_problem(path: str, decode: bool = False) -> str | None:
    """What is wrong with an image file (None: nothing found): by its leading bytes, or (``decode``) by decoding
    it fully with PIL, which also finds truncated and corrupt files."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")):
        return "not an image file"
    if decode:
        try:
            _read_rgb(path)
        except DataError as e:
            return "truncated" if "truncated" in str(e).lower() else f"corrupt ({str(e).split(': ', 1)[-1]})"
    return None


def unreadable_files(paths: Sequence[str]) -> list[tuple[str, str]]:
    """(path, problem) of the files among ``paths`` that do not decode (each decoded fully, in threads)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        problems = list(pool.map(lambda p: image_problem(p, decode=True), paths))
    return [(p, problem) for p, problem in zip(paths, problems) if problem]


def _read_rgb(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
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


def decode_files(paths: Sequence[str], image_size: int | None = None) -> np.ndarray:
    """Image files decoded with PIL in threads into uint8 (N, H, W, 3) RGB; JPEGs with the accurate IDCT, the
    same pixels as the TensorFlow evaluation path (tested). With ``image_size`` each image is centrally cropped
    or zero-padded to it (the ``cifar`` view); without, all must have one size. Errors name the file."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        images = list(pool.map(_read_rgb, paths))
    if image_size is not None:
        images = [im if im.shape[:2] == (image_size, image_size) else _crop_or_pad(im, image_size) for im in images]
    for path, image in zip(paths, images):
        if image.shape != images[0].shape:
            raise DataError(f"{path} is {image.shape[1]}x{image.shape[0]} but {paths[0]} is "
                            f"{images[0].shape[1]}x{images[0].shape[0]}; images loaded into memory must share one "
                            f"size")
    return np.stack(images) if images else np.zeros((0, image_size or 0, image_size or 0, 3), np.uint8)
