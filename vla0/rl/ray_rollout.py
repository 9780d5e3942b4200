"""RL rollout workers as Ray actors (`vla0 rl ... --ray [ADDRESS]`).

Each actor is a RolloutWorker (vla0/rl/rollout.py) with its own copy of the policy and its own
environments, on any node of the cluster; the learner stays in the driver, where the accelerator
is. After each update the learner's trainable tensors go into the Ray object store once
(`ray.put`) and every actor loads them from there (only the adapters with LoRA). A GRPO group
stays on one actor (one seed, one env build); the driver's dynamic sampling is unchanged. An actor
that dies (a simulator segfault takes its process) is started again with the current weights and
plays its share again; after MAX_RESTARTS deaths in one call the run stops with an error.

RayRolloutWorkers has the RolloutWorker methods the trainer uses: set_weights, run, stats,
close, cameras, image_size.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from vla0.config import PolicyConfig
from vla0.envs.pool import registry
from vla0.envs.ray_pool import close_actors, connect, start_actors
from vla0.rl.rollout import RolloutJob, RolloutSettings, RolloutWorker, Trajectory, render_settings


class _RolloutActor:
    """A standalone RolloutWorker, its environments in the actor's own process."""

    def __init__(self, policy_dir: str, settings: RolloutSettings, lora: dict | None, envs: dict | None = None):
        import os

        from vla0.envs import base
        from vla0.envs.gl import ensure_gl
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
        ensure_gl()
        base._REGISTRY.update(envs or {})  # env adapters registered at run time in the driver
        self.worker = RolloutWorker.from_policy(policy_dir, settings, lora=lora, num_workers=0)

    def ready(self) -> bool:
        return True

    def set_weights(self, weights: dict) -> None:
        self.worker.set_weights(weights)

    def run(self, jobs: list[RolloutJob], seed: int) -> tuple[list[Trajectory], dict]:
        trajectories = self.worker.run(jobs, torch.Generator().manual_seed(seed))
        stats = dict(self.worker.stats)
        self.worker.stats.update(model_seconds=0.0, env_seconds=0.0, policy_calls=0)
        return trajectories, stats

    def close(self) -> None:
        self.worker.close()


MAX_RESTARTS = 3  # actor deaths one run() survives


class RayRolloutWorkers:
    def __init__(self, policy_dir: Path, settings: RolloutSettings, lora: dict | None = None,
                 num_actors: int = 2, address: str | None = None, num_cpus: float = 1.0):
        """policy_dir: the policy RL starts from (the actors load it, then receive weights)."""
        if num_actors < 1:
            raise ValueError(f"RayRolloutWorkers: num_actors must be >= 1, got {num_actors}")
        self._ray = connect(address)
        config = PolicyConfig.load(policy_dir)
        self.cameras, self.image_size = render_settings(config, settings.cameras, settings.image_size)
        self.stats = {"policy_calls": 0, "model_seconds": 0.0, "env_seconds": 0.0, "weights_seconds": 0.0,
                      "actor_restarts": 0}
        self._args = (num_cpus, str(policy_dir), settings, lora, registry())
        self._weights = None  # the object-store copy of the newest weights, for a restarted actor
        self._actors = start_actors(self._ray, _RolloutActor, num_actors, *self._args)

    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """One copy into the object store, loaded by every actor; the time it took goes into stats."""
        t0 = time.perf_counter()
        self._weights = self._ray.put({name: t.detach().cpu() for name, t in weights.items()})
        self._ray.get([a.set_weights.remote(self._weights) for a in self._actors])
        self.stats["weights_seconds"] = time.perf_counter() - t0

    def _restart(self, i: int) -> None:
        """Actor i died: a fresh one from the policy folder, with the newest weights."""
        self.stats["actor_restarts"] += 1
        self._ray.kill(self._actors[i])
        self._actors[i] = start_actors(self._ray, _RolloutActor, 1, *self._args)[0]
        if self._weights is not None:
            self._ray.get(self._actors[i].set_weights.remote(self._weights))

    def run(self, jobs: list[RolloutJob], generator: torch.Generator | None = None) -> list[Trajectory]:
        """Groups dealt round-robin to the actors, which play them at once; results in job order
        (grouped by job, as RolloutWorker.run returns them)."""
        n = len(self._actors)
        shares = [jobs[i::n] for i in range(n)]
        seeds = torch.randint(0, 2**62, (n,), generator=generator).tolist()
        calls = {i: self._actors[i].run.remote(shares[i], seeds[i]) for i in range(n) if shares[i]}
        by_group: dict[int, list[Trajectory]] = {}
        deaths = 0
        while calls:
            i, call = calls.popitem()
            try:
                trajectories, stats = self._ray.get(call)
            except self._ray.exceptions.RayActorError as e:
                deaths += 1
                if deaths > MAX_RESTARTS:
                    raise RuntimeError(f"Ray rollout actors died {deaths} times in one iteration (last: {e}); "
                                       "the environment crashes every time: see the actor logs") from None
                self._restart(i)  # its share is played again, from the start of each group
                calls[i] = self._actors[i].run.remote(shares[i], seeds[i] + deaths)
                continue
            for key in ("policy_calls", "model_seconds", "env_seconds"):
                self.stats[key] += stats[key]
            for t in trajectories:
                by_group.setdefault(t.group, []).append(t)
        return [t for job in jobs for t in by_group.get(job.group, [])]

    def close(self) -> None:
        close_actors(self._ray, self._actors)
        self._actors = []
