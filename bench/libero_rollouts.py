"""Where a LIBERO episode's time goes, and how fast rollouts run: writes
bench/results/libero_rollouts.json.

usage: OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 MUJOCO_GL=egl python bench/libero_rollouts.py
       [--tasks 0,1] [--episodes 4] [--workers 2] [--camera-size 64]

1. Profile, in this process, one LIBERO-Object env with the policy's two cameras: env build, a
   hard reset (LIBERO's default: the MuJoCo model re-loaded from XML) against the soft reset vla0
   now uses, a physics-only step, a step that renders both cameras, one batched policy call, and
   the inter-process cost of a step through an EnvPool worker.
2. Episodes per minute, all rows through the same EnvPool (--workers processes, 2 x workers
   slots, envs built before the clock starts: RL keeps its workers across iterations):
   - floor: the scripted expert, no cameras (physics, reset and the expert only);
   - policy (eval protocol): the embedded tiny policy (untrained weights: its speed is what is
     measured, not its success), replanning every step with temporal ensembling (the published
     protocol), so both cameras render at every step;
   - RL rollouts: the same policy sampling (temperature 1), executing each 4-step chunk open loop
     as `bench/libero_rl.py` trains and evaluates it, rendering only the frames a policy call
     reads, one batched model call for all envs of a step, perturbed layouts.
   Policy episodes never succeed (untrained), so their cap is set to the expert's mean episode
   length: every row then plays episodes of about the same number of steps, and each row's rate is
   also given as a fraction of the floor's.
Keep --episodes small: the numbers answer "where does the time go", on a shared 2-core machine
(the load average is recorded).
"""
import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from vla0.config import PolicyConfig
from vla0.envs import get_env
from vla0.envs.pool import EnvPool
from vla0.envs.runner import EnvExpert, EpisodeJob, EpisodeRunner
from vla0.io import write_json_atomic
from vla0.model.tiny import init_model
from vla0.model.vlm import load_vlm
from vla0.policy.policy import VLA0Policy
from vla0.processor import ActionProcessor
from vla0.rl.rollout import RolloutJob, RolloutSettings, RolloutWorker

ENV, SUITE = "libero", "libero_object"
CAMERAS = ("image", "image2")
CHUNK = 4
RESULTS = Path(__file__).parent / "results"


