"""Reference policies: random actions (floor) and the scripted expert (ceiling)."""
import numpy as np

from vla0.sim.instructions import INSTRUCTIONS

_TASK_OF = {v: k for k, v in INSTRUCTIONS.items()}


class RandomPolicy:
    name = "random"
    needs_images = False

    def __init__(self, action_dim: int = 4, seed: int = 0):
        self.action_dim = action_dim
        self.rng = np.random.default_rng(seed)
        self.malformed_outputs = 0

    def reset(self, env_ids: list[int] | None = None) -> None:
        pass

    def select_action(self, obs: dict, env_ids: list[int]) -> np.ndarray:
        return self.rng.uniform(-1, 1, (len(env_ids), self.action_dim)).astype(np.float32)


class ExpertPolicy:
    """Meta-World's scripted policies, fed the full state (observation.environment_state)."""

    name = "expert"
    needs_images = False

    def __init__(self):
        from metaworld.policies import ENV_POLICY_MAP

        from vla0.sim.metaworld_env import quiet_expert

        self._quiet = quiet_expert
        self._map = ENV_POLICY_MAP
        self._experts = {}
        self.malformed_outputs = 0

    def reset(self, env_ids: list[int] | None = None) -> None:
        pass  # the scripted experts are stateless

    def select_action(self, obs: dict, env_ids: list[int]) -> np.ndarray:
        names = obs.get("task_name") or [_TASK_OF.get(t) for t in obs["task"]]
        out = []
        for name, state in zip(names, obs["observation.environment_state"]):
            if name not in self._map:
                raise ValueError(f"ExpertPolicy: no scripted expert for task {name!r}")
            expert = self._experts.setdefault(name, self._map[name]())
            out.append(np.clip(self._quiet(expert, np.asarray(state, np.float64)), -1, 1))
        return np.asarray(out, np.float32)
