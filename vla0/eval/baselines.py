"""Reference policies: random actions (floor) and the environment's scripted expert (ceiling)."""

import numpy as np

from vla0.envs.runner import EnvExpert

ExpertPolicy = EnvExpert  # the expert acts from the simulator's privileged state, inside the env workers


class RandomPolicy:
    """Uniform actions within the environment's action bounds."""
    name = "random"
    needs_images = False

    def __init__(self, low, high, seed: int = 0):
        self.low = np.asarray(low, np.float64)
        self.high = np.asarray(high, np.float64)
        self.rng = np.random.default_rng(seed)
        self.malformed_outputs = 0

    @classmethod
    def for_env(cls, family, seed: int = 0) -> "RandomPolicy":
        return cls(family.action_low, family.action_high, seed)

    def reset(self, env_ids=None) -> None:
        pass

    def select_action(self, obs: dict, env_ids: list[int]) -> np.ndarray:
        return self.rng.uniform(self.low, self.high, (len(env_ids), len(self.low))).astype(np.float32)
