"""Simulation subcommands: `vla0 collect`, `vla0 eval`, `vla0 quickstart`."""

from __future__ import annotations

import argparse
from pathlib import Path


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _size(text: str) -> tuple[int, int]:
    parts = [int(x) for x in text.replace("x", ",").split(",") if x]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _check_env(name: str) -> None:
    if name != "metaworld":
        raise ValueError(f"unknown --env {name!r}; available: metaworld (LIBERO needs hub assets, see README)")


def cmd_collect(args) -> None:
    _check_env(args.env)
    from vla0.sim.collect import collect
    out = collect(args.tasks, args.episodes, args.seed, Path(args.out), cameras=tuple(args.cameras),
                  image_size=args.image_size, num_workers=args.workers, keep_failures=args.keep_failures,
                  progress=not args.no_progress, overwrite=args.overwrite, visible_goal=args.visible_goal)
    print(f"wrote {out}")


def load_eval_policy(args):
    """A policy by name (random, expert), a remote server, or a trained policy/run folder."""
    from vla0.eval.baselines import ExpertPolicy, RandomPolicy
    if args.server:
        from vla0.client import RemotePolicy
        remote = RemotePolicy(args.server, api_key=args.api_key)
        return remote, (remote.metadata["cameras"], remote.metadata.get("camera_shapes", {}))
    if args.policy == "random":
        return RandomPolicy(seed=args.seed), None
    if args.policy == "expert":
        return ExpertPolicy(), None
    from vla0.policy.policy import VLA0Policy
    policy = VLA0Policy.from_pretrained(args.policy, ensemble=args.ensemble, action_horizon=args.action_horizon,
                                        temperature=args.temperature, fast_decode=args.decoder == "fast",
                                        relaxed_k=args.relaxed_k)
    return policy, (policy.config.cameras, policy.config.extra.get("camera_shapes", {}))


def cmd_eval(args) -> None:
    _check_env(args.env)
    from vla0.eval.evaluate import evaluate
    from vla0.sim.metaworld_env import check_task
    for task in args.tasks:  # before loading any model
        check_task(task)
    if not args.server and args.policy is None:
        raise ValueError("give --policy RUN_DIR|random|expert or --server ws://HOST:PORT")
    policy, trained_on = load_eval_policy(args)
    cameras, size = args.cameras, args.image_size
    if trained_on is not None:  # render what the policy was trained on unless told otherwise
        trained_cameras, shapes = trained_on
        cameras = cameras or trained_cameras
        size = size or tuple(next(iter(shapes.values()), (64, 64)))
    try:
        results = evaluate(policy, args.tasks, args.episodes, args.seed, Path(args.out),
                           cameras=tuple(cameras or ("corner3",)), image_size=tuple(size or (64, 64)),
                           num_workers=args.workers, batch_envs=args.batch_envs, max_steps=args.max_steps,
                           videos=args.videos, progress=not args.no_progress, visible_goal=args.visible_goal)
    finally:
        if hasattr(policy, "close"):
            policy.close()
    print(f"mean success rate {results['mean_success_rate']:.3f}; wrote {args.out}/results.json")


def cmd_quickstart(args) -> None:
    from vla0.quickstart import QuickstartConfig, run_quickstart
    cfg = QuickstartConfig()
    if args.tasks:
        cfg.tasks = args.tasks
    for key in ("steps", "demos_per_task", "eval_episodes"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    run_quickstart(Path(args.out), cfg, progress=not args.no_progress)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="record scripted-expert demonstrations as a LeRobotDataset v3.0")
    p.add_argument("--env", default="metaworld")
    p.add_argument("--tasks", type=_names, required=True, help="comma-separated, e.g. reach-v3,drawer-open-v3")
    p.add_argument("--episodes", type=int, required=True,
                   help="expert attempts per task (seeds seed..seed+N-1); failed attempts are dropped")
    p.add_argument("--seed", type=int, default=0, help="episode e of a task uses seed + e")
    p.add_argument("--out", required=True)
    p.add_argument("--cameras", type=_names, default=["corner3", "topview"])
    p.add_argument("--image-size", type=_size, default=(64, 64), help="HxW per camera")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--keep-failures", action="store_true")
    p.add_argument("--no-visible-goal", dest="visible_goal", action="store_false",
                   help="keep Meta-World's tiny goal marker instead of a larger green one (rendering only)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("eval", help="closed-loop success rate on held-out seeds")
    p.add_argument("--policy", help="policy or run folder, or 'random' / 'expert'")
    p.add_argument("--server", help="evaluate a policy served by `vla0 serve` (ws://HOST:PORT)")
    p.add_argument("--api-key")
    p.add_argument("--env", default="metaworld")
    p.add_argument("--tasks", type=_names, required=True)
    p.add_argument("--episodes", type=int, default=20, help="per task")
    p.add_argument("--seed", type=int, default=10_000, help="episode e uses seed + e; demos use 0.. by default")
    p.add_argument("--out", required=True)
    p.add_argument("--cameras", type=_names, default=None, help="default: the policy's cameras")
    p.add_argument("--image-size", type=_size, default=None, help="default: the size the policy was trained on")
    p.add_argument("--ensemble", type=int, default=None, help="override the policy's temporal ensembling window")
    p.add_argument("--action-horizon", type=int, default=None, help="override steps executed per prediction")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default)")
    p.add_argument("--decoder", choices=["fast", "generate"], default="fast",
                   help="greedy decoding: the exact fast decoder (default) or plain HF generate")
    p.add_argument("--relaxed-k", type=int, default=0,
                   help="fast decoder: accept a drafted number within +-k bins of the model's (0 = exact)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--videos", type=int, default=2, help="rollout videos per task")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-envs", type=int, default=None, help="episodes run in lockstep (one batched model call)")
    p.add_argument("--no-visible-goal", dest="visible_goal", action="store_false",
                   help="keep Meta-World's tiny goal marker (must match how the demos were collected)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("quickstart", help="collect, train and evaluate on Meta-World in ~20 min on a CPU")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--tasks", type=_names, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--demos-per-task", type=int, default=None)
    p.add_argument("--eval-episodes", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_quickstart)
