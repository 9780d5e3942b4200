"""Wire formats: msgpack with numpy arrays (WebSocket) and JSON (POST /act). Never pickle.

The msgpack format lives in the light client package (vla0_client.protocol, which a robot
computer installs without torch); the server re-exports it from here, and adds JSON images.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from vla0_client.protocol import ProtocolError, error_frame, packb, parse_error_frame, unpackb

__all__ = ["ProtocolError", "decode_json_image", "error_frame", "packb", "parse_error_frame", "to_jsonable",
           "unpackb"]


# -- JSON (POST /act) ----------------------------------------------------------------------------

def decode_json_image(value, key: str, max_pixels: int) -> np.ndarray:
    """An image in JSON: a base64 PNG/JPEG string (optionally a data: URL) or nested lists of 0..255."""
    if isinstance(value, str):
        from PIL import Image
        if value.startswith("data:"):
            value = value.partition(",")[2]
        try:
            raw = base64.b64decode(value, validate=True)
            with Image.open(io.BytesIO(raw)) as im:
                if im.format not in ("PNG", "JPEG"):
                    raise ProtocolError(f"{key}: images must be PNG or JPEG, got {im.format}")
                if im.width * im.height > max_pixels:  # checked before decoding pixels: no decompression bombs
                    raise ProtocolError(f"{key}: image of {im.width}x{im.height} exceeds {max_pixels} pixels")
                return np.asarray(im.convert("RGB"))
        except ProtocolError:
            raise
        except Exception as e:  # binascii.Error, PIL's UnidentifiedImageError, DecompressionBombError, ...
            raise ProtocolError(f"{key}: not a base64 PNG/JPEG image ({type(e).__name__}: {e})") from None
    if isinstance(value, list):
        try:
            arr = np.asarray(value)
        except ValueError as e:
            raise ProtocolError(f"{key}: ragged nested list ({e})") from None
        if arr.dtype.kind not in "iu" or arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ProtocolError(f"{key}: nested-list images must hold integers 0..255, got {arr.dtype}")
        return arr.astype(np.uint8)
    raise ProtocolError(f"{key}: expected a base64 PNG/JPEG string or nested lists, got {type(value).__name__}")


def to_jsonable(obj):
    """Arrays -> nested lists, for JSON replies."""
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj
