"""Closed-loop evaluation: run a policy in a registered environment, report success rates.

Episode e (0-based) of each task uses seed `seed + e`; EVAL_SEED (10_000) is far from
collection seeds (0 upward), and each seed draws fresh positions, so evaluation positions were
never seen in training. Each task's episodes run through the episode runner (vla0.envs.runner)
in lockstep slots of an EnvPool.
"""

import time
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from vla0.envs.base import get_env
from vla0.envs.ray_pool import open_pool
from vla0.envs.runner import EpisodeJob, EpisodeRunner
from vla0.eval.report import format_table, plot_results, save_rollout_video, wilson_interval
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


def evaluate(
    policy: Policy,
    tasks: list[str],
    episodes: int,
    seed: int = EVAL_SEED,
    out: Path = Path("eval_out"),
    env: str = "metaworld",
    cameras: tuple[str, ...] | None = None,
    image_size: tuple[int, int] = (64, 64),
    num_workers: int = 2,
    batch_envs: int | None = None,
    max_episode_steps: int | None = None,
    videos: int = 2,
    progress: bool = True,
    ray: str | None = None,
    **env_options,
) -> dict:
    """Evaluate `policy` on `episodes` seeds per task; writes out/results.json, success.png, videos/.
    ray: run the env slots on Ray actors (num_workers of them) at this address ("": $RAY_ADDRESS
    or a local instance); None: local worker processes. The policy runs here either way."""
    family = get_env(env)
    tasks = list(tasks)
    family.check_tasks(tasks, episodes, "evaluate")
    for attr in ("name", "reset", "needs_images"):
        if not hasattr(policy, attr):
            raise ValueError(f"evaluate: policy {type(policy).__name__} lacks {attr!r} (see vla0.eval.evaluate.Policy)")
    config = getattr(policy, "config", None)
    if config is not None:
        family.check_action_dim(config.action_dim, f"policy {policy.name!r}")
    cameras = tuple(family.default_cameras if cameras is None else cameras)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [seed + e for e in range(episodes)]
    batch = batch_envs or min(episodes, max(8, num_workers))
    videos = videos if cameras else 0
    # Envs render only when someone looks: the policy, or the first `videos` episodes.
    full = {t: family.spec(t, cameras, image_size, max_episode_steps, **env_options) for t in tasks}
    blind = {t: family.spec(t, (), image_size, max_episode_steps, **env_options) for t in tasks}

    per_task, records = {}, []
    t0 = time.time()
    bar = tqdm(total=len(tasks) * episodes, desc=f"eval {policy.name}", unit="ep", disable=not progress)
    with open_pool(num_workers, ray) as pool:
        runner = EpisodeRunner(pool, batch, family.action_dim)
        for task in tasks:
            jobs = [EpisodeJob(full[task] if (policy.needs_images or e < videos) else blind[task], seeds[e],
                               record=e < videos) for e in range(episodes)]
            malformed_before = int(getattr(policy, "malformed_outputs", 0))
            task_records = []
            for res in runner.run(jobs, policy, on_end=lambda _: bar.update(1)):
                rec = {"task": task, "episode": res.index, "seed": res.job.seed, "success": res.success,
                       "steps": res.steps}
                if res.observations:
                    name = f"{task}_seed{res.job.seed}_{'success' if res.success else 'fail'}.mp4"
                    frames = [{k: v for k, v in o.items() if k.startswith("observation.images.")}
                              for o in res.observations]
                    if save_rollout_video(frames, out / "videos" / name, fps=family.fps // VIDEO_SLOWDOWN):
                        rec["video"] = f"videos/{name}"
                task_records.append(rec)
            successes = sum(r["success"] for r in task_records)
            per_task[task] = {
                "episodes": episodes,
                "successes": successes,
                "success_rate": successes / episodes,
                "ci95": list(wilson_interval(successes, episodes)),
                "mean_steps": float(np.mean([r["steps"] for r in task_records])),
                "malformed_outputs": int(getattr(policy, "malformed_outputs", 0)) - malformed_before,
            }
            records += task_records
    bar.close()
    wall = time.time() - t0
    results = {
        "tasks": per_task,
        "mean_success_rate": float(np.mean([r["success_rate"] for r in per_task.values()])),
        "policy": policy.name,
        "env": env,
        "seed": seed,
        "episodes_per_task": episodes,
        "cameras": list(cameras),
        "image_size": list(image_size),
        "env_options": full[tasks[0]].options,
        "max_episode_steps": {t: full[t].max_episode_steps for t in tasks},
        "wall_seconds": round(wall, 2),
        "episodes_per_minute": round(len(records) / wall * 60, 2),
        "episodes": records,
    }
    write_json_atomic(results, out / "results.json")
    plot_results(results, out / "success.png")
    if progress:
        print(format_table(results))
    return results
