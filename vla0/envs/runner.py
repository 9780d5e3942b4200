"""The episode loop, written once: collection, evaluation and RL rollouts all run through it.

    jobs (spec, seed) -> slots of environments in an EnvPool (worker processes) -> a policy's
    batched select_action(obs, slot ids) -> pool.step -> per-episode results

Envs run in lockstep; when an episode ends its slot starts the next job at once (the policy's
state for that slot is reset first), so the policy always sees a full batch. A slot prefers a
job with its current spec (no env rebuild). Envs render only frames someone reads: the policy
(its `needs_observation`, when it has one) or a recording (videos, datasets).

An env worker process that dies mid-episode (vla0.envs.pool.EnvCrash) costs that episode, not
the run: the pool restarts the worker and the episode starts again from its seed in the same
slot (the policy's state for the slot reset, `on_retry` told), up to `max_retries` times per job.

A policy here is anything with `name`, `needs_images`, `reset(env_ids)` and
`select_action(obs, env_ids) -> (B, action_dim)`; one whose `acts_in_env` is true is the
environment's scripted expert (its actions come from the env workers, which hold the state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from vla0.config import IMAGE_PREFIX
from vla0.envs.pool import EnvCrash


@dataclass
class EpisodeJob:
    spec: object  # vla0.envs.EnvSpec
    seed: int
    record: bool = False  # keep every observation and action (videos, datasets)
    tag: object = None  # the caller's, returned with the result


@dataclass
class EpisodeResult:
    job: EpisodeJob
    index: int  # position in the job list
    slot: int
    success: bool
    steps: int
    observations: list[dict] = field(default_factory=list)  # if recorded: before each step, then the last
    actions: list[np.ndarray] = field(default_factory=list)  # if recorded: one per step


class EnvExpert:
    """The environment's scripted expert, as a policy for the runner: its actions come from the
    env workers, which hold the simulator's privileged state."""
    name = "expert"
    needs_images = False
    acts_in_env = True
    malformed_outputs = 0

    def reset(self, env_ids=None) -> None:
        pass  # state lives in the envs


def batch_obs(observations: list[dict]) -> dict:
    """Stack per-env observation dicts into one batch dict (strings become lists). Only keys all
    envs share: blind envs (no cameras) may run beside recording ones."""
    out = {}
    for key in [k for k in observations[0] if all(k in o for o in observations[1:])]:
        vals = [o[key] for o in observations]
        out[key] = vals if isinstance(vals[0], str) else np.stack(vals)
    return out


def _images(obs: dict) -> dict:
    return {k: v for k, v in obs.items() if k.startswith(IMAGE_PREFIX)}


def _crashed(result) -> bool:
    return isinstance(result, EnvCrash)


