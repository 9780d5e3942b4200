"""The policy in a Ray actor of its own (`vla0 eval --ray --policy-gpus N`).

With `--ray` alone the policy runs in the driver and the env slots in Ray actors. A policy that
needs an accelerator the driver does not have (a laptop driving a cluster, a head node without a
GPU) runs instead in an actor that Ray places where a GPU (and `num_cpus` CPUs) is free; the
driver keeps the episode runner and calls the actor once per lockstep step with the whole batch
of observations, so batching across env slots is as it is in the driver. The actor reads the
policy folder at the same absolute path as the driver: on a cluster, a shared filesystem (or the
same folder copied to that path on the GPU node).

RayPolicy has the evaluation Policy interface (vla0.eval.evaluate.Policy) and the same name,
config and temperature as the policy it wraps: an evaluation's settings, and so its resumption
(episodes.jsonl), do not depend on where the policy ran, and the same seeds give the same
episodes (tests/test_ray.py). One call per step: the actor answers select_action with the
actions and which envs will need their next observation (the runner asks right after), and a
step on which no env's chunk is due sends no frames.
"""

from __future__ import annotations

from pathlib import Path

from vla0.envs.ray_pool import close_actors, connect, start_actors

IMAGE_PREFIX = "observation.images."


class _PolicyActor:
    """Loads the policy where Ray placed it: cuda when it was given a GPU, else the CPU."""

    def __init__(self, path: str, num_gpus: float, num_cpus: float, options: dict):
        import torch

        from vla0.policy.policy import VLA0Policy
        torch.set_num_threads(max(1, int(num_cpus)))  # the CPUs this actor reserved, not the node's
        self.policy = VLA0Policy.from_pretrained(path, device="cuda" if num_gpus > 0 else "cpu", **options)

    def ready(self) -> bool:
        return True

    def describe(self) -> dict:
        p = self.policy
        return {"name": p.name, "config": p.config, "temperature": p.temperature, "needs_images": p.needs_images}

    def reset(self, env_ids) -> None:
        self.policy.reset(env_ids)

    def select_action(self, obs: dict, env_ids):
        actions = self.policy.select_action(obs, env_ids)
        ids = list(range(len(actions))) if env_ids is None else env_ids
        return actions, self.policy.malformed_outputs, self.policy.needs_observation(ids)

    def needs_observation(self, env_ids) -> list[bool]:
        return self.policy.needs_observation(env_ids)

    def close(self) -> None:
        self.policy = None


def check_policy_actor(path: str, num_gpus: float, options: dict) -> Path:
    """What the driver can check before asking the cluster for anything: the folder, the policy's
    config against the decoding options, the compile mode, the GPU count. Returns the folder."""
    from vla0.config import PolicyConfig
    from vla0.model.compile import check_compile_mode
    from vla0.policy.policy import check_decoding_options, resolve_policy_dir
    if not 0 <= num_gpus <= 1:
        raise ValueError(f"--policy-gpus {num_gpus}: a policy runs on one device; give 1, a fraction of one "
                         "(actors sharing a GPU), or 0 (the cluster's CPUs)")
    check_compile_mode(options.get("compile_mode"))
    folder = resolve_policy_dir(path).resolve()
    decoding = {k: options[k] for k in ("temperature", "fast_decode", "relaxed_k") if options.get(k) is not None}
    check_decoding_options(PolicyConfig.load(folder), **decoding)
    return folder


class RayPolicy:
    """A VLA0Policy in a Ray actor, called from the driver as if it were local."""

    def __init__(self, path: str, num_gpus: float = 1.0, num_cpus: float = 1.0, address: str | None = None,
                 **options):
        """options: VLA0Policy.from_pretrained's (ensemble, temperature, quantize, compile, ...)."""
        if num_cpus < 0:
            raise ValueError(f"RayPolicy: num_cpus must be >= 0, got {num_cpus}")
        folder = check_policy_actor(path, num_gpus, options)
        self._ray = connect(address)
        gpus = self._ray.cluster_resources().get("GPU", 0)
        if num_gpus > gpus:
            raise RuntimeError(f"--policy-gpus {num_gpus}: the Ray cluster has {gpus:g} GPUs "
                               f"({self._ray.cluster_resources()}); add a GPU node or use --policy-gpus 0")
        self._actor = None
        self._actor = start_actors(self._ray, _PolicyActor, 1, num_cpus, str(folder), num_gpus, num_cpus, options,
                                   num_gpus=num_gpus, hint="check --policy-gpus and --policy-cpus")[0]
        try:
            info = self._ray.get(self._actor.describe.remote())
        except Exception:
            self.close()
            raise
        self.name, self.config, self.temperature = info["name"], info["config"], info["temperature"]
        self.needs_images = info["needs_images"]
        self.malformed_outputs = 0
        self._needs: dict[int, bool] = {}  # env id -> will its next select_action read the observation

    def reset(self, env_ids=None) -> None:
        if env_ids is None:
            self._needs.clear()
        for i in env_ids or []:
            self._needs.pop(int(i), None)
        self._ray.get(self._actor.reset.remote(env_ids))

    def select_action(self, obs: dict, env_ids=None):
        if env_ids is not None and not any(self._needs.get(int(i), True) for i in env_ids):
            obs = {k: v for k, v in obs.items() if not k.startswith(IMAGE_PREFIX)}  # queued actions only
        actions, self.malformed_outputs, needs = self._ray.get(self._actor.select_action.remote(obs, env_ids))
        ids = range(len(actions)) if env_ids is None else env_ids
        self._needs.update({int(i): bool(n) for i, n in zip(ids, needs)})
        return actions

    def needs_observation(self, env_ids) -> list[bool]:
        if all(int(i) in self._needs for i in env_ids):
            return [self._needs[int(i)] for i in env_ids]
        return self._ray.get(self._actor.needs_observation.remote(env_ids))

    def close(self) -> None:
        close_actors(self._ray, [self._actor] if getattr(self, "_actor", None) else [])
        self._actor = None
