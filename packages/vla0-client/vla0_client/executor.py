"""Executing action chunks: the one implementation of "a new chunk every n_action_steps steps,
temporal ensembling over the newest chunks, clipping to the action bounds", shared by the
in-process policy (VLA0Policy), the remote one (vla0.client.RemotePolicy) and the server's
sessions. Plain numpy, so that a robot computer runs it without torch.

Temporal ensembling (ALOHA, used by VLA-0): the action for the current step is the weighted
average of what the last `ensemble` predicted chunks said about this step. State is kept per
environment id, so a batch of environments (or server sessions) is ensembled independently and
can be reset one at a time.

Execution modes (`mode`), for a model whose prediction takes `latency_steps` control steps:
  sync            the robot waits while the model thinks (today's loop; latency costs only time)
  async           it keeps executing the current chunk and switches to the new one when it
                  arrives, at the row for the arrival step (naive switching: a jump there)
  async-ensemble  as async, each step averaging the newest `ensemble` arrived chunks
  rtc             real-time chunking: each request carries the actions the robot is committed
                  to while the request is in flight (and the rest of its current plan); the
                  policy keeps them (text: forced prefix, flow: guided inpainting), so the switch
                  is continuous. The policy's predict takes prefix= and committed_steps=.
In the asynchronous modes a request is launched every max(n_action_steps, latency_steps) steps,
one at a time. With latency in simulation a chunk predicted at step t is used from step t + d
on (the world moved meanwhile: the observation is d steps old); when nothing is left to execute
(the first chunk of an episode, or a chunk exhausted before its successor arrives) the robot
waits for the one in flight, counted in `stall_steps`.

Smoothness is measured as the robot sees it, per env until its reset (`episode_stats`): the mean
jump |a_t - a_{t-1}| at steps where the newest chunk in use changed (chunk boundaries), and the
total jerk, the sum over steps of |a_t - 2 a_{t-1} + a_{t-2}| (actions are velocity-like commands).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class _History:
    step: int = 0
    chunks: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (step predicted at, (H, D))
    in_flight: list[tuple[int, int, np.ndarray]] = field(default_factory=list)  # (arrives at, predicted at, chunk)
    launched: int | None = None  # step of the newest request (asynchronous modes)
    source: int | None = None  # step the newest chunk used for the last action was predicted at
    last: list[np.ndarray] = field(default_factory=list)  # the last two executed actions
    boundaries: int = 0
    jump: float = 0.0
    jerk: float = 0.0
    stall_steps: int = 0


def _covers(h: _History) -> bool:
    """Whether a stored chunk has a row for the env's current step."""
    return any(h.step - s < len(c) for s, c in h.chunks)


ENSEMBLE_WEIGHTS = ("exponential", "vla0")
EXECUTION_MODES = ("sync", "async", "async-ensemble", "rtc")


def check_latency(latency_steps: int, chunk_size: int | None, mode: str = "sync") -> None:
    """A chunk must leave something to execute after the actions committed during its latency."""
    if mode not in EXECUTION_MODES:
        raise ValueError(f"execution mode must be one of {EXECUTION_MODES}, got {mode!r}")
    if latency_steps < 0:
        raise ValueError(f"latency_steps must be >= 0, got {latency_steps}")
    if chunk_size is not None and latency_steps >= chunk_size:
        raise ValueError(f"latency of {latency_steps} control steps >= the chunk size {chunk_size}: a chunk "
                         f"arriving {latency_steps} steps after its observation has nothing left to execute; "
                         f"use a policy trained with a chunk size above {latency_steps}, or a shorter latency")


