"""Simulation throughput: env steps/s with rendering (1 and 2 workers), render cost
per frame, and expert-collection frames/s. Writes bench/results/sim.json.

usage: OMP_NUM_THREADS=1 python bench/sim.py [--steps 200] [--episodes 4]
"""
import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from vla0.envs import EnvSpec
from vla0.envs.collect import collect
from vla0.envs.metaworld import MetaWorldEnv
from vla0.envs.pool import EnvPool
from vla0.io import write_json_atomic

ENV = "metaworld"


def pool_steps_per_s(num_workers: int, spec: EnvSpec, steps: int) -> float:
    slots = max(1, num_workers)
    with EnvPool(num_workers) as pool:
        pool.reset([spec] * slots, list(range(slots)))
        pool.step([np.zeros(4)] * slots)  # warm up GL contexts
        t0 = time.perf_counter()
        for i in range(steps):
            if i % 100 == 99:  # stay away from the episode cap
                pool.reset([spec] * slots, list(range(slots)))
            pool.step(pool.expert_actions(list(range(slots))))
        return steps * slots / (time.perf_counter() - t0)


def render_ms(size: int, n: int = 50) -> float:
    env = MetaWorldEnv(EnvSpec(ENV, "reach-v3", cameras=("corner3",), image_size=(size, size)))
    env.reset(0)
    env.render()
    t0 = time.perf_counter()
    for _ in range(n):
        env.render()
    env.close()
    return (time.perf_counter() - t0) / n * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results/sim.json"))
    args = ap.parse_args()
    spec = EnvSpec(ENV, "reach-v3", cameras=("corner3",), image_size=(64, 64))
    res = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "mujoco_gl": os.environ.get("MUJOCO_GL"),
                    # other work on the machine slows everything here: record how busy it was
                    "load_average_1m_at_start": round(os.getloadavg()[0], 2)},
        "render_ms_per_frame": {f"{s}px": round(render_ms(s), 2) for s in (64, 96, 128)},
        "env_steps_per_s_corner3_64px": {
            "in_process": round(pool_steps_per_s(0, spec, args.steps), 1),
            "1_worker": round(pool_steps_per_s(1, spec, args.steps), 1),
            "2_workers": round(pool_steps_per_s(2, spec, args.steps), 1),
        },
        "env_steps_per_s_no_render": round(pool_steps_per_s(0, EnvSpec(ENV, "reach-v3", cameras=()), args.steps), 1),
    }
    tmp = Path(tempfile.mkdtemp())
    try:
        t0 = time.perf_counter()
        out = collect(["reach-v3", "push-v3"], args.episodes, 0, tmp / "demos", env=ENV, cameras=("corner3", "topview"),
                      num_workers=2, progress=False)
        wall = time.perf_counter() - t0
        info = json.loads((out / "meta/info.json").read_text())
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        res["collect_2_workers_2cams_64px"] = {
            "episodes": info["total_episodes"],
            "frames": info["total_frames"],
            "wall_s": round(wall, 2),
            "frames_per_s": round(info["total_frames"] / wall, 1),
            "dataset_kb_per_frame": round(size / 1024 / info["total_frames"], 2),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    write_json_atomic(res, Path(args.out))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
