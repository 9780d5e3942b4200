"""`vla0 rl`: GRPO post-training of a supervised policy in simulation (SimpleVLA-RL recipe)."""

from __future__ import annotations

import argparse

from vla0.options import add_options, build


def config_from_args(args: argparse.Namespace):
    from vla0.rl.trainer import RLConfig
    cfg = build(RLConfig, args)
    if cfg.ray is not None:
        from vla0.envs.ray_pool import require_ray
        require_ray()  # before loading any model
    return cfg


def run(args: argparse.Namespace) -> None:
    from vla0.rl.trainer import train_rl
    print(f"RL policy written to {train_rl(config_from_args(args))}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from vla0.envs.ray_pool import add_ray_argument
    from vla0.rl.trainer import RLConfig
    p = sub.add_parser(
        "rl", help="online RL (GRPO, 0/1 success reward) from a supervised policy",
        description="GRPO post-training in simulation: groups of rollouts from the same seed, advantage "
                    "(r - mean) / (std + 1e-6), clipped surrogate [1-0.2, 1+0.28], token-level mean, no KL, "
                    "dynamic sampling. Writes OUT/rl_log.jsonl, OUT/learning_curve.png, OUT/checkpoints/ and "
                    "OUT/policy (loads like any policy). See docs/rl.md.")
    add_options(p, RLConfig)
    add_ray_argument(p, "the rollout workers")
    p.set_defaults(func=run)
