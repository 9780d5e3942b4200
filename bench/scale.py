"""Evaluation throughput on Ray (`vla0 eval --ray`) against the local process pool: episodes per
minute with 1 and 2 env actors on a local Ray instance, and whether every episode came out the
same. Writes bench/results/scale.json.

usage: OMP_NUM_THREADS=1 python bench/scale.py --policy runs/quickstart/run/policy [--tasks drawer-open-v3]
       [--episodes 10] [--cpus 2] [--workers 1,2]

Wall time per run includes starting the pool (Ray actors or worker processes) and building the
envs, as a user's `vla0 eval` would see it. The 1-minute load average before and after each run
is recorded: on a shared machine it says more about the numbers than the pool does.
"""
import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from vla0.eval.evaluate import evaluate
from vla0.io import write_json_atomic
from vla0.policy.policy import VLA0Policy


class _Holder:
    """Stands for a rollout actor: receives weights from the object store, as set_weights does."""

    def set_weights(self, weights: dict) -> int:
        return sum(t.numel() for t in weights.values())


def weights_seconds(params: int, actors: int, repeats: int = 3) -> float:
    """Seconds from the learner's tensors to every actor holding them (ray.put once, each gets it),
    as RayRolloutWorkers.set_weights; the best of `repeats`."""
    holders = [ray.remote(num_cpus=0)(_Holder).remote() for _ in range(actors)]
    weights = {f"layer{i}": torch.randn(params // 16) for i in range(16)}
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        ref = ray.put(weights)
        ray.get([h.set_weights.remote(ref) for h in holders])
        best = min(best, time.perf_counter() - t0)
    for h in holders:
        ray.kill(h)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", required=True)
    ap.add_argument("--tasks", default="drawer-open-v3")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    ap.add_argument("--workers", default="1,2", help="pool sizes to measure, local and on Ray")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "scale.json"))
    ap.add_argument("--weights-only", action="store_true", help="only the weight transfer (no evaluation)")
    args = ap.parse_args()
    tasks = args.tasks.split(",")
    policy = VLA0Policy.from_pretrained(args.policy)
    cameras, size = policy.config.cameras, tuple(next(iter(policy.config.camera_shapes.values())))
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}})
    # weight transfer to 2 rollout actors: the tiny model (full), the 3B model's LoRA r16 adapters
    # (29.9 M trainable parameters, FACTS.md), fp32
    transfer = {name: round(weights_seconds(n, 2), 3) for name, n in (("tiny_full_0.63M", 630_000),
                                                                       ("3b_lora_r16_29.9M", 29_900_000))}
    print("weights to 2 actors, seconds:", transfer, flush=True)
    if args.weights_only:
        ray.shutdown()
        print(transfer)
        return
    runs, episodes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        sizes = [int(w) for w in args.workers.split(",")]
        for label, workers, address in [("local pool", w, None) for w in sizes] + [("ray actors", w, "") for w in sizes]:
            load_before = os.getloadavg()[0]
            t0 = time.perf_counter()
            res = evaluate(policy, tasks, args.episodes, out=Path(tmp) / f"{label}{workers}", cameras=tuple(cameras),
                           image_size=size, num_workers=workers, batch_envs=args.episodes, videos=0,
                           progress=False, ray=address)
            wall = time.perf_counter() - t0
            n = len(res["episodes"])
            runs.append({"pool": label, "workers": workers, "episodes": n, "wall_seconds": round(wall, 1),
                         "episodes_per_minute": round(n / wall * 60, 2),
                         "mean_success_rate": res["mean_success_rate"],
                         "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)]})
            episodes[(label, workers)] = [(e["task"], e["seed"], e["success"], e["steps"]) for e in res["episodes"]]
            print(runs[-1], flush=True)
    ray.shutdown()
    same = all(e == next(iter(episodes.values())) for e in episodes.values())
    write_json_atomic({"policy": str(args.policy), "tasks": tasks, "episodes_per_task": args.episodes,
                       "ray_cpus": args.cpus, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                       "runs": runs, "every_episode_identical": same, "weights_to_2_actors_seconds": transfer},
                      args.out)
    print(f"every episode identical across pools: {same}; wrote {args.out}")


if __name__ == "__main__":
    main()
