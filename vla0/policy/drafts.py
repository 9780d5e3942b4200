"""Speculative drafts for a new action chunk from the previous one (vla0.policy.fast_decode).

A chunk predicted `shift` steps ago, without its executed steps, is a good guess of the next
chunk's numbers: robot actions change little from one step to the next."""

from __future__ import annotations

import numpy as np


def draft_from_bins(prev_bins, shift: int = 1) -> list[int]:
    """The draft for a new chunk: the previous chunk's bins (H, D) without its first `shift`
    steps (the steps executed since it was predicted), flattened."""
    prev = np.asarray(prev_bins)
    return [int(v) for v in prev[shift:].reshape(-1)]


def draft_candidates(prev_bins, shift: int = 1) -> list[list[int]]:
    """Alternative drafts from the previous chunk: shifted by the steps executed since it was
    predicted (preferred), by one step less (the model repeated itself) and by one more."""
    prev = np.asarray(prev_bins)
    shifts = [shift] + [s for s in (shift - 1, shift + 1) if 0 <= s < len(prev)]
    return [[int(v) for v in prev[s:].reshape(-1)] for s in shifts]


def is_nested(draft) -> bool:
    """A list of alternative drafts rather than one draft."""
    if isinstance(draft, np.ndarray):
        return False
    return len(draft) > 0 and isinstance(draft[0], (list, tuple, np.ndarray))
