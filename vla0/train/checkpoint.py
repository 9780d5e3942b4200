"""Checkpoints of a run folder: each is written atomically (vla0.io) and `checkpoints/latest`
names the newest complete one, so a killed run never leaves a half-written checkpoint that
--resume would pick up."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vla0.io import save_folder_atomic, write_text_atomic

TRAINER_STATE = "trainer_state.pt"


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    folder = run_dir / "checkpoints" / pointer.read_text().strip()
    return folder if (folder / TRAINER_STATE).exists() else None


def save_checkpoint(run_dir: Path, step: int, write, keep: int = 2) -> Path:
    """write(tmp_folder) fills checkpoint `step`; it becomes `latest` and older ones beyond
    `keep` are removed."""
    folder = save_folder_atomic(run_dir / "checkpoints" / checkpoint_name(step), write)
    write_text_atomic(run_dir / "checkpoints" / "latest", folder.name)
    older = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if p.name != folder.name)
    for p in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return folder


def drop_log_after(path: Path, key: str, last: int) -> None:
    """Keep the rows of a JSON-lines log whose `key` is at most `last`: a run killed after its
    checkpoint at `last` resumes from there and logs the later steps again, which must then
    appear once. A row cut off by the kill (not valid JSON) goes too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get(key, last) <= last:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))
