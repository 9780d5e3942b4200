"""Closed-loop evaluation: run a policy in a registered environment, report success rates.

Episode e (0-based) of each task uses seed `seed + e`; EVAL_SEED (10_000) is far from
collection seeds (0 upward), and each seed draws fresh positions, so evaluation positions were
never seen in training. An env may start elsewhere (EnvFamily.eval_seed): LIBERO's seeds are its
official init-state indices, 0..49. Each task's episodes run through the episode runner (vla0.envs.runner)
in lockstep slots of an EnvPool.
"""

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from vla0.envs.base import get_env
from vla0.envs.ray_pool import open_pool
from vla0.envs.runner import EpisodeJob, EpisodeRunner
from vla0.eval.report import format_table, plot_results, save_rollout_video, wilson_interval, write_report
from vla0.io import write_json_atomic

EVAL_SEED = 10_000
VIDEO_SLOWDOWN = 4  # short episodes stay watchable


class Policy(Protocol):
    name: str
    malformed_outputs: int  # outputs the policy could not parse; read after evaluation
    needs_images: bool  # False -> envs render nothing (much faster)

    def reset(self, env_ids: list[int] | None = None) -> None: ...

    def select_action(self, obs: dict, env_ids: list[int]) -> np.ndarray: ...

    # Optional: needs_observation(env_ids) -> list[bool], False where the next select_action will
    # not look at that env's observation (actions queued from a chunk); those frames are not rendered.
    # Optional: acts_in_env = True for the environment's scripted expert (vla0.envs.runner.EnvExpert).


EPISODES_FILE = "episodes.jsonl"  # one finished episode per line: what a rerun continues from
SETTINGS_FILE = "eval_settings.json"


def _finished_episodes(out: Path, settings: dict) -> dict[tuple[str, int], dict]:
    """Episodes an earlier run with the same settings finished, by (task, seed). A run killed
    mid-write leaves at most a partial last line, which is ignored (that episode runs again)."""
    saved, path = out / SETTINGS_FILE, out / EPISODES_FILE
    if not saved.exists():
        path.unlink(missing_ok=True)
        return {}
    before = json.loads(saved.read_text())
    if before != settings:
        diff = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        raise ValueError(f"evaluate: {out} holds episodes of a different evaluation (differs in {', '.join(diff)}); "
                         f"use another --out or remove {saved}")
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[(rec["task"], rec["seed"])] = rec
    return done


def _append(path: Path, rec: dict) -> None:
    """One line per finished episode, flushed to disk before the next one runs. A line is
    written with one write() in append mode, so a kill leaves whole lines and at most one
    partial last line."""
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _summary(records: list[dict]) -> dict:
    n, successes = len(records), sum(r["success"] for r in records)
    return {"episodes": n, "successes": successes, "success_rate": successes / n,
            "ci95": list(wilson_interval(successes, n)),
            "mean_steps": float(np.mean([r["steps"] for r in records]))}


def _runtime(policy) -> dict:
    """Where and in what precision a local policy's model runs (None for baselines and servers)."""
    model = getattr(getattr(policy, "vlm", None), "model", None)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.") if model is not None else None
    device = getattr(policy, "device", None)
    return {"device": str(device) if device is not None else None, "dtype": dtype}


def _smoothness(records: list[dict]) -> dict:
    """Means over a task's episodes of what the chunk executor measured (when it did)."""
    keys = ("mean_boundary_jump", "total_jerk", "stall_steps")
    if not records or not all(k in r for r in records for k in keys):
        return {}
    return {k: float(np.mean([r[k] for r in records])) for k in keys}


