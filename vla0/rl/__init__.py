"""Online RL post-training (SimpleVLA-RL-style GRPO) for VLA-0 policies. See docs/rl.md.

Roles: RolloutWorker (weights + (task, seed) jobs -> trajectories), Learner (trajectories ->
new weights), RLTrainer (the loop behind `vla0 rl`). Imports are lazy: `import vla0.rl` is cheap.
"""

from __future__ import annotations

_EXPORTS = {
    "group_advantages": "vla0.rl.grpo",
    "dynamic_sampling": "vla0.rl.grpo",
    "clipped_surrogate": "vla0.rl.grpo",
    "RolloutJob": "vla0.rl.rollout",
    "RolloutSettings": "vla0.rl.rollout",
    "RolloutWorker": "vla0.rl.rollout",
    "Trajectory": "vla0.rl.rollout",
    "Learner": "vla0.rl.learner",
    "RLConfig": "vla0.rl.config",
    "RLTrainer": "vla0.rl.trainer",
    "train_rl": "vla0.rl.trainer",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vla0.rl' has no attribute {name!r}")
