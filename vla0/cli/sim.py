"""`vla0 collect`, `vla0 eval`, `vla0 quickstart`: the commands that run environments."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

from vla0.model.compile import COMPILE_MODES
from vla0.model.quantize import QUANTIZE_MODES
from vla0.options import add_options, build, option
from vla0_client.executor import EXECUTION_MODES, check_latency


@dataclass
class CollectConfig:
    episodes: int = option(help="expert attempts per task (seeds seed..seed+N-1); failed attempts are dropped")
    out: str = option(help="dataset folder to write (LeRobotDataset v3.0)")
    tasks: list[str] | None = option(None, "comma-separated, e.g. reach-v3,drawer-open-v3 (under --suite: ids)")
    env: str = option("metaworld", "registered environment (vla0.envs)")
    suite: str | None = option(None, "a benchmark suite of the env (LIBERO: libero_object, ...): all its tasks, "
                               "or those --tasks names by id")
    seed: int = option(0, "episode e of a task uses seed + e")
    cameras: list[str] | None = option(None, "cameras to record (default: the env's default cameras)")
    image_size: list[int] | None = option(None, "HxW per camera (default: the env's, 64x64 for Meta-World)")
    max_episode_steps: int | None = option(None, "episode cap (default: the env's per-task cap)",
                                           aliases=("--max-steps",))
    workers: int = option(2, "env worker processes")
    keep_failures: bool = option(False, "also write the expert's failed episodes")
    visible_goal: bool = option(True, "Meta-World: a larger green goal marker (rendering only)")
    protocol: str | None = option(None, "LIBERO: evaluation protocol, published (default) or lerobot")
    layout: str | None = option(None, "LIBERO: 'perturbed' (default for collect: layouts evaluation never uses) "
                                "or 'official'")
    overwrite: bool = option(False, "replace an existing --out")
    progress: bool = option(True, "progress bar")


@dataclass
class EvalConfig:
    out: str = option(help="folder for results.json, success.png, videos/, report.html")
    policy: str | None = option(None, "policy or run folder, or 'random' / 'expert'")
    server: str | None = option(None, "evaluate a policy served by `vla0 serve` (ws://HOST:PORT)")
    api_key: str | None = option(None, "the server's API key")
    env: str = option("metaworld", "registered environment (vla0.envs)")
    tasks: list[str] | None = option(None, "comma-separated tasks (under --suite: ids, e.g. 0,3)")
    suite: str | None = option(None, "a benchmark suite of the env (LIBERO: libero_spatial, libero_object, "
                               "libero_goal, libero_10, libero_90): all its tasks, or those --tasks names")
    episodes: int | None = option(None, "held-out episodes per task (default: the env's protocol: LIBERO 50, "
                                  "one per official init state; others 20)", aliases=("--trials",))
    device: str = option("cpu", "where the policy runs: cpu, cuda, cuda:1 ...")
    dtype: str = option("float32", "the policy's weights and compute: float32, or bfloat16 (as VLA-0 "
                        "evaluates; half the memory)", choices=("float32", "bfloat16"))
    seed: int | None = option(None, "episode e uses seed + e (default: 10000, held out from demonstrations; "
                              "LIBERO: 0, trial i = official init state i)")
    cameras: list[str] | None = option(None, "default: the policy's cameras")
    image_size: list[int] | None = option(None, "rendered HxW (default: the size the policy was trained on)")
    ensemble: int | None = option(None, "override the policy's temporal ensembling window")
    n_action_steps: int | None = option(None, "override the steps executed per prediction",
                                        aliases=("--action-horizon",))
    execution: str = option("sync", "how chunks run while the model thinks: sync (the robot waits), async (switch "
                            "to the new chunk on arrival), async-ensemble (average arrived chunks), rtc (real-time "
                            "chunking)", choices=EXECUTION_MODES)
    latency_steps: int = option(0, "simulated inference latency in control steps: the env keeps stepping with "
                                "planned actions meanwhile (0: none, today's evaluation)")
    temperature: float = option(0.0, "0 = greedy; > 0 samples the grammar-masked distribution RL optimises")
    decoder: str = option("fast", "greedy decoding: the exact fast decoder or plain HF generate",
                          choices=("fast", "generate"))
    relaxed_k: int = option(0, "fast decoder: accept a drafted number within +-k bins of the model's (0 = exact)")
    quantize: str = option("none", "quantized weights: int8/nf4 (bitsandbytes), ao-int8/ao-int8-weight/ao-int4 "
                           "(torchao)", choices=QUANTIZE_MODES)
    quantize_vision: bool = option(False, "with --quantize, quantize the vision tower too")
    compile: str = option("none", "torch.compile the model's MLPs (and a flow head's expert) with this mode",
                          choices=COMPILE_MODES)
    max_episode_steps: int | None = option(None, "episode cap (default: the env's per-task cap)",
                                           aliases=("--max-steps",))
    videos: int = option(2, "rollout videos per task")
    workers: int = option(2, "env worker processes (with --ray: Ray actors)")
    batch_envs: int | None = option(None, "episodes run in lockstep (one batched model call)")
    ray: str | None = option(None, "Ray cluster address for the env slots (--ray [ADDRESS])", cli=False)
    policy_gpus: float | None = option(None, "with --ray: run the policy in a Ray actor of its own with this many "
                                       "GPUs (0: on the cluster's CPUs); default: in this process")
    policy_cpus: float = option(1.0, "with --policy-gpus: CPUs the policy's actor reserves")
    visible_goal: bool = option(True, "Meta-World: a larger green goal marker (must match the demonstrations)")
    protocol: str | None = option(None, "LIBERO: evaluation protocol, published (default: caps 220/280/300/520/400) "
                                  "or lerobot (280 on libero_spatial)")
    layout: str | None = option(None, "LIBERO: 'official' init states (default) or 'perturbed'")
    progress: bool = option(True, "progress bar")


def env_options(cfg, family) -> dict:
    """The options of a command's config that the environment declares (EnvFamily.options)."""
    return {k: getattr(cfg, k) for k in family.options if getattr(cfg, k, None) is not None}


