"""The environment interface, the spec of one environment to build, and the registry."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class Env(Protocol):
    """One environment instance. Observations are dicts with LeRobot keys:
    `observation.images.<camera>` (uint8 (h, w, 3), upright), `observation.state`, `task` (the
    instruction); adapters may add privileged keys (e.g. `observation.environment_state`)."""
    spec: "EnvSpec"

    def reset(self, seed: int) -> tuple[dict, dict]: ...

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict, float, bool, bool, dict]:
        """-> (obs, reward, terminated (success), truncated (step cap), info with 'success').
        render=False leaves the camera images out of obs (rendering is most of a step)."""

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action from the simulator's privileged state (if it has one)."""

    def close(self) -> None: ...


def checked_action(task: str, started: bool, action, action_dim: int) -> np.ndarray:
    """An action an adapter may execute: only after reset, exactly action_dim values, NaN and
    infinities replaced, clipped to [-1, 1] (both adapters' normalised action range)."""
    if not started:
        raise RuntimeError(f"{task}: call reset(seed) before step()")
    action = np.asarray(action, dtype=np.float32).reshape(-1)
    if action.shape != (action_dim,):
        raise ValueError(f"{task}: action must have {action_dim} values, got shape {action.shape}")
    return np.clip(np.nan_to_num(action), -1.0, 1.0)


class EnvFamily:
    """A simulator adapter's facts and factory; subclasses fill these in."""
    name: str = ""
    fps: int = 0
    action_dim: int = 0
    action_low: np.ndarray
    action_high: np.ndarray
    cameras: tuple[str, ...] = ()  # cameras it can render
    default_cameras: tuple[str, ...] = ()
    robot_type: str = ""
    state_names: list[str] = []
    action_names: list[str] = []
    extra_features: dict[str, int] = {}  # further vector observations collect records (key -> length)
    has_expert: bool = False
    options: dict = {}  # adapter-specific EnvSpec options and their defaults
    training_options: dict = {}  # option defaults for episodes that train (demonstrations, RL rollouts), e.g.
    # LIBERO's perturbed layouts, so that evaluation's layouts stay held out
    eval_seed: int | None = None  # where evaluation seeds start (None: vla0.eval.evaluate.EVAL_SEED)
    eval_episodes: int = 20  # `vla0 eval`'s episodes per task unless told (a benchmark's protocol may fix it)
    default_image_size: tuple[int, int] = (64, 64)

    def suites(self) -> dict[str, list[str]]:
        """Named groups of tasks (a benchmark's suites), if the env has any."""
        return {}

    def select_tasks(self, tasks: list[str] | None, suite: str | None = None) -> list[str]:
        """The tasks a command names: `tasks`, or every task of `suite`; under a suite a task may
        also be named by its id within the suite (e.g. "3" for "libero_object/3")."""
        if suite is None:
            if not tasks:
                suites = f" or --suite ({', '.join(self.suites())})" if self.suites() else ""
                raise ValueError(f"give --tasks{suites}")
            return list(tasks)
        suites = self.suites()
        if suite not in suites:
            valid = ", ".join(suites) if suites else "none"
            raise ValueError(f"unknown {self.name} suite {suite!r}; valid suites: {valid}")
        if not tasks:
            return list(suites[suite])
        return [t if t in suites[suite] else f"{suite}/{t}" for t in tasks]

    def check_options(self, options: dict) -> None:
        """Reject bad option values (names are checked by EnvSpec)."""

    def check_seeds(self, seed: int, episodes: int, options: dict) -> None:
        """Reject episode seeds the env cannot start from (e.g. more trials than init states)."""

    def check_expert(self, tasks: list[str], who: str) -> None:
        if not self.has_expert:
            raise ValueError(f"{who}: {self.name} has no scripted expert")

    def task_fields(self, task: str) -> dict:
        """What results.json records about a task beyond its name (e.g. suite and task id)."""
        return {}

    def episode_fields(self, task: str, seed: int, options: dict) -> dict:
        """What results.json records about an episode beyond task and seed (e.g. an init state)."""
        return {}

    def tasks(self) -> list[str]:
        raise NotImplementedError

    def instruction(self, task: str) -> str:
        raise NotImplementedError

    def max_episode_steps(self, task: str) -> int:
        raise NotImplementedError

    def make(self, spec: "EnvSpec") -> Env:
        raise NotImplementedError

    # -- checks, shared by every adapter --------------------------------------------------------
    def check_task(self, task: str) -> None:
        if task not in self.tasks():
            raise ValueError(f"unknown {self.name} task {task!r}; valid tasks: {', '.join(self.tasks())}")

    def check_tasks(self, tasks: list[str], episodes: int, who: str) -> None:
        """The checks every multi-task run (collect, evaluate, RL) makes before it starts any env."""
        if not tasks:
            raise ValueError(f"{who}: no tasks given")
        for t in tasks:
            self.check_task(t)
        if episodes < 1:
            raise ValueError(f"{who}: episodes must be >= 1, got {episodes}")

    def check_cameras(self, cameras) -> None:
        bad = [c for c in cameras if c not in self.cameras]
        if bad:
            raise ValueError(f"unknown {self.name} camera(s) {bad}; valid: {', '.join(self.cameras)}")

    def check_action_dim(self, action_dim: int, who: str) -> None:
        if action_dim != self.action_dim:
            raise ValueError(f"{who} writes {action_dim}-dimensional actions; {self.name} takes {self.action_dim}")

    def spec(self, task: str, cameras=(), image_size=(64, 64), max_episode_steps: int | None = None,
             **options) -> "EnvSpec":
        return EnvSpec(self.name, task, tuple(cameras), tuple(image_size), max_episode_steps, options)


@dataclass
class EnvSpec:
    """What to build: which environment and task, what to render, when to stop. Equal specs can
    reuse one built env (building costs about a second)."""
    env: str  # registered name
    task: str
    cameras: tuple[str, ...] = ()  # () renders nothing
    image_size: tuple[int, int] = (64, 64)  # (height, width) per camera
    max_episode_steps: int | None = None  # None: the family's cap for the task
    options: dict = field(default_factory=dict)  # adapter-specific (EnvFamily.options)

    def __post_init__(self):
        family = get_env(self.env)
        family.check_task(self.task)
        self.cameras = tuple(self.cameras)
        family.check_cameras(self.cameras)
        self.image_size = tuple(int(x) for x in self.image_size)
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ValueError(f"image_size must be (height, width) >= 8 px, got {self.image_size}")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {self.max_episode_steps}")
        self.max_episode_steps = self.max_episode_steps or family.max_episode_steps(self.task)
        unknown = sorted(set(self.options) - set(family.options))
        if unknown:
            raise ValueError(f"unknown {self.env} option(s) {unknown}; it takes {sorted(family.options)}")
        self.options = {**family.options, **self.options}

    @property
    def family(self) -> EnvFamily:
        return get_env(self.env)


# name -> "module:Class"; adapters load on first use
_REGISTRY: dict[str, str] = {"metaworld": "vla0.envs.metaworld:MetaWorld", "libero": "vla0.envs.libero:Libero"}
_LOADED: dict[str, EnvFamily] = {}


def register(name: str, target: str) -> None:
    """Add an adapter: target is "package.module:FamilyClass" (imported when first used)."""
    _REGISTRY[name] = target
    _LOADED.pop(name, None)


def env_names() -> list[str]:
    return sorted(_REGISTRY)


def get_env(name: str) -> EnvFamily:
    if name not in _REGISTRY:
        raise ValueError(f"unknown env {name!r}; registered environments: {', '.join(env_names())}")
    if name not in _LOADED:
        module, cls = _REGISTRY[name].split(":")
        try:
            _LOADED[name] = getattr(importlib.import_module(module), cls)()
        except ModuleNotFoundError as e:  # simulators are an extra: a training box need not have them
            raise ValueError(f"env {name!r} needs the {e.name} package: pip install 'vla0[sim]'") from None
    return _LOADED[name]
