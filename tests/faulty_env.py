"""A fault-injecting environment for the crash tests: its worker process dies (os._exit, as a
simulator segfault would) at step `crash_at` of the first episode that reaches it, once per
`marker` file; every episode succeeds after `success_at` steps."""

import os
from pathlib import Path

import numpy as np

from vla0.envs import base
from vla0.envs.base import EnvFamily, EnvSpec, register

NAME = "faulty"


class FaultyFamily(EnvFamily):
    name = NAME
    fps = 10
    action_dim = 4
    action_low = np.full(4, -1.0, np.float32)
    action_high = np.full(4, 1.0, np.float32)
    cameras = ("corner3",)
    default_cameras = ("corner3",)
    options = {"marker": "", "crash_at": 2, "success_at": 3}

    def tasks(self):
        return ["reach-v3"]

    def instruction(self, task):
        return "reach the goal"

    def max_episode_steps(self, task):
        return 5

    def make(self, spec: EnvSpec):
        return FaultyEnv(spec)


class FaultyEnv:
    def __init__(self, spec: EnvSpec):
        self.spec, self.steps, self.seed = spec, 0, 0

    def _obs(self, render=True):
        obs = {"observation.state": np.full(4, self.steps, np.float32), "task": "reach the goal"}
        if render and self.spec.cameras:
            h, w = self.spec.image_size
            obs["observation.images.corner3"] = np.random.default_rng(self.seed).integers(0, 255, (h, w, 3), np.uint8)
        return obs

    def reset(self, seed):
        self.steps, self.seed = 0, int(seed)
        return self._obs(), {"seed": seed}

    def step(self, action, render=True):
        self.steps += 1
        marker = Path(self.spec.options["marker"])
        if self.steps == self.spec.options["crash_at"] and self.spec.options["marker"] and not marker.exists():
            marker.write_text(f"seed {self.seed}")
            os._exit(3)  # the whole worker process goes, as in a segfault
        ok = self.steps >= self.spec.options["success_at"]
        return self._obs(render), 0.0, ok, False, {"success": ok, "steps": self.steps}

    def expert_action(self):
        return np.zeros(4, np.float32)

    def close(self):
        pass


def use_faulty_env() -> None:
    register(NAME, "faulty_env:FaultyFamily")


def forget_faulty_env() -> None:
    base._REGISTRY.pop(NAME, None)
    base._LOADED.pop(NAME, None)
