"""Collect scripted-expert demonstrations into a LeRobotDataset v3.0.

Seeds: episode e (0-based) of every task uses seed `seed + e`, so the default
seed 0 with 50 episodes covers seeds 0-49. Keep evaluation seeds disjoint
(vla0's evaluation defaults start at 10_000). Each seed draws fresh object
and goal positions (see metaworld_env.py), so held-out seeds are unseen
positions. `episodes` counts attempts: with keep_failures=False the rare
expert failures (e.g. door-open about 3/50) are dropped, not retried, which
keeps the seed -> episode mapping fixed.
"""
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vla0.data.lerobot_writer import LeRobotWriter
from vla0.sim.metaworld_env import FPS, EnvSpec, check_tasks_and_episodes
from vla0.sim.parallel import EnvPool

STATE_NAMES = ["x", "y", "z", "gripper"]
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]


class _Episode:
    def __init__(self, job: int, task: str, seed: int, cams: list[str]):
        self.job, self.task, self.seed = job, task, seed
        self.images = {k: [] for k in cams}
        self.state, self.env_state, self.action = [], [], []
        self.instruction = None
        self.success = False

    def record(self, obs: dict, action: np.ndarray):
        for k in self.images:
            self.images[k].append(obs[k])
        self.state.append(obs["observation.state"])
        self.env_state.append(obs["observation.environment_state"])
        self.action.append(action)
        self.instruction = obs["task"]


def collect(
    tasks: list[str],
    episodes: int,
    seed: int,
    out: Path,
    cameras: tuple[str, ...] = ("corner3",),
    image_size: tuple[int, int] = (64, 64),
    fps: int = FPS,
    num_workers: int = 2,
    keep_failures: bool = False,
    progress: bool = True,
    max_steps: int | None = None,
    visible_goal: bool = True,
    overwrite: bool = False,
) -> Path:
    """Run the scripted experts and write their episodes to `out`; returns `out`."""
    out = Path(out)
    tasks = list(tasks)
    check_tasks_and_episodes(tasks, episodes, "collect")
    if out.exists() and not overwrite:
        raise FileExistsError(f"collect: output folder already exists: {out} (use overwrite)")
    specs = {t: EnvSpec(t, tuple(cameras), tuple(image_size), max_steps, visible_goal) for t in tasks}
    cam_keys = [f"observation.images.{c}" for c in cameras]
    h, w = specs[tasks[0]].image_size

    jobs = [(t, seed + e) for t in tasks for e in range(episodes)]  # task-major: workers rarely rebuild envs
    writer = LeRobotWriter(
        out, fps, {k: (h, w) for k in cam_keys}, 4, 4, robot_type="sawyer",
        extra={"observation.environment_state": 39}, state_names=STATE_NAMES, action_names=ACTION_NAMES,
        overwrite=overwrite,
    )
    slots = max(1, num_workers)
    kept, failed, t0 = 0, [], time.time()
    bar = tqdm(total=len(jobs), desc="collect", unit="ep", disable=not progress)
    try:
        with EnvPool(num_workers) as pool:
            active: dict[int, tuple[_Episode, dict]] = {}  # slot -> (episode, current obs)
            done: dict[int, _Episode] = {}
            next_job, next_write = 0, 0

            def start(slot):
                nonlocal next_job
                task, s = jobs[next_job]
                ep = _Episode(next_job, task, s, cam_keys)
                next_job += 1
                active[slot] = (ep, pool.reset([specs[task]], [s], ids=[slot])[0])

            for slot in range(min(slots, len(jobs))):
                start(slot)
            while active:
                ids = sorted(active)
                actions = pool.expert_actions(ids)
                results = pool.step(actions, ids=ids)
                for slot, action, (obs, _, term, trunc, info) in zip(ids, actions, results):
                    ep, prev = active[slot]
                    ep.record(prev, action)  # a frame = the observation and the action taken from it
                    if not (term or trunc):
                        active[slot] = (ep, obs)
                        continue
                    ep.success = bool(info["success"])
                    done[ep.job] = ep
                    del active[slot]
                    if next_job < len(jobs):
                        start(slot)
                # Write in job order so the dataset does not depend on worker timing.
                while next_write in done:
                    ep = done.pop(next_write)
                    next_write += 1
                    if ep.success or keep_failures:
                        writer.add_episode(
                            {k: np.stack(v) for k, v in ep.images.items()},
                            np.stack(ep.state), np.stack(ep.action), ep.instruction,
                            extra={"observation.environment_state": np.stack(ep.env_state)},
                        )
                        kept += 1
                    if not ep.success:
                        failed.append({"task": ep.task, "seed": ep.seed})
                    bar.update(1)
                    bar.set_postfix(kept=kept, failed=len(failed))
        bar.close()
        if kept == 0:
            raise RuntimeError(f"collect: no successful episodes out of {len(jobs)}; nothing written to {out}")
        settings = {
            "source": "vla0.sim.collect",
            "tasks": tasks,
            "episodes_per_task": episodes,
            "seeds": [seed, seed + episodes - 1],
            "cameras": list(cameras),
            "image_size": list(image_size),
            "visible_goal": visible_goal,
            "max_steps": {t: specs[t].horizon for t in tasks},
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
