"""`vla0 rl`: GRPO post-training of a supervised policy in simulation (SimpleVLA-RL recipe).

Wired into the `vla0` command by `add_parser(subparsers)`:
`vla0 rl --policy ... --tasks ... --out ...`.
"""

from __future__ import annotations

import argparse


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _size(text: str) -> list[int]:
    parts = [int(x) for x in text.replace("x", ",").split(",") if x]
    return [parts[0], parts[0]] if len(parts) == 1 else parts[:2]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "rl", help="online RL (GRPO, 0/1 success reward) from a supervised policy",
        description="GRPO post-training in simulation: groups of rollouts from the same seed, advantage "
                    "(r - mean) / (std + 1e-6), clipped surrogate [1-0.2, 1+0.28], token-level mean, no KL, "
                    "dynamic sampling. Writes OUT/rl_log.jsonl, OUT/learning_curve.png, OUT/checkpoints/ and "
                    "OUT/policy (loads like any policy). See docs/rl.md.")
    p.add_argument("--policy", required=True, help="supervised policy or run folder to start from")
    p.add_argument("--env", default="metaworld")
    p.add_argument("--tasks", type=_names, required=True, help="comma-separated, e.g. reach-v3,drawer-open-v3")
    p.add_argument("--out", required=True, help="RL run folder")
    g = p.add_argument_group("GRPO")
    g.add_argument("--group-size", type=int, default=8, help="rollouts per group (same task and seed)")
    g.add_argument("--groups-per-batch", type=int, default=64, help="groups with mixed outcomes per update")
    g.add_argument("--max-groups-factor", type=float, default=4.0,
                   help="dynamic sampling tries at most this many x groups-per-batch groups per iteration")
    g.add_argument("--temperature", type=float, default=1.6, help="rollout sampling temperature")
    g.add_argument("--lr", type=float, default=5e-6)
    g.add_argument("--warmup-steps", type=int, default=0,
                   help="optimizer steps of linear lr warm-up (0 = constant lr, the recipe)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--clip-low", type=float, default=0.2)
    g.add_argument("--clip-high", type=float, default=0.28)
    g.add_argument("--epochs", type=int, default=1, help="passes over each batch")
    g.add_argument("--minibatches", type=int, default=1, help="optimizer steps per pass")
    g.add_argument("--micro-batch", type=int, default=16, help="policy calls per forward/backward (memory)")
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--loss-tokens", choices=["all", "executed"], default="all",
                   help="'all' action tokens (recipe) or only the numbers that reach the env "
                        "(first min(H, ensemble x action-horizon) steps of each chunk)")
    g.add_argument("--loss-agg", choices=["token-mean", "trajectory-mean"], default="token-mean",
                   help="token-mean (recipe): long trajectories weigh more; trajectory-mean: each weighs the same")
    g.add_argument("--lora-rank", type=int, default=0, help="0 = full fine-tuning")
    g.add_argument("--lora-alpha", type=int, default=16)
    g.add_argument("--lora-targets", type=_names, default=["q_proj", "k_proj", "v_proj", "o_proj"])
    r = p.add_argument_group("rollouts")
    r.add_argument("--action-horizon", type=int, default=None,
                   help="steps executed per sampled chunk (default: the policy's own setting)")
    r.add_argument("--ensemble", type=int, default=1, help="temporal ensembling during rollouts (1 = off)")
    r.add_argument("--max-steps", type=int, default=None,
                   help="rollout episode cap (default: per-task table); a cap near the successes' length "
                        "saves the time failures spend running out the clock")
    r.add_argument("--batch-envs", type=int, default=16, help="episodes in lockstep (one batched model call)")
    r.add_argument("--workers", type=int, default=2, help="env worker processes")
    r.add_argument("--cameras", type=_names, default=None, help="default: the policy's cameras")
    r.add_argument("--image-size", type=_size, default=None, help="rendered HxW (default: as trained)")
    r.add_argument("--no-visible-goal", dest="visible_goal", action="store_false")
    r.add_argument("--rollout-seed", type=int, default=100_000, help="group g starts from seed rollout-seed + g")
    s = p.add_argument_group("schedule")
    s.add_argument("--iterations", type=int, default=None)
    s.add_argument("--minutes", type=float, default=None, help="wall-clock budget (checked between iterations)")
    s.add_argument("--eval-every", type=int, default=0, help="held-out evaluation every k iterations (0 = off)")
    s.add_argument("--eval-episodes", type=int, default=10, help="per task")
    s.add_argument("--eval-seed", type=int, default=10_000)
    s.add_argument("--eval-max-steps", type=int, default=None,
                   help="held-out episode cap (default: per-task table, as `vla0 eval`)")
    s.add_argument("--save-every", type=int, default=1, help="checkpoint every k iterations")
    s.add_argument("--keep-checkpoints", type=int, default=2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    s.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    s.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace):
    from vla0.rl.trainer import RLConfig
    fields = RLConfig.__dataclass_fields__
    return RLConfig(**{k: v for k, v in vars(args).items() if k in fields})


def run(args: argparse.Namespace) -> None:
    from vla0.rl.trainer import train_rl
    print(f"RL policy written to {train_rl(config_from_args(args))}")
