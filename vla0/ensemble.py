"""Temporal ensembling (ALOHA, used by VLA-0): the action for the current step is the
average of what the last n predicted chunks said about this step.

State is kept per environment id, so a batch of environments (or server sessions) is
ensembled independently and can be reset one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class _History:
    step: int = 0
    chunks: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (step predicted at, (H, D))


class TemporalEnsembler:
    def __init__(self, ensemble: int = 1, decay: float = 0.0):
        """ensemble: how many of the newest chunks vote (1 = no ensembling).
        decay: weights exp(-decay * i) with i = 0 for the oldest voter, as in ALOHA; 0 = uniform."""
        if ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {ensemble}")
        self.ensemble = ensemble
        self.decay = decay
        self._envs: dict[int, _History] = {}

    def reset(self, env_ids=None) -> None:
        if env_ids is None:
            self._envs.clear()
        for i in env_ids or []:
            self._envs.pop(int(i), None)

    def needs_chunk(self, env_id: int) -> bool:
        """True when no stored chunk covers the current step."""
        h = self._envs.get(int(env_id))
        return h is None or not any(h.step - s < len(c) for s, c in h.chunks)

    def add(self, env_id: int, chunk: np.ndarray) -> None:
        """Record a chunk predicted at the current step (its row 0 is for this step)."""
        h = self._envs.setdefault(int(env_id), _History())
        h.chunks.append((h.step, np.asarray(chunk, dtype=np.float64)))
        del h.chunks[: -self.ensemble]

    def pop(self, env_id: int) -> np.ndarray:
        """The ensembled action for the current step; then the step advances."""
        h = self._envs[int(env_id)]
        rows = [c[h.step - s] for s, c in h.chunks if h.step - s < len(c)]
        if not rows:
            raise RuntimeError(f"env {env_id}: no chunk covers step {h.step}; call add() first")
        weights = np.exp(-self.decay * np.arange(len(rows)))
        h.step += 1
        return np.average(np.stack(rows), axis=0, weights=weights).astype(np.float32)
