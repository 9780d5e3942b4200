"""Executing action chunks: the one implementation of "a new chunk every n_action_steps steps,
temporal ensembling over the newest chunks, clipping to the action bounds", shared by the
in-process policy (VLA0Policy), the remote one (vla0.client.RemotePolicy) and the server's
sessions. Plain numpy, so that a robot computer runs it without torch.

Temporal ensembling (ALOHA, used by VLA-0): the action for the current step is the weighted
average of what the last `ensemble` predicted chunks said about this step. State is kept per
environment id, so a batch of environments (or server sessions) is ensembled independently and
can be reset one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class _History:
    step: int = 0
    chunks: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (step predicted at, (H, D))


ENSEMBLE_WEIGHTS = ("exponential", "vla0")


class ChunkExecutor:
    def __init__(self, ensemble: int = 1, decay: float = 0.0, n_action_steps: int | None = None,
                 bounds: tuple[np.ndarray, np.ndarray] | None = None, weights: str = "exponential"):
        """ensemble: how many of the newest chunks vote (1 = no ensembling).
        decay: weights exp(-decay * i) with i = 0 for the oldest voter, as in ALOHA; 0 = uniform.
        n_action_steps: a new chunk is due every this many steps (None: only when no stored chunk
        covers the step, e.g. a server that adds one per request).
        bounds: (low, high) every executed action is clipped to; None: no clipping.
        weights: "exponential" (with decay) or "vla0" (VLA-0's released code: newest 1.0, older 0.5)."""
        if weights not in ENSEMBLE_WEIGHTS:
            raise ValueError(f"ensemble weights must be one of {ENSEMBLE_WEIGHTS}, got {weights!r}")
        self.weights = weights
        if ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {ensemble}")
        if n_action_steps is not None and n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {n_action_steps}")
        self.ensemble = ensemble
        self.decay = decay
        self.n_action_steps = n_action_steps
        self.bounds = bounds
        self._envs: dict[int, _History] = {}

    def reset(self, env_ids=None) -> None:
        if env_ids is None:
            self._envs.clear()
        for i in env_ids or []:
            self._envs.pop(int(i), None)

    def needs_chunk(self, env_id: int) -> bool:
        """True when no stored chunk covers the current step, or n_action_steps steps have
        passed since the newest one was added."""
        h = self._envs.get(int(env_id))
        if h is None or not any(h.step - s < len(c) for s, c in h.chunks):
            return True
        return self.n_action_steps is not None and self.steps_since_chunk(env_id) >= self.n_action_steps

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
        """The ensembled action for the current step, clipped; then the step advances."""
        h = self._envs[int(env_id)]
        rows = [c[h.step - s] for s, c in h.chunks if h.step - s < len(c)]
        if not rows:
            raise RuntimeError(f"env {env_id}: no chunk covers step {h.step}; call add() first")
        if self.weights == "vla0":  # rows run oldest to newest
            weights = np.where(np.arange(len(rows)) == len(rows) - 1, 1.0, 0.5)
        else:
            weights = np.exp(-self.decay * np.arange(len(rows)))
        h.step += 1
        action = np.average(np.stack(rows), axis=0, weights=weights).astype(np.float32)
        return action if self.bounds is None else np.clip(action, *self.bounds)

    def select_action(self, obs: dict, env_ids: list[int], predict: Callable[[dict, list[int]], np.ndarray]) -> np.ndarray:
        """(B, D): the next action per env. predict(rows of obs, their env ids) -> (n, H, D) is
        called once, for the envs whose chunk is due."""
        env_ids = [int(i) for i in env_ids]
        stale = [j for j, e in enumerate(env_ids) if self.needs_chunk(e)]
        if stale:
            chunks = predict(select_rows(obs, stale), [env_ids[j] for j in stale])
            for j, chunk in zip(stale, chunks):
                self.add(env_ids[j], chunk)
        return np.stack([self.pop(e) for e in env_ids])


def select_rows(obs: dict, rows: list[int]) -> dict:
    """The given rows of a batched observation dict (a string stays as it is)."""
    out = {}
    for k, v in obs.items():
        if isinstance(v, (list, tuple)):
            out[k] = [v[i] for i in rows]
        elif isinstance(v, str):
            out[k] = v
        else:
            out[k] = np.asarray(v)[rows]
    return out
