"""Closed-loop evaluation: run a policy in Meta-World envs, report success rates.

Episode e (0-based) of each task uses seed `seed + e`; EVAL_SEED (10_000) is
far from collection seeds (0 upward), and each seed draws fresh positions,
so evaluation positions were never seen in training. Envs run in lockstep
over an EnvPool; when an episode ends its slot starts the next one at once
(policy.reset([slot]) first), so the policy always sees a full batch.
"""
import time
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from vla0.eval.report import format_table, plot_results, save_rollout_video, wilson_interval, write_json_atomic
from vla0.sim.metaworld_env import FPS, EnvSpec, check_tasks_and_episodes
from vla0.sim.parallel import EnvPool

EVAL_SEED = 10_000


class Policy(Protocol):
    name: str
    malformed_outputs: int  # outputs the policy could not parse; read after evaluation
    needs_images: bool  # False -> envs render nothing (much faster)

    def reset(self, env_ids: list[int] | None = None) -> None: ...

    def select_action(self, obs: dict, env_ids: list[int]) -> np.ndarray: ...

    # Optional: needs_observation(env_ids) -> list[bool], False where the next select_action will
    # not look at that env's observation (actions queued from a chunk); those frames are not rendered.


def batch_obs(observations: list[dict], task_names: list[str]) -> dict:
    """Stack per-env observation dicts into one batch dict (strings become lists)."""
    out = {}
    # Keys all envs share: blind envs (no cameras) may run beside video-recording ones.
    for key in [k for k in observations[0] if all(k in o for o in observations[1:])]:
        vals = [o[key] for o in observations]
        out[key] = vals if isinstance(vals[0], str) else np.stack(vals)
    out["task_name"] = list(task_names)
    return out


def _run_task(pool, policy, task, specs, seeds, batch, bar, videos, video_dir, video_fps):
    """All episodes of one task; returns per-episode records."""
    records = [None] * len(seeds)
    active = {}  # slot -> [episode, obs, steps, frames]
    next_ep = 0
    policy.reset(None)

    def start(slot):
        nonlocal next_ep
        e = next_ep
        next_ep += 1
        policy.reset([slot])
        obs = pool.reset([specs[e]], [seeds[e]], ids=[slot])[0]
        active[slot] = [e, obs, 0, [] if e < videos else None]

    for slot in range(min(batch, len(seeds))):
        start(slot)
    while active:
        ids = sorted(active)
        obs = batch_obs([active[s][1] for s in ids], [task] * len(ids))
        actions = np.asarray(policy.select_action(obs, ids), dtype=np.float32)
        if actions.ndim != 2 or actions.shape[0] != len(ids) or actions.shape[1] != 4:
            raise ValueError(f"policy {policy.name!r} returned actions of shape {actions.shape}, expected ({len(ids)}, 4)")
        wanted = policy.needs_observation(ids) if hasattr(policy, "needs_observation") else [True] * len(ids)
        render = [w or active[s][3] is not None for s, w in zip(ids, wanted)]  # video episodes see every frame
        results = pool.step(list(actions), ids=ids, render=render)
        for slot, r, (next_obs, _, term, trunc, info) in zip(ids, render, results):
            ep = active[slot]
            if ep[3] is not None:
                ep[3].append({k: v for k, v in ep[1].items() if k.startswith("observation.images.")})
            if not r:  # keep the last frames so the batch stays rectangular; the policy will not read them
                next_obs = {**{k: v for k, v in ep[1].items() if k.startswith("observation.images.")}, **next_obs}
            ep[1], ep[2] = next_obs, ep[2] + 1
            if not (term or trunc):
                continue
            e, success = ep[0], bool(info["success"])
            records[e] = {"task": task, "episode": e, "seed": seeds[e], "success": success, "steps": ep[2]}
            if ep[3] is not None:
                ep[3].append({k: v for k, v in next_obs.items() if k.startswith("observation.images.")})
                name = f"{task}_seed{seeds[e]}_{'success' if success else 'fail'}.mp4"
                if save_rollout_video(ep[3], video_dir / name, fps=video_fps):
                    records[e]["video"] = f"videos/{name}"
            del active[slot]
            bar.update(1)
            if next_ep < len(seeds):
                start(slot)
    return records


def evaluate(
    policy: Policy,
    tasks: list[str],
    episodes: int,
    seed: int = EVAL_SEED,
    out: Path = Path("eval_out"),
    cameras: tuple[str, ...] = ("corner3",),
    image_size: tuple[int, int] = (64, 64),
    num_workers: int = 2,
    batch_envs: int | None = None,
    max_steps: int | None = None,
    videos: int = 2,
    progress: bool = True,
    visible_goal: bool = True,
) -> dict:
    """Evaluate `policy` on `episodes` seeds per task; writes out/results.json, success.png, videos/."""
    tasks = list(tasks)
    check_tasks_and_episodes(tasks, episodes, "evaluate")
    for attr in ("name", "reset", "select_action", "needs_images"):
        if not hasattr(policy, attr):
            raise ValueError(f"evaluate: policy {type(policy).__name__} lacks {attr!r} (see vla0.eval.evaluate.Policy)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [seed + e for e in range(episodes)]
    batch = batch_envs or min(episodes, max(8, num_workers))
    # Envs render only when someone looks: the policy, or the first `videos` episodes.
    full = {t: EnvSpec(t, tuple(cameras), tuple(image_size), max_steps, visible_goal) for t in tasks}
    blind = {t: EnvSpec(t, (), tuple(image_size), max_steps, visible_goal) for t in tasks}

    per_task, all_records = {}, []
    t0 = time.time()
    bar = tqdm(total=len(tasks) * episodes, desc=f"eval {policy.name}", unit="ep", disable=not progress)
    with EnvPool(num_workers) as pool:
        for task in tasks:
            specs = [full[task] if (policy.needs_images or (e < videos and cameras)) else blind[task] for e in range(episodes)]
            malformed_before = int(getattr(policy, "malformed_outputs", 0))
            recs = _run_task(pool, policy, task, specs, seeds, batch, bar, videos if cameras else 0, out / "videos", FPS // 4)  # 20 fps: 4x slow motion, short episodes stay watchable
            successes = sum(r["success"] for r in recs)
            per_task[task] = {
                "episodes": episodes,
                "successes": successes,
                "success_rate": successes / episodes,
                "ci95": list(wilson_interval(successes, episodes)),
                "mean_steps": float(np.mean([r["steps"] for r in recs])),
                "malformed_outputs": int(getattr(policy, "malformed_outputs", 0)) - malformed_before,
            }
            all_records += recs
    bar.close()
    wall = time.time() - t0
    results = {
        "tasks": per_task,
        "mean_success_rate": float(np.mean([r["success_rate"] for r in per_task.values()])),
        "policy": policy.name,
        "seed": seed,
        "episodes_per_task": episodes,
        "cameras": list(cameras),
        "image_size": list(image_size),
        "visible_goal": visible_goal,
        "max_steps": {t: full[t].horizon for t in tasks},
        "wall_seconds": round(wall, 2),
        "episodes_per_minute": round(len(all_records) / wall * 60, 2),
        "episodes": all_records,
    }
    write_json_atomic(results, out / "results.json")
    plot_results(results, out / "success.png")
    if progress:
        print(format_table(results))
    return results
