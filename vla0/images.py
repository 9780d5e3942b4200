"""Camera frames -> the image(s) the VLM sees: crop (random in training, centred at
inference, as VLA-0 does), resize, colour jitter (training only), then tile cameras side by side
or keep them apart."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance


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


JITTER_KEYS = ("brightness", "contrast", "saturation", "hue")


def jitter_draw(rng: np.random.Generator, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                hue: float = 0.0) -> dict | None:
    """One random colour jitter as torchvision's ColorJitter draws it (used by VLA-0): brightness,
    contrast and saturation factors from [1 - x, 1 + x], a hue shift from [-hue, hue] of a full
    turn, and a random order of the four. None when all are 0."""
    if not (brightness or contrast or saturation or hue):
        return None
    if not 0 <= hue <= 0.5:
        raise ValueError(f"hue jitter must be in [0, 0.5], got {hue}")
    factors = [rng.uniform(max(0.0, 1 - x), 1 + x) if x else None for x in (brightness, contrast, saturation)]
    shift = rng.uniform(-hue, hue) if hue else None
    return {"factors": factors, "shift": shift, "order": rng.permutation(4).tolist()}


def apply_jitter(image: np.ndarray, draw: dict | None) -> np.ndarray:
    """Apply a jitter_draw to one image. PIL only: no torchvision."""
    if draw is None:
        return image
    img = Image.fromarray(image)
    factors, shift = draw["factors"], draw["shift"]
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    for op in draw["order"]:
        if op < 3 and factors[op] is not None:
            img = enhancers[op](img).enhance(factors[op])
        elif op == 3 and shift is not None:
            h, s, v = img.convert("HSV").split()
            h = Image.fromarray((np.asarray(h, np.int16) + int(round(shift * 255))).astype(np.uint8))  # wraps
            img = Image.merge("HSV", (h, s, v)).convert("RGB")
    return np.asarray(img)


def color_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float = 0.0, contrast: float = 0.0,
                 saturation: float = 0.0, hue: float = 0.0) -> np.ndarray:
    """One image jittered with a draw of its own."""
    return apply_jitter(image, jitter_draw(rng, brightness, contrast, saturation, hue))
