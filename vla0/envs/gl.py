"""Pick an offscreen OpenGL backend for MuJoCo before it is imported.

MuJoCo reads MUJOCO_GL once, at import time; without it, headless rendering
fails later with "an OpenGL platform library has not been loaded", far from
the cause. So we choose here, early, and fail with the fix in the message.
"""
import ctypes
import ctypes.util
import os


def _loadable(*names: str) -> bool:
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            found = ctypes.util.find_library(name.split(".")[0].removeprefix("lib"))
            if found:
                try:
                    ctypes.CDLL(found)
                    return True
                except OSError:
                    pass
    return False


def ensure_gl() -> str:
    """Set MUJOCO_GL to egl or osmesa if unset; return the backend in use."""
    backend = os.environ.get("MUJOCO_GL")
    if backend:
        # PyOpenGL must agree with MuJoCo, or context creation picks GLX.
        if backend in ("egl", "osmesa"):
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
        return backend
    if _loadable("libEGL.so.1", "libEGL.so"):
        backend = "egl"
    elif _loadable("libOSMesa.so.8", "libOSMesa.so.6", "libOSMesa.so"):
        backend = "osmesa"
    else:
        raise OSError(
            "No offscreen OpenGL library found for MuJoCo rendering (MUJOCO_GL is unset). "
            "Install EGL: `apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1` "
            "(then MUJOCO_GL=egl), or OSMesa: `apt-get install libosmesa6` (then MUJOCO_GL=osmesa)."
        )
    os.environ["MUJOCO_GL"] = backend
    os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend
