"""Environments behind one interface, by name: `get_env("metaworld")` returns its EnvFamily.

Nothing outside an adapter knows which simulator it drives: collection, evaluation and RL
rollouts see an EnvFamily (tasks, instructions, cameras, action dimension and bounds, step caps,
whether a scripted expert exists) and Env objects (reset / step with LeRobot observation keys,
success in `info`). Adapters are imported lazily: a simulator loads only when it is used.
"""

from vla0.envs.base import Env, EnvFamily, EnvSpec, env_names, get_env, register

__all__ = ["Env", "EnvFamily", "EnvSpec", "env_names", "get_env", "register"]