def machine(load_start: float) -> dict:
    """What the numbers ran on; the load average says how shared the two cores were."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_1m_at_start": round(load_start, 2), "load_average_1m_at_end": round(os.getloadavg()[0], 2)}


def save_report(report: dict, work: Path, name: str, save: bool) -> None:
    """The report in the run folder, and under bench/results when `save`."""
    write_json_atomic(report, work / name)
    if save:
        write_json_atomic(report, RESULTS / name)
    print(f"wrote {work / name}" + (f" and {RESULTS / name}" if save else ""))


def build_policy(folder: Path, size: int) -> Path:
    """The embedded tiny model as a 7-D LIBERO policy reading both cameras at `size` px
    (resized to 56, the quickstart recipe's), H = 4, B = 100; untrained."""
    if not (folder / "vla0_policy.json").exists():
        model = init_model("tiny", folder.with_name("tiny_model"), seed=0)
        shutil.copytree(model, folder, dirs_exist_ok=True)
        PolicyConfig(action_dim=7, cameras=list(CAMERAS), chunk_size=CHUNK, num_bins=100, image_size=[56, 56],
                     crop_fraction=1.0, action_stats={"min": [-1.0] * 7, "max": [1.0] * 7},
                     camera_shapes={c: [size, size] for c in CAMERAS}, n_action_steps=1, ensemble=CHUNK).save(folder)
    return folder


def mean_time(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def profile(family, task: str, size: int, policy: VLA0Policy, batch: int) -> dict:
    """Seconds per phase, one env in this process."""
    spec = family.spec(task, CAMERAS, (size, size))
    out = {}
    t0 = time.perf_counter()
    env = family.make(spec)
    out["env_build_s"] = time.perf_counter() - t0
    try:
        env.reset(0)  # first reset: caches warm
        raw = env.raw_env
        raw.hard_reset = True  # LIBERO's default: reload the MuJoCo model from XML at every reset
        out["reset_hard_s"] = mean_time(lambda: env.reset(1), 1)
        raw.hard_reset = False
        out["reset_soft_s"] = mean_time(lambda: env.reset(2), 2)  # what vla0 does (10 wait steps included)
        zero = np.zeros(7, np.float32)
        out["step_physics_ms"] = 1000 * mean_time(lambda: env.step(zero, render=False), 20)
        out["step_render_2cams_ms"] = 1000 * mean_time(lambda: env.step(zero, render=True), 10)
        obs = env.step(zero, render=True)[0]
    finally:
        env.close()
    frames = {k: np.stack([v] * batch) for k, v in obs.items() if k.startswith("observation.images.")}
    for b in (1, batch):
        o = {**{k: v[:b] for k, v in frames.items()}, "task": [obs["task"]] * b}
        policy.reset(None)
        ids = list(range(b))
        out[f"policy_call_batch{b}_ms"] = 1000 * mean_time(lambda: policy.predict_action_chunk(o, env_ids=ids), 3)
    with EnvPool(1) as pool:
        pool.reset([family.spec(task)], [0], ids=[0])
        step_ms = 1000 * mean_time(lambda: pool.step([zero], ids=[0], render=[False]), 20)
    out["step_physics_via_worker_ms"] = step_ms
    out["ipc_ms_per_step"] = step_ms - out["step_physics_ms"]
    return {k: round(v, 4) for k, v in out.items()}


class TimedPolicy:
    """A policy for the runner whose model time is counted."""

    def __init__(self, policy):
        self.policy, self.name, self.needs_images, self.model_seconds = policy, policy.name, True, 0.0

    def reset(self, env_ids=None):
        self.policy.reset(env_ids)

    def needs_observation(self, env_ids):
        return self.policy.needs_observation(env_ids)

    def select_action(self, obs, env_ids):
        t0 = time.perf_counter()
        out = self.policy.select_action(obs, env_ids)
        self.model_seconds += time.perf_counter() - t0
        return out


def row(name: str, seconds: float, lengths: list[int], successes: int, **extra) -> dict:
    n = len(lengths)
    return {"row": name, "episodes": n, "seconds": round(seconds, 2), "episodes_per_minute": round(60 * n / seconds, 3),
            "env_steps_per_second": round(sum(lengths) / seconds, 2), "mean_steps": round(float(np.mean(lengths)), 1),
            "successes": successes, **extra}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="0,1", help="LIBERO-Object task ids")
    p.add_argument("--episodes", type=int, default=4, help="episodes per row")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--camera-size", type=int, default=64)
    p.add_argument("--out", default="runs/bench_libero_rollouts")
    p.add_argument("--save", action=argparse.BooleanOptionalAction, default=True,
                   help="write bench/results/libero_rollouts.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    family = get_env(ENV)
    tasks = family.select_tasks([t.strip() for t in args.tasks.split(",")], SUITE)
    family.check_tasks(tasks, args.episodes, "bench")
    out = Path(args.out)
    size = args.camera_size
    batch = 2 * args.workers
    load_start = os.getloadavg()[0]
    policy_dir = build_policy(out / "policy", size)
    vlm = load_vlm(policy_dir)
    config = PolicyConfig.load(policy_dir)
    greedy = VLA0Policy(vlm, config, "cpu", name="tiny (published execution)")

    print("[bench] profile", flush=True)
    prof = profile(family, tasks[0], size, greedy, batch)
    print(json.dumps(prof), flush=True)

    rows = []
    seeds = list(range(args.episodes))
    with EnvPool(args.workers) as pool:
        runner = EpisodeRunner(pool, batch, family.action_dim)
        # build every slot's env for both specs used below before any clock starts
        blind = {t: family.spec(t) for t in tasks}
        t0 = time.perf_counter()
        pool.reset([blind[tasks[i % len(tasks)]] for i in range(batch)], [0] * batch, ids=list(range(batch)))
        build_s = time.perf_counter() - t0

        jobs = [EpisodeJob(blind[tasks[i % len(tasks)]], s) for i, s in enumerate(seeds)]
        t0 = time.perf_counter()
        res = runner.run(jobs, EnvExpert())
        floor = row("floor: scripted expert, no rendering", time.perf_counter() - t0, [r.steps for r in res],
                    sum(r.success for r in res), batch_envs=batch, env_build_seconds_excluded=round(build_s, 1))
        rows.append(floor)
        print(json.dumps(floor), flush=True)
        cap = int(round(floor["mean_steps"]))

        seen = {t: family.spec(t, CAMERAS, (size, size), max_episode_steps=cap) for t in tasks}
        pool.reset([seen[tasks[i % len(tasks)]] for i in range(batch)], [0] * batch, ids=list(range(batch)))
        timed = TimedPolicy(greedy)
        jobs = [EpisodeJob(seen[tasks[i % len(tasks)]], s) for i, s in enumerate(seeds)]
        t0 = time.perf_counter()
        res = runner.run(jobs, timed)
        dt = time.perf_counter() - t0
        rows.append(row("policy, eval protocol: replan every step, ensemble 4, render every step", dt,
                        [r.steps for r in res], sum(r.success for r in res), batch_envs=batch, episode_cap=cap,
                        model_seconds=round(timed.model_seconds, 2)))
        print(json.dumps(rows[-1]), flush=True)

        settings = RolloutSettings(temperature=1.0, n_action_steps=CHUNK, ensemble=1, max_episode_steps=cap,
                                   batch_envs=batch, env=ENV, cameras=CAMERAS, image_size=(size, size),
                                   env_options={**family.training_options})
        processor = ActionProcessor(config, vlm.tokenizer, vlm.image_processor)
        worker = RolloutWorker(vlm.model, processor, settings, pool=pool)
        rl_jobs = [RolloutJob(g, t, 100_000 + g, max(1, args.episodes // len(tasks))) for g, t in enumerate(tasks)]
        rollout_specs = {t: family.spec(t, CAMERAS, (size, size), cap, **settings.env_options) for t in tasks}
        pool.reset([rollout_specs[tasks[i % len(tasks)]] for i in range(batch)], [0] * batch, ids=list(range(batch)))
        t0 = time.perf_counter()
        trajs = worker.run(rl_jobs, torch.Generator().manual_seed(1))
        dt = time.perf_counter() - t0
        rows.append(row(f"RL rollouts: sampled, {CHUNK}-step chunks open loop, render at replanning steps only",
                        dt, [t.length for t in trajs], sum(t.success for t in trajs), batch_envs=batch, episode_cap=cap,
                        model_seconds=round(worker.stats["model_seconds"], 2),
                        env_seconds=round(worker.stats["env_seconds"], 2),
                        policy_calls=int(sum(len(t.steps) for t in trajs))))
        print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        r["fraction_of_floor"] = round(r["episodes_per_minute"] / floor["episodes_per_minute"], 3)
    report = {
        "bench": "libero_rollouts",
        "command": f"python bench/libero_rollouts.py --tasks {args.tasks} --episodes {args.episodes} "
                   f"--workers {args.workers} --camera-size {size}",
        "tasks": {t: family.instruction(t) for t in tasks},
        "note": (f"a short run: {args.episodes} episodes per row (the RL row: one group per task), on a shared "
                 "2-core machine; policy rows use the embedded tiny model with untrained weights (speed only), "
                 f"capped at the expert's mean episode length ({cap} steps) so that rows compare per episode"),
        "cameras": list(CAMERAS), "camera_size": size,
        "profile_one_env_in_process": prof,
        "rows": rows,
        "machine": machine(load_start),
    }
    save_report(report, out, "libero_rollouts.json", args.save)
    for r in rows:
        print(f"{r['episodes_per_minute']:8.2f} episodes/min  {r['fraction_of_floor']:.2f} of floor  {r['row']}")


if __name__ == "__main__":
    main()
