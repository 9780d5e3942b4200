"""Camera frames -> the image(s) the VLM sees: crop (random in training, centred at
inference, as VLA-0 does), resize, then tile cameras side by side or keep them apart."""

from __future__ import annotations

import numpy as np
from PIL import Image


def crop_resize(image: np.ndarray, size: tuple[int, int] | None, crop_fraction: float,
                rng: np.random.Generator | None) -> np.ndarray:
    """Crop a crop_fraction-sized window (random if rng is given, else centred) and resize
    it to size (h, w), or back to the input size when size is None."""
    h, w = image.shape[:2]
    out_h, out_w = size if size else (h, w)
    ch, cw = max(1, round(h * crop_fraction)), max(1, round(w * crop_fraction))
    if rng is None:
        top, left = (h - ch) // 2, (w - cw) // 2
    else:
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    window = image[top:top + ch, left:left + cw]
    if window.shape[:2] == (out_h, out_w):
        return np.ascontiguousarray(window)
    return np.asarray(Image.fromarray(window).resize((out_w, out_h), Image.BILINEAR))


def arrange(images: list[np.ndarray], layout: str) -> list[np.ndarray]:
    if layout == "separate" or len(images) == 1:
        return images
    heights = {im.shape[0] for im in images}
    if len(heights) != 1:
        raise ValueError(f"cannot tile cameras of different heights {sorted(heights)}: set image_size")
    return [np.concatenate(images, axis=1)]


def check_image(key: str, image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{key}: expected a uint8 image of shape (height, width, 3), got {desc}")
