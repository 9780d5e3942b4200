"""The policy in a Ray actor of its own (`vla0 eval --ray --policy-gpus N`).

With `--ray` alone the policy runs in the driver and the env slots in Ray actors. A policy that
needs an accelerator the driver does not have (a laptop driving a cluster, a head node without a
GPU) runs instead in an actor that Ray places where `num_gpus` GPUs (and `num_cpus` CPUs) are free;
the driver keeps the episode runner and calls the actor once per lockstep step with the whole
batch of observations, so batching across env slots is as it is in the driver.

RayPolicy has the evaluation Policy interface (vla0.eval.evaluate.Policy) and the same name,
config and temperature as the policy it wraps: an evaluation's settings, and so its resumption
(episodes.jsonl), do not depend on where the policy ran, and the same seeds give the same
episodes (tests/test_ray.py).
"""

from __future__ import annotations

import os

from vla0.envs.ray_pool import close_actors, connect, start_actors


class _PolicyActor:
    """Loads the policy where Ray placed it: cuda when it was given GPUs, else the CPU."""

    def __init__(self, path: str, num_gpus: float, num_cpus: float, options: dict):
        import torch

        from vla0.policy.policy import VLA0Policy
        if num_gpus <= 0:
            os.environ["OMP_NUM_THREADS"] = str(max(1, int(num_cpus)))
            torch.set_num_threads(max(1, int(num_cpus)))
        device = "cuda" if num_gpus > 0 else "cpu"
        self.policy = VLA0Policy.from_pretrained(path, device=device, **options)

    def ready(self) -> bool:
        return True

    def describe(self) -> dict:
        p = self.policy
        return {"name": p.name, "config": p.config, "temperature": p.temperature, "needs_images": p.needs_images}

    def reset(self, env_ids) -> None:
        self.policy.reset(env_ids)

    def select_action(self, obs: dict, env_ids):
        return self.policy.select_action(obs, env_ids), self.policy.malformed_outputs

    def needs_observation(self, env_ids) -> list[bool]:
        return self.policy.needs_observation(env_ids)

    def close(self) -> None:
        self.policy = None


class RayPolicy:
    """A VLA0Policy in a Ray actor, called from the driver as if it were local."""

    def __init__(self, path: str, num_gpus: float = 1.0, num_cpus: float = 1.0, address: str | None = None,
                 **options):
        """options: VLA0Policy.from_pretrained's (ensemble, temperature, quantize, compile, ...)."""
        if num_gpus < 0 or num_cpus < 0:
            raise ValueError(f"RayPolicy: num_gpus and num_cpus must be >= 0, got {num_gpus} and {num_cpus}")
        self._ray = connect(address)
        self._actor = start_actors(self._ray, _PolicyActor, 1, num_cpus, str(path), num_gpus, num_cpus, options,
                                   num_gpus=num_gpus)[0]
        info = self._ray.get(self._actor.describe.remote())
        self.name, self.config, self.temperature = info["name"], info["config"], info["temperature"]
        self.needs_images = info["needs_images"]
        self.malformed_outputs = 0

    def reset(self, env_ids=None) -> None:
        self._ray.get(self._actor.reset.remote(env_ids))

    def select_action(self, obs: dict, env_ids=None):
        actions, self.malformed_outputs = self._ray.get(self._actor.select_action.remote(obs, env_ids))
        return actions

    def needs_observation(self, env_ids) -> list[bool]:
        return self._ray.get(self._actor.needs_observation.remote(env_ids))

    def close(self) -> None:
        close_actors(self._ray, [self._actor] if getattr(self, "_actor", None) else [])
        self._actor = None