def evaluate(
    policy: Policy,
    tasks: list[str],
    episodes: int,
    seed: int | None = None,
    out: Path = Path("eval_out"),
    env: str = "metaworld",
    cameras: tuple[str, ...] | None = None,
    image_size: tuple[int, int] | None = None,
    num_workers: int = 2,
    batch_envs: int | None = None,
    max_episode_steps: int | None = None,
    videos: int = 2,
    progress: bool = True,
    policy_id: str | None = None,
    ray: str | None = None,
    **env_options,
) -> dict:
    """Evaluate `policy` on `episodes` seeds per task; writes out/results.json, success.png, videos/, report.html.

    Resumable: each finished episode is appended to out/episodes.jsonl; a rerun with the same
    settings (out/eval_settings.json: policy and its config, policy_id (the CLI passes the
    policy's folder or server), env, cameras, size, options) runs only the episodes still
    missing, and may ask for more tasks or episodes than the first run.
    ray: run the env slots on Ray actors (num_workers of them) at this address ("": $RAY_ADDRESS
    or a local instance); None: local worker processes. The policy runs here, unless it is a
    vla0.eval.ray_policy.RayPolicy (its own actor)."""
    family = get_env(env)
    tasks = list(tasks)
    family.check_tasks(tasks, episodes, "evaluate")
    seed = (family.eval_seed if family.eval_seed is not None else EVAL_SEED) if seed is None else seed
    image_size = tuple(image_size or family.default_image_size)
    family.check_options(env_options)
    family.check_seeds(seed, episodes, env_options)
    if getattr(policy, "acts_in_env", False):
        family.check_expert(tasks, "evaluate")
    for attr in ("name", "reset", "needs_images"):
        if not hasattr(policy, attr):
            raise ValueError(f"evaluate: policy {type(policy).__name__} lacks {attr!r} (see vla0.eval.evaluate.Policy)")
    config = config_obj = getattr(policy, "config", None)
    # a local policy's config, or what a served policy announced on connect (vla0.client)
    action_dim = getattr(config, "action_dim", None) or (getattr(policy, "metadata", None) or {}).get("action_dim")
    if action_dim is not None:
        family.check_action_dim(action_dim, f"policy {policy.name!r}")
    # a flow expert trained with --expert-inputs: the env must give them (a served one announces them)
    inputs = getattr(policy, "expert_inputs", None) or (getattr(policy, "metadata", None) or {}).get("expert_inputs", [])
    given = (["observation.state"] if family.state_names else []) + list(family.extra_features)
    if [k for k in inputs if k not in given]:
        raise ValueError(f"evaluate: policy {policy.name!r} reads {[k for k in inputs if k not in given]} (its "
                         f"expert's inputs), which {env} observations lack; they give {given}")
    cameras = tuple(family.default_cameras if cameras is None else cameras)
    family.check_cameras(cameras)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [seed + e for e in range(episodes)]
    batch = batch_envs or min(episodes, max(8, num_workers))
    videos = videos if cameras else 0
    # Envs render only when someone looks: the policy, or the first `videos` episodes.
    full = {t: family.spec(t, cameras, image_size, max_episode_steps, **env_options) for t in tasks}
    blind = {t: family.spec(t, (), image_size, max_episode_steps, **env_options) for t in tasks}
    options = full[tasks[0]].options
    config = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None
    settings = {"policy": policy.name, "policy_id": policy_id, "policy_config": config, **_runtime(policy), "env": env,
                "cameras": list(cameras), "image_size": list(image_size),
                "env_options": options, "max_episode_steps": max_episode_steps,
                "temperature": getattr(policy, "temperature", None)}
    if config is None and hasattr(policy, "execution"):  # a served policy executes chunks here
        settings.update(execution=policy.execution, latency_steps=policy.latency_steps)
    settings = json.loads(json.dumps(settings))  # as it reads back (tuples become lists)
    finished = _finished_episodes(out, settings)
    write_json_atomic(settings, out / SETTINGS_FILE)

    per_task, records = {}, []
    t0 = time.time()
    todo = sum((t, s) not in finished for t in tasks for s in seeds)
    bar = tqdm(total=todo, desc=f"eval {policy.name}", unit="ep", disable=not progress)
    with open_pool(num_workers, ray) as pool:
        runner = EpisodeRunner(pool, batch, family.action_dim)
        for task in tasks:
            jobs = [EpisodeJob(full[task] if (policy.needs_images or e < videos) else blind[task], seeds[e],
                               record=e < videos) for e in range(episodes) if (task, seeds[e]) not in finished]
            malformed_before = int(getattr(policy, "malformed_outputs", 0))

            def on_end(res, task=task):
                rec = {"task": task, "episode": res.job.seed - seed, "seed": res.job.seed,
                       **family.episode_fields(task, res.job.seed, options), "success": res.success,
                       "steps": res.steps}
                if hasattr(policy, "episode_stats"):  # smoothness of what was executed (chunk executor)
                    rec.update(policy.episode_stats(res.slot))
                if res.observations:
                    name = f"{task.replace('/', '_')}_seed{res.job.seed}_{'success' if res.success else 'fail'}.mp4"
                    frames = [{k: v for k, v in o.items() if k.startswith("observation.images.")}
                              for o in res.observations]
                    if save_rollout_video(frames, out / "videos" / name, fps=family.fps // VIDEO_SLOWDOWN):
                        rec["video"] = f"videos/{name}"
                    res.observations, res.actions = [], []
                _append(out / EPISODES_FILE, rec)
                finished[(task, res.job.seed)] = rec
                bar.update(1)

            if jobs:
                runner.run(jobs, policy, on_end=on_end)
            task_records = [finished[(task, s)] for s in seeds]
            per_task[task] = {**_summary(task_records), **_smoothness(task_records),
                              "malformed_outputs": int(getattr(policy, "malformed_outputs", 0)) - malformed_before,
                              **family.task_fields(task)}
            records += task_records
    bar.close()
    wall = time.time() - t0
    suites = {}
    for name, members in family.suites().items():
        chosen = [r for r in records if r["task"] in set(members)]
        if chosen:
            suites[name] = {**_summary(chosen), "tasks": sorted({r["task"] for r in chosen}, key=tasks.index),
                            "mean_task_success_rate": float(np.mean([per_task[t]["success_rate"] for t in members
                                                                      if t in per_task]))}
    results = {
        "tasks": per_task,
        **({"suites": suites} if suites else {}),
        "mean_success_rate": float(np.mean([r["success_rate"] for r in per_task.values()])),
        "policy": policy.name,
        **_runtime(policy),
        "protocol": options.get("protocol"),
        # how chunks were executed: vla0_client.executor (sync and 0 for policies without chunks)
        "execution": getattr(config_obj, "execution", None) or getattr(policy, "execution", "sync"),
        "latency_steps": int(getattr(config_obj, "latency_steps", None) or getattr(policy, "latency_steps", 0)),
        "env": env,
        "seed": seed,
        "episodes_per_task": episodes,
        "cameras": list(cameras),
        "image_size": list(image_size),
        "env_options": options,
        "max_episode_steps": {t: full[t].max_episode_steps for t in tasks},
        "resumed_episodes": len(records) - todo,
        "wall_seconds": round(wall, 2),
        "episodes_per_minute": round(todo / wall * 60, 2) if todo else None,
        "episodes": records,
    }
    write_json_atomic(results, out / "results.json")
    plot_results(results, out / "success.png")
    write_report(results, out)
    if progress:
        print(format_table(results))
    return results
