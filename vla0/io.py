"""Atomic writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

Every file vla0 writes that a later step reads back goes through here: checkpoints, datasets'
metadata, results.json, plots, videos, model folders."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def write_file_atomic(path: str | os.PathLike, write) -> Path:
    """Call write(tmp_path) for a temporary sibling of path (same suffix, so libraries that pick a
    format by extension still do), then rename it over path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would follow the file after the rename
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_file_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(obj, path: str | os.PathLike) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2))


def save_folder_atomic(folder: str | os.PathLike, write) -> Path:
    """Call write(tmp_folder), then rename tmp_folder to folder (replacing an older one)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would follow the folder after the rename
    try:
        write(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