def cmd_collect(args) -> None:
    from vla0.envs.base import get_env
    from vla0.envs.collect import collect
    cfg = build(CollectConfig, args)
    family = get_env(cfg.env)
    out = collect(family.select_tasks(cfg.tasks, cfg.suite), cfg.episodes, cfg.seed, Path(cfg.out), env=cfg.env,
                  cameras=cfg.cameras, image_size=cfg.image_size and tuple(cfg.image_size), num_workers=cfg.workers,
                  keep_failures=cfg.keep_failures, progress=cfg.progress, max_episode_steps=cfg.max_episode_steps,
                  overwrite=cfg.overwrite,
                  **env_options(cfg, family))
    print(f"wrote {out}")


def check_device(device: str) -> None:
    """A device torch knows and this machine has: one line now, not a CUDA error after loading."""
    import torch
    try:
        kind = torch.device(device).type
    except RuntimeError as e:
        raise ValueError(f"--device {device!r}: {e}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here (torch {torch.__version__})")


def load_eval_policy(cfg: EvalConfig, family):
    """A policy by name (random, expert), a remote server, or a trained policy/run folder, and the
    (cameras, camera shapes) it was trained on (None for the baselines)."""
    from vla0.eval.baselines import ExpertPolicy, RandomPolicy
    if cfg.server:
        from vla0.client import RemotePolicy
        remote = RemotePolicy(cfg.server, api_key=cfg.api_key, execution=cfg.execution,
                              latency_steps=cfg.latency_steps)
        return remote, (remote.metadata["cameras"], remote.metadata.get("camera_shapes", {}))
    if cfg.policy == "random":
        return RandomPolicy.for_env(family, seed=cfg.seed), None
    if cfg.policy == "expert":
        if not family.has_expert:
            raise ValueError(f"{family.name} has no scripted expert")
        return ExpertPolicy(), None
    import torch

    from vla0.policy.policy import VLA0Policy
    options = dict(ensemble=cfg.ensemble, n_action_steps=cfg.n_action_steps, execution=cfg.execution,
                   latency_steps=cfg.latency_steps, temperature=cfg.temperature, dtype=getattr(torch, cfg.dtype),
                   fast_decode=cfg.decoder == "fast", relaxed_k=cfg.relaxed_k, quantize=cfg.quantize,
                   quantize_vision=cfg.quantize_vision, compile_mode=cfg.compile)
    if cfg.policy_gpus is not None:
        from vla0.eval.ray_policy import RayPolicy
        policy = RayPolicy(cfg.policy, cfg.policy_gpus, cfg.policy_cpus, cfg.ray, **options)
    else:
        policy = VLA0Policy.from_pretrained(cfg.policy, device=cfg.device, **options)
    return policy, (policy.config.cameras, policy.config.camera_shapes)


def cmd_eval(args) -> None:
    from vla0.envs.base import get_env
    from vla0.eval.evaluate import evaluate
    cfg = build(EvalConfig, args)
    family = get_env(cfg.env)
    if cfg.episodes is None:
        cfg.episodes = family.eval_episodes
    check_device(cfg.device)
    tasks = family.select_tasks(cfg.tasks, cfg.suite)
    # every check that needs no model, before loading one
    family.check_tasks(tasks, cfg.episodes, "eval")
    family.check_options(env_options(cfg, family))
    first_seed = cfg.seed if cfg.seed is not None else family.eval_seed
    if first_seed is not None:
        family.check_seeds(first_seed, cfg.episodes, env_options(cfg, family))
    check_latency(cfg.latency_steps, None, cfg.execution)  # against the chunk size once the policy is read
    if cfg.ray is not None:
        from vla0.envs.ray_pool import require_ray
        require_ray()
    if not cfg.server and cfg.policy is None:
        raise ValueError("give --policy RUN_DIR|random|expert or --server ws://HOST:PORT")
    if cfg.policy_gpus is not None:
        if cfg.ray is None:
            raise ValueError(f"--policy-gpus {cfg.policy_gpus} places the policy on a Ray actor: add --ray [ADDRESS]")
        if cfg.server or cfg.policy in ("random", "expert"):
            raise ValueError(f"--policy-gpus applies to a trained policy folder, not to "
                             f"{cfg.server or cfg.policy!r}")
    policy, trained_on = load_eval_policy(cfg, family)
    cameras, size = cfg.cameras, cfg.image_size
    if trained_on is not None:  # render what the policy was trained on unless told otherwise
        trained_cameras, shapes = trained_on
        cameras = cameras or trained_cameras
        size = size or tuple(next(iter(shapes.values()), (64, 64)))
    try:
        results = evaluate(policy, tasks, cfg.episodes, cfg.seed, Path(cfg.out), env=cfg.env,
                           cameras=tuple(cameras or family.default_cameras[:1]), image_size=size and tuple(size),
                           policy_id=cfg.server or cfg.policy,
                           num_workers=cfg.workers, batch_envs=cfg.batch_envs,
                           max_episode_steps=cfg.max_episode_steps, videos=cfg.videos, progress=cfg.progress,
                           ray=cfg.ray, **env_options(cfg, family))
    finally:
        if hasattr(policy, "close"):
            policy.close()
    print(f"mean success rate {results['mean_success_rate']:.3f}; wrote {cfg.out}/results.json")


def cmd_quickstart(args) -> None:
    from vla0.quickstart import QuickstartConfig, run_quickstart
    cfg = build(QuickstartConfig, args)
    print(f"[quickstart] settings: {asdict(cfg)}")
    run_quickstart(cfg)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from vla0.envs.ray_pool import add_ray_argument
    from vla0.quickstart import QuickstartConfig

    p = sub.add_parser("collect", help="record scripted-expert demonstrations as a LeRobotDataset v3.0")
    add_options(p, CollectConfig)
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("eval", help="closed-loop success rate on held-out seeds")
    add_options(p, EvalConfig)
    add_ray_argument(p, "the environment slots")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("quickstart", help="collect, train and evaluate on Meta-World in ~20 min on a CPU")
    add_options(p, QuickstartConfig)
    p.set_defaults(func=cmd_quickstart)
