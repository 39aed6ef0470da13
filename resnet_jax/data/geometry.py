"""Where the evaluation views lie in an image (Sec. 3.4): the shorter side before the central crop, and the
10-crop windows. Shared by the TensorFlow views (``preprocess``) and the PIL ones (``files``)."""

from __future__ import annotations


def center_resize(image_size: int, resize_size: int | None = None) -> int:
    """The shorter side an image is resized to before its central ``image_size`` crop: ``resize_size`` where the
    checkpoint states one, else 256/224 of the crop (Sec. 3.4: 256, then the central 224)."""
    return resize_size or round(image_size * 256 / 224)


def ten_crop_boxes(height: int, width: int, crop: int) -> list[tuple[int, int]]:
    """Top-left corners of the standard 10-crop views' five crops: four corners, then the centre."""
    return [(0, 0), (0, width - crop), (height - crop, 0), (height - crop, width - crop),
            ((height - crop) // 2, (width - crop) // 2)]
