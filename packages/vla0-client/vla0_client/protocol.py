"""The wire format of `vla0 serve`'s WebSocket: msgpack with numpy arrays. Never pickle.

Arrays travel as openpi's msgpack_numpy encodes them,
    {"__ndarray__": True, "data": raw bytes, "dtype": dtype.str, "shape": shape},
so openpi clients and servers interoperate. openpi writes those keys as msgpack *bytes*
(b"__ndarray__"); we write them the same way and accept both bytes and str keys on decode.
Object, void (structured) and complex dtypes are refused both ways: the first could smuggle
arbitrary objects, the others have no meaning for observations or actions.
"""

from __future__ import annotations

import msgpack
import numpy as np

_REFUSED_KINDS = ("O", "V", "c")
_ND, _GEN = "__ndarray__", "__npgeneric__"


class ProtocolError(ValueError):
    """The bytes on the wire do not decode: malformed msgpack/JSON, a bad array header."""


def _check_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.kind in _REFUSED_KINDS or dtype.hasobject:
        raise ProtocolError(f"unsupported dtype {dtype.str!r}: object, void and complex arrays are refused")
    return dtype


def _pack(obj):
    if isinstance(obj, (np.ndarray, np.generic)):
        _check_dtype(obj.dtype)
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(),
                b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _get(obj: dict, key: str):
    return obj[key] if key in obj else obj[key.encode()]


def _unpack(obj: dict):
    is_nd = _ND in obj or _ND.encode() in obj
    if not is_nd and not (_GEN in obj or _GEN.encode() in obj):
        return obj
    try:
        dtype_str = _get(obj, "dtype")
        data = _get(obj, "data")
        if not isinstance(dtype_str, (str, bytes)):
            raise ProtocolError("array dtype must be a string")
        dtype = _check_dtype(np.dtype(dtype_str if isinstance(dtype_str, str) else dtype_str.decode()))
        if not is_nd:
            return dtype.type(data)
        shape = tuple(_get(obj, "shape"))
        if not all(isinstance(s, int) and s >= 0 for s in shape) or not isinstance(data, bytes):
            raise ProtocolError(f"bad array header: shape {shape}, data {type(data).__name__}")
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(data):
            raise ProtocolError(f"array of shape {shape} and dtype {dtype.str} needs "
                                f"{int(np.prod(shape)) * dtype.itemsize} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ProtocolError(f"bad array header: {e}") from None


def packb(obj) -> bytes:
    return msgpack.packb(obj, default=_pack, use_bin_type=True)


def unpackb(data: bytes):
    """Decode one message; anything malformed raises ProtocolError (never something else)."""
    try:
        return msgpack.unpackb(data, object_hook=_unpack, raw=False, strict_map_key=False)
    except ProtocolError:
        raise
    except Exception as e:  # msgpack raises a zoo of types (ExtraData, FormatError, StackError, ...)
        raise ProtocolError(f"malformed msgpack: {type(e).__name__}: {e}") from None




def error_frame(code: str, message: str) -> str:
    """A refused request's reply: a WebSocket *text* frame "<code>: <message>". openpi's client
    raises RuntimeError on a text frame (a msgpack map would be handed back as if it were an
    action); vla0's client reads the code back with parse_error_frame."""
    return f"{code}: {message}"


def parse_error_frame(text: str) -> tuple[str, str]:
    """(code, message) of an error frame; a text frame from another server is ("error", text)."""
    code, sep, message = text.partition(": ")
    return (code, message) if sep and code.isidentifier() else ("error", text)
