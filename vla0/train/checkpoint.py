"""Atomic checkpoints: each is written into a hidden temporary folder and renamed into place,
and `checkpoints/latest` names the newest complete one, so a killed run never leaves a
half-written checkpoint that --resume would pick up."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

TRAINER_STATE = "trainer_state.pt"


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.chmod(tmp, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_atomic(folder: Path, write) -> Path:
    """Call write(tmp_folder), then rename tmp_folder to folder (replacing an older one)."""
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


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    folder = run_dir / "checkpoints" / pointer.read_text().strip()
    return folder if (folder / TRAINER_STATE).exists() else None


def mark_latest(run_dir: Path, folder: Path, keep: int = 2) -> None:
    write_text_atomic(run_dir / "checkpoints" / "latest", folder.name)
    older = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if p.name != folder.name)
    for p in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
