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


def check_execution(action_horizon: int, ensemble: int, horizon: int) -> None:
    """How a policy executes its H-step chunks: a new chunk every `action_horizon` steps (at most
    H: a chunk must cover the steps it is executed for), `ensemble` newest chunks voting."""
    if not 1 <= action_horizon <= horizon:
        raise ValueError(f"action_horizon must be in 1..{horizon} (the chunk length), got {action_horizon}")
    if ensemble < 1:
        raise ValueError(f"ensemble must be >= 1, got {ensemble}")


class TemporalEnsembler:
    def __init__(self, ensemble: int = 1, decay: float = 0.0, action_horizon: int | None = None):
        """ensemble: how many of the newest chunks vote (1 = no ensembling).
        decay: weights exp(-decay * i) with i = 0 for the oldest voter, as in ALOHA; 0 = uniform.
        action_horizon: a new chunk is due every this many steps (None: only when no stored
        chunk covers the step, e.g. a server that adds one per request)."""
        if ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {ensemble}")
        if action_horizon is not None and action_horizon < 1:
            raise ValueError(f"action_horizon must be >= 1, got {action_horizon}")
        self.ensemble = ensemble
        self.decay = decay
        self.action_horizon = action_horizon
        self._envs: dict[int, _History] = {}

    def reset(self, env_ids=None) -> None:
        if env_ids is None:
            self._envs.clear()
        for i in env_ids or []:
            self._envs.pop(int(i), None)

    def needs_chunk(self, env_id: int) -> bool:
        """True when no stored chunk covers the current step, or action_horizon steps have
        passed since the newest one was added."""
        h = self._envs.get(int(env_id))
        if h is None or not any(h.step - s < len(c) for s, c in h.chunks):
            return True
        return self.action_horizon is not None and self.steps_since_chunk(env_id) >= self.action_horizon

    def steps_since_chunk(self, env_id: int) -> int:
        """Steps executed since the newest chunk was added (0 before any)."""
        h = self._envs.get(int(env_id))
        return h.step - h.chunks[-1][0] if h is not None and h.chunks else 0

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