class ChunkExecutor:
    def __init__(self, ensemble: int = 1, decay: float = 0.0, n_action_steps: int | None = None,
                 bounds: tuple[np.ndarray, np.ndarray] | None = None, weights: str = "exponential",
                 mode: str = "sync", latency_steps: int = 0, chunk_size: int | None = None):
        """ensemble: how many of the newest chunks vote (1 = no ensembling).
        decay: weights exp(-decay * i) with i = 0 for the oldest voter, as in ALOHA; 0 = uniform.
        n_action_steps: a new chunk is due every this many steps (None: only when no stored chunk
        covers the step, e.g. a server that adds one per request).
        bounds: (low, high) every executed action is clipped to; None: no clipping.
        weights: "exponential" (with decay) or "vla0" (VLA-0's released code: newest 1.0, older 0.5).
        mode, latency_steps: see the module's docstring; chunk_size (when known) is checked
        against the latency."""
        check_latency(latency_steps, chunk_size, mode)
        self.mode = mode
        self.latency = latency_steps if mode != "sync" else 0  # a synchronous robot waits: no steps pass
        self.interval = max(n_action_steps or 1, self.latency)
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
        passed since the newest one was added. Asynchronous modes: when no request is in flight
        and the last was launched `interval` steps ago (or nothing covers the step)."""
        h = self._envs.get(int(env_id))
        if self.mode != "sync":
            if h is None:
                return True
            self._arrive(h)
            if h.in_flight:
                return False
            return not _covers(h) or h.launched is None or h.step - h.launched >= self.interval
        if h is None or not _covers(h):
            return True
        return self.n_action_steps is not None and self.steps_since_chunk(env_id) >= self.n_action_steps

    def steps_since_chunk(self, env_id: int) -> int:
        """Steps executed since the newest chunk was added (0 before any)."""
        h = self._envs.get(int(env_id))
        return h.step - h.chunks[-1][0] if h is not None and h.chunks else 0

    def add(self, env_id: int, chunk: np.ndarray, predicted_at: int | None = None) -> None:
        """Record a chunk predicted at the current step (its row 0 is for this step). In an
        asynchronous mode with simulated latency it arrives latency_steps later (at once when
        the robot has nothing else to execute). predicted_at: a chunk arriving now from a
        request launched at that step (a real asynchronous loop: its latency was real)."""
        h = self._envs.setdefault(int(env_id), _History())
        chunk = np.asarray(chunk, dtype=np.float64)
        if self.mode == "sync":
            h.chunks.append((h.step, chunk))
            del h.chunks[: -self.ensemble]
            return
        if predicted_at is not None:
            h.chunks.append((int(predicted_at), chunk))
        else:
            h.launched = h.step
            h.in_flight.append((h.step + self.latency, h.step, chunk))
            self._arrive(h)

    def _arrive(self, h: _History) -> None:
        """Move the chunks that have arrived by the current step from in flight to usable."""
        arrived = [x for x in h.in_flight if x[0] <= h.step]
        if arrived:
            h.in_flight = [x for x in h.in_flight if x[0] > h.step]
            h.chunks += [(s, c) for _, s, c in arrived]
        h.chunks = [(s, c) for s, c in h.chunks if h.step - s < len(c)][-max(self.ensemble, 1):]

    def plan(self, env_id: int) -> np.ndarray:
        """(k, D): what the robot will execute from the current step on if no new chunk came,
        the rest of the newest arrived chunk (empty before any). RTC's prefix."""
        h = self._envs.get(int(env_id))
        if h is None:
            return np.zeros((0, 0))
        self._arrive(h)
        if not h.chunks:
            return np.zeros((0, 0))
        s, c = max(h.chunks, key=lambda x: x[0])
        return c[h.step - s:].astype(np.float32)

    def committed_steps(self, env_id: int) -> int:
        """How many rows of plan() run while a request launched now is in flight."""
        return min(self.latency, len(self.plan(env_id)))

    def step(self, env_id: int) -> int:
        """The env's current step (actions popped since its reset)."""
        h = self._envs.get(int(env_id))
        return 0 if h is None else h.step

    def has_action(self, env_id: int) -> bool:
        """Whether an arrived chunk covers the current step (else pop() needs one first)."""
        h = self._envs.get(int(env_id))
        if h is None:
            return False
        if self.mode != "sync":
            self._arrive(h)
        return _covers(h)

    def set_latency(self, latency_steps: int) -> None:
        """A real asynchronous loop's measured latency, in control steps (asynchronous modes)."""
        if self.mode != "sync":
            self.latency = int(latency_steps)
            self.interval = max(self.n_action_steps or 1, self.latency)

    def launch(self, env_id: int) -> None:
        """A real asynchronous loop sent a request at the current step (add(..., predicted_at)
        will deliver its chunk)."""
        h = self._envs.setdefault(int(env_id), _History())
        h.launched = h.step

    def pop(self, env_id: int) -> np.ndarray:
        """The ensembled action for the current step, clipped; then the step advances."""
        h = self._envs[int(env_id)]
        if self.mode != "sync":
            self._arrive(h)
            if not h.chunks and h.in_flight:  # nothing to execute: the robot waits for the chunk
                h.stall_steps += h.in_flight[0][0] - h.step
                h.in_flight[0] = (h.step, *h.in_flight[0][1:])
                self._arrive(h)
        rows = [(s, c[h.step - s]) for s, c in h.chunks if h.step - s < len(c)]
        if not rows:
            raise RuntimeError(f"env {env_id}: no chunk covers step {h.step}; call add() first")
        if self.mode in ("async", "rtc"):  # the newest chunk alone
            rows = [max(rows, key=lambda r: r[0])]
        newest = max(s for s, _ in rows)
        if self.weights == "vla0":  # rows run oldest to newest
            weights = np.where(np.arange(len(rows)) == len(rows) - 1, 1.0, 0.5)
        else:
            weights = np.exp(-self.decay * np.arange(len(rows)))
        h.step += 1
        action = np.average(np.stack([r for _, r in rows]), axis=0, weights=weights).astype(np.float32)
        action = action if self.bounds is None else np.clip(action, *self.bounds)
        self._measure(h, action, newest)
        return action

    def _measure(self, h: _History, action: np.ndarray, source: int) -> None:
        a = action.astype(np.float64)
        if h.last and source != h.source:
            h.boundaries += 1
            h.jump += float(np.linalg.norm(a - h.last[-1]))
        if len(h.last) == 2:
            h.jerk += float(np.linalg.norm(a - 2 * h.last[-1] + h.last[-2]))
        h.source = source
        h.last = (h.last + [a])[-2:]

    def episode_stats(self, env_id: int) -> dict:
        """Smoothness of what this env executed since its reset (see the module's docstring)."""
        h = self._envs.get(int(env_id)) or _History()
        return {"boundaries": h.boundaries, "mean_boundary_jump": h.jump / h.boundaries if h.boundaries else 0.0,
                "total_jerk": h.jerk, "stall_steps": h.stall_steps}

    def select_action(self, obs: dict, env_ids: list[int], predict: Callable[[dict, list[int]], np.ndarray]) -> np.ndarray:
        """(B, D): the next action per env. predict(rows of obs, their env ids) -> (n, H, D) is
        called once, for the envs whose chunk is due."""
        env_ids = [int(i) for i in env_ids]
        stale = [j for j, e in enumerate(env_ids) if self.needs_chunk(e)]
        if stale:
            ids = [env_ids[j] for j in stale]
            rtc = {}
            if self.mode == "rtc":  # what the robot is committed to while this request is in flight
                plans = [self.plan(e) for e in ids]
                rtc = {"prefix": plans, "committed_steps": [min(self.latency, len(p)) for p in plans]}
            chunks = predict(select_rows(obs, stale), ids, **rtc)
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
