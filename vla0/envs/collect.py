"""Collect scripted-expert demonstrations into a LeRobotDataset v3.0, from any registered env
with an expert.

Seeds: episode e (0-based) of every task uses seed `seed + e`, so the default seed 0 with 50
episodes covers seeds 0-49. Keep evaluation seeds disjoint (vla0's evaluation defaults start at
10_000). `episodes` counts attempts: with keep_failures=False the rare expert failures are
dropped, not retried, which keeps the seed -> episode mapping fixed. Episodes are written in job
order as they finish, so the dataset does not depend on worker timing and memory holds only the
episodes still running or waiting for an earlier one.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vla0.config import IMAGE_PREFIX
from vla0.data.lerobot_writer import LeRobotWriter
from vla0.envs.base import get_env
from vla0.envs.pool import EnvPool
from vla0.envs.runner import EnvExpert, EpisodeJob, EpisodeResult, EpisodeRunner


def collect(tasks: list[str], episodes: int, seed: int, out: Path, env: str = "metaworld",
            cameras: tuple[str, ...] | None = None, image_size: tuple[int, int] | None = None,
            num_workers: int = 2, keep_failures: bool = False, progress: bool = True,
            max_episode_steps: int | None = None, overwrite: bool = False, **env_options) -> Path:
    """Run the scripted expert and write its episodes to `out`; returns `out`."""
    out = Path(out)
    family = get_env(env)
    tasks = list(tasks)
    family.check_tasks(tasks, episodes, "collect")
    family.check_expert(tasks, "collect")
    # the env's collection defaults (e.g. LIBERO's perturbed layouts, never evaluation's), then the caller's
    env_options = {**family.training_options, **env_options}
    family.check_options(env_options)
    family.check_seeds(seed, episodes, env_options)
    image_size = tuple(image_size or family.default_image_size)
    if out.exists() and not overwrite:
        raise FileExistsError(f"collect: output folder already exists: {out} (use overwrite)")
    cameras = tuple(family.default_cameras if cameras is None else cameras)
    specs = {t: family.spec(t, cameras, image_size, max_episode_steps, **env_options) for t in tasks}
    cam_keys = [IMAGE_PREFIX + c for c in cameras]
    h, w = specs[tasks[0]].image_size
    jobs = [EpisodeJob(specs[t], seed + e, record=True) for t in tasks for e in range(episodes)]  # task-major
    writer = LeRobotWriter(out, family.fps, {k: (h, w) for k in cam_keys}, len(family.state_names),
                           family.action_dim, robot_type=family.robot_type, extra=family.extra_features,
                           state_names=family.state_names, action_names=family.action_names, overwrite=overwrite)
    kept, failed, t0 = 0, [], time.time()
    done: dict[int, EpisodeResult] = {}
    next_write = 0
    bar = tqdm(total=len(jobs), desc="collect", unit="ep", disable=not progress)

    def write(res: EpisodeResult) -> None:
        nonlocal kept
        frames = res.observations[:-1]  # a frame = the observation and the action taken from it
        if res.success or keep_failures:
            writer.add_episode({k: np.stack([f[k] for f in frames]) for k in cam_keys},
                               np.stack([f["observation.state"] for f in frames]), np.stack(res.actions),
                               frames[0]["task"],
                               extra={k: np.stack([f[k] for f in frames]) for k in family.extra_features})
            kept += 1
        if not res.success:
            failed.append({"task": res.job.spec.task, "seed": res.job.seed})
        res.observations, res.actions = [], []  # written: free the frames
        bar.update(1)
        bar.set_postfix(kept=kept, failed=len(failed))

    def on_end(res: EpisodeResult) -> None:
        nonlocal next_write
        done[res.index] = res
        while next_write in done:
            write(done.pop(next_write))
            next_write += 1

    try:
        with EnvPool(num_workers) as pool:
            EpisodeRunner(pool, max(1, num_workers), family.action_dim).run(jobs, EnvExpert(), on_end=on_end)
        bar.close()
        if kept == 0:
            raise RuntimeError(f"collect: no successful episodes out of {len(jobs)}; nothing written to {out}")
        settings = {
            "source": "vla0.envs.collect",
            "env": env,
            "tasks": tasks,
            "episodes_per_task": episodes,
            "seeds": [seed, seed + episodes - 1],
            "cameras": list(cameras),
            "image_size": list(image_size),
            **specs[tasks[0]].options,
            "max_episode_steps": {t: specs[t].max_episode_steps for t in tasks},
            "keep_failures": keep_failures,
            "failed": failed,
            "kept_episodes": kept,
            "wall_seconds": round(time.time() - t0, 2),
        }
        writer.finalize(meta_files={"vla0.json": settings})
    except BaseException:
        bar.close()
        writer.abort()
        raise
    return out