class EpisodeRunner:
    def __init__(self, pool, batch: int, action_dim: int | None = None, max_retries: int = 2):
        """pool: an EnvPool (or one with its interface); batch: episodes run in lockstep;
        max_retries: restarts of one episode after env worker crashes before the run fails."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.pool = pool
        self.batch = batch
        self.action_dim = action_dim
        self.max_retries = max_retries
        self.retries = 0  # episodes started again after a crash, over this runner's life

    def run(self, jobs: list[EpisodeJob], policy,
            on_end: Callable[[EpisodeResult], None] | None = None,
            on_retry: Callable[[int, EpisodeJob], None] | None = None) -> list[EpisodeResult]:
        """Every job, results in job order. on_end(result) is called as each episode ends, before
        its slot starts the next one; on_retry(slot, job) when an episode is abandoned because its
        env worker died (it starts again from its seed)."""
        results: list[EpisodeResult | None] = [None] * len(jobs)
        pending = list(range(len(jobs)))
        tries = [0] * len(jobs)

        def retry(slot: int, i: int, crash) -> None:
            tries[i] += 1
            self.retries += 1
            if tries[i] > self.max_retries:
                raise RuntimeError(f"episode {jobs[i].spec.task} seed {jobs[i].seed}: its env worker died "
                                   f"{tries[i]} times ({crash}); giving up")
            print(f"[runner] env worker died ({crash}); restarting {jobs[i].spec.task} seed {jobs[i].seed} "
                  f"in slot {slot} (retry {tries[i]} of {self.max_retries})", flush=True)
            if on_retry is not None:
                on_retry(slot, jobs[i])
            slot_spec.pop(slot, None)
            pending.insert(0, i)
        active: dict[int, list] = {}  # slot -> [job index, obs, steps, recorded obs, recorded actions]
        slot_spec: dict[int, object] = {}
        pool = self.pool
        expert = getattr(policy, "acts_in_env", False)
        policy.reset(None)

        def start(slots: list[int]) -> None:
            """Start the next jobs in these slots: one pool call, so workers build and reset in parallel."""
            chosen = []
            for slot in slots[:len(pending)]:
                i = next((i for i in pending if jobs[i].spec == slot_spec.get(slot)), None)
                if i is None:  # a new env: for the spec that holds the fewest slots, so that with several
                    # tasks each keeps its share of the slots and slots rebuild only when a task runs out
                    held = [slot_spec.get(s) for s in range(self.batch) if s != slot]
                    i = min(pending, key=lambda j: sum(jobs[j].spec == h for h in held))
                pending.remove(i)
                slot_spec[slot] = jobs[i].spec
                policy.reset([slot])
                chosen.append((slot, i))
            if not chosen:
                return
            obs = pool.reset([jobs[i].spec for _, i in chosen], [jobs[i].seed for _, i in chosen],
                             ids=[slot for slot, _ in chosen])
            again = []
            for (slot, i), o in zip(chosen, obs):
                if _crashed(o):
                    retry(slot, i, o)
                    again.append(slot)
                    continue
                rec = jobs[i].record
                active[slot] = [i, o, 0, [] if rec else None, [] if rec else None]
            if again:
                start(again)

        start(list(range(min(self.batch, len(jobs)))))
        while active:
            ids = sorted(active)
            if expert:
                actions = pool.expert_actions(ids)
                lost = [(s, a) for s, a in zip(ids, actions) if _crashed(a)]
                for s, a in lost:
                    retry(s, active.pop(s)[0], a)
                if lost:
                    start([s for s, _ in lost])
                    continue
                actions = np.asarray(actions, np.float32)
            else:
                actions = np.asarray(policy.select_action(batch_obs([active[s][1] for s in ids]), ids), np.float32)
            want = self.action_dim or actions.shape[-1]
            if actions.ndim != 2 or actions.shape != (len(ids), want):
                raise ValueError(f"policy {policy.name!r} returned actions of shape {actions.shape}, "
                                 f"expected ({len(ids)}, {want})")
            wanted = policy.needs_observation(ids) if hasattr(policy, "needs_observation") else [True] * len(ids)
            render = [w or active[s][3] is not None for s, w in zip(ids, wanted)]  # recordings see every frame
            out = pool.step(list(actions), ids=ids, render=render)
            ended = []
            for slot, action, r, result in zip(ids, actions, render, out):
                if _crashed(result):
                    retry(slot, active.pop(slot)[0], result)
                    ended.append(slot)
                    continue
                next_obs, _, term, trunc, info = result
                ep = active[slot]
                if ep[3] is not None:
                    ep[3].append(ep[1])
                    ep[4].append(action)
                if not r:  # keep the last frames so the batch stays rectangular; the policy will not read them
                    next_obs = {**_images(ep[1]), **next_obs}
                ep[1], ep[2] = next_obs, ep[2] + 1
                if not (term or trunc):
                    continue
                i = ep[0]
                res = EpisodeResult(jobs[i], i, slot, bool(info["success"]), ep[2])
                if ep[3] is not None:
                    res.observations, res.actions = ep[3] + [next_obs], ep[4]
                results[i] = res
                del active[slot]
                if on_end is not None:
                    on_end(res)
                ended.append(slot)
            if pending and ended:
                start(ended)
        return results  # type: ignore[return-value]
