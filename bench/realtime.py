"""Real-time execution on Meta-World: success and smoothness of every execution mode under
simulated inference latency, for the text head and the flow head.

Policies: the quickstart's demonstrations (3 tasks x 50 expert demos, corner3 + topview at 64 px),
a text head trained at chunk size H=8 (the quickstart's H=4 leaves no room for latency), then a
flow head on its frozen VLM (stage 2), all into --out by `vla0 collect` / `vla0 train`
(the commands are printed and skipped when their output exists).

Grid: execution mode (sync, async, async-ensemble, rtc) x latency d control steps x head, each
`vla0 eval --execution MODE --latency-steps d` on held-out seeds 10000.. (--episodes per task).
A synchronous robot waits while the model thinks, so sync gives the same episodes at every d
(tests/test_realtime.py checks the executor does exactly that): it runs once, at d=0. Each
finished configuration is written to the JSON at once, so an interrupted grid keeps what it
measured and a rerun continues (evaluation folders resume too).

Smoothness (vla0_client.executor): the mean jump |a_t - a_{t-1}| at chunk boundaries and the
total jerk sum |a_t - 2 a_{t-1} + a_{t-2}| per episode, averaged over episodes and tasks.
Also measured: what forcing d committed actions costs per text chunk (predict_action_chunk).

    python bench/realtime.py --out runs/rt                      # the full grid (hours on 2 CPU cores)
    python bench/realtime.py --out runs/rt --heads text --latencies 2,4   # a cut grid
    python bench/realtime.py --out /tmp/rt --smoke               # tiny settings: checks the script
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TASKS = ["reach-v3", "button-press-topdown-v3", "drawer-open-v3"]
MODES = ["sync", "async", "async-ensemble", "rtc"]
CAMERAS = ["corner3", "topview"]


def sh(args: list[str]) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "vla0.cli", *args], check=True)


def prepare(out: Path, tasks: list[str], chunk_size: int, steps1: int, steps2: int, demos: int, flow: bool) -> None:
    """Demonstrations, the text head at H=chunk_size, the flow head (if asked for) on its frozen VLM."""
    data, model, run, flow_run = out / "data", out / "model", out / "run", out / "flow_run"
    if not (data / "meta" / "info.json").exists():
        sh(["collect", "--tasks", ",".join(tasks), "--episodes", str(demos), "--seed", "0", "--cameras",
            ",".join(CAMERAS), "--image-size", "64x64", "--out", str(data), "--no-progress"])
    if not (model / "config.json").exists():
        sh(["init-model", "tiny", str(model)])
    if not (run / "policy" / "vla0_policy.json").exists():
        sh(["train", "--recipe", "quickstart", "--model", str(model), "--dataset", str(data), "--out", str(run),
            "--chunk-size", str(chunk_size), "--steps", str(steps1), "--no-progress",
            *(["--resume"] if (run / "checkpoints" / "latest").exists() else [])])
    if flow and not (flow_run / "policy" / "vla0_policy.json").exists():
        sh(["train", "--head", "flow", "--from", str(run), "--dataset", str(data), "--out", str(flow_run),
            "--chunk-size", str(chunk_size), "--steps", str(steps2), "--batch-size", "32", "--lr", "1e-3",
            "--schedule", "cosine", "--warmup-steps", str(max(1, steps2 // 10)), "--expert-depth", "4",
            "--no-progress", *(["--resume"] if (flow_run / "checkpoints" / "latest").exists() else [])])


def load(folder: Path, mode: str, d: int):
    from vla0.policy.policy import VLA0Policy
    return VLA0Policy.from_pretrained(folder, execution=mode, latency_steps=d,
                                      generator=torch.Generator().manual_seed(0))


def summarise(results: dict) -> dict:
    tasks = results["tasks"]
    keys = ("mean_boundary_jump", "total_jerk", "stall_steps")
    return {"mean_success_rate": results["mean_success_rate"],
            **{k: float(np.mean([t[k] for t in tasks.values()])) for k in keys},
            "tasks": {name: {k: t[k] for k in ("successes", "episodes", "success_rate", *keys)}
                      for name, t in tasks.items()},
            "wall_seconds": results["wall_seconds"]}


def forcing_cost(run: Path, data: Path, repeats: int, latencies: list[int]) -> dict:
    """Seconds per text chunk with d committed actions forced, d = 0 (plain) and the grid's d."""
    from vla0.data.lerobot_dataset import load_lerobot
    policy = load(run, "sync", 0)
    ds = load_lerobot(data, cameras=policy.config.cameras)
    rows = np.linspace(0, len(ds.action) - 1, 8).astype(int)
    out = {}
    for n in (1, 8):
        obs = {k: ds.images[k][rows[:n]] for k in policy.config.image_keys}
        obs["task"] = [ds.tasks[int(ds.task_index[i])] for i in rows[:n]]
        plans = [np.asarray(ds.action[i:i + policy.config.chunk_size], np.float32) for i in rows[:n]]
        per_d = {}
        for d in [0, *latencies]:
            if d >= policy.config.chunk_size:
                continue
            kw = {} if d == 0 else {"prefix": plans, "committed_steps": [min(d, len(p)) for p in plans]}
            policy.predict_action_chunk(obs, **kw)  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                policy.predict_action_chunk(obs, **kw)
                times.append(time.perf_counter() - t0)
            per_d[f"d{d}"] = {"median_s": float(np.median(times)),
                              "forward_passes": policy.decoder.fast.last_stats["forward_passes"]}
        out[f"batch_{n}"] = per_d
    return out


def table(report: dict) -> str:
    """Markdown: one row per measured configuration."""
    tasks = report["setup"]["tasks"]
    lines = ["| head | mode | d | success % | " + " | ".join(tasks) + " | boundary jump | total jerk | stall steps |",
             "|---" * (7 + len(tasks)) + "|"]
    for c in report["grid"]:
        per = " | ".join(f"{c['tasks'][t]['successes']}/{c['tasks'][t]['episodes']}" for t in tasks)
        lines.append(f"| {c['head']} | {c['mode']} | {c['latency_steps']} | {100 * c['mean_success_rate']:.1f} | {per} "
                     f"| {c['mean_boundary_jump']:.3f} | {c['total_jerk']:.1f} | {c['stall_steps']:.1f} |")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    heads = sorted({c["head"] for c in report["grid"]})
    fig, axes = plt.subplots(2, len(heads), figsize=(5 * len(heads), 7), squeeze=False)
    for j, head in enumerate(heads):
        for mode in MODES:
            cells = sorted((c for c in report["grid"] if c["head"] == head and c["mode"] == mode),
                           key=lambda c: c["latency_steps"])
            if mode == "sync" and cells:  # the robot waits: the same at every d
                ds = report["latencies"]
                cells = [{**cells[0], "latency_steps": d} for d in ds]
            if not cells:
                continue
            x = [c["latency_steps"] for c in cells]
            axes[0, j].plot(x, [100 * c["mean_success_rate"] for c in cells], "o-", label=mode)
            axes[1, j].plot(x, [c["mean_boundary_jump"] for c in cells], "o-", label=mode)
        axes[0, j].set_title(f"{head} head")
        axes[0, j].set_ylabel("success %")
        axes[1, j].set_ylabel("mean jump at chunk boundaries")
        axes[1, j].set_xlabel("latency d (control steps)")
        axes[0, j].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/rt")
    ap.add_argument("--result", default=str(RESULTS / "realtime.json"))
    ap.add_argument("--chunk-size", type=int, default=8)
    ap.add_argument("--stage1-steps", type=int, default=2000)
    ap.add_argument("--stage2-steps", type=int, default=2000)
    ap.add_argument("--demos", type=int, default=50)
    ap.add_argument("--episodes", type=int, default=20, help="held-out seeds per task")
    ap.add_argument("--latencies", default="2,4,1,6,0",
                    help="d values for the asynchronous modes, in the order they run (sync runs once, at 0)")
    ap.add_argument("--heads", default="text,flow")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--order", default="latency", choices=("latency", "head"),
                    help="latency: all heads at each d before the next d; head: one head's grid first")
    ap.add_argument("--repeats", type=int, default=5, help="timings per forced-prefix cost setting")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--no-run", action="store_true",
                    help="run nothing: collect the configurations whose evaluation folders are complete "
                         "(e.g. after grids run in parallel processes with their own --result)")
    ap.add_argument("--smoke", action="store_true", help="2 demos, 20+20 steps, 2 episodes, 1 task")
    args = ap.parse_args()

    from vla0.eval.evaluate import evaluate
    from vla0.io import write_json_atomic

    out = Path(args.out)
    tasks = TASKS[1:2] if args.smoke else args.tasks.split(",")
    if args.smoke:
        args.demos, args.stage1_steps, args.stage2_steps, args.episodes, args.repeats = 2, 20, 20, 2, 1
    latencies = [int(x) for x in args.latencies.split(",") if x]
    heads = args.heads.split(",")
    modes = args.modes.split(",")
    if not args.no_run:
        prepare(out, tasks, args.chunk_size, args.stage1_steps, args.stage2_steps, args.demos, "flow" in heads)
    folders = {"text": out / "run", "flow": out / "flow_run"}

    result = Path(args.result)
    report = json.loads(result.read_text()) if result.exists() else {}
    if report.get("setup", {}).get("out") != str(out):
        report = {}
    grid = {(c["head"], c["mode"], c["latency_steps"]): c for c in report.get("grid", [])}
    # sync once (d = 0), then the other modes at each d in the order given (the first ones matter most)
    cells = [(h, "sync", 0) for h in heads if "sync" in modes]
    cells += [(h, m, d) for d in latencies for h in heads for m in modes if m != "sync"]
    if args.order == "head":
        cells.sort(key=lambda c: heads.index(c[0]))
    report.update({
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "smoke": args.smoke,
        "setup": {"out": str(out), "tasks": tasks, "demos_per_task": args.demos, "chunk_size": args.chunk_size,
                  "stage1_steps": args.stage1_steps, "stage2_steps": args.stage2_steps, "eval_seed": 10_000,
                  "episodes_per_task": args.episodes, "cameras": CAMERAS, "image_size": [64, 64],
                  "rtc_flow_guidance": "soft mask (paper), beta = 5", "n_action_steps": 1,
                  "async_interval": "a request every max(n_action_steps, d) steps, one in flight"},
        "latencies": sorted({0, *latencies}),
    })

    def save() -> None:
        report["grid"] = sorted(grid.values(), key=lambda c: (c["head"], MODES.index(c["mode"]), c["latency_steps"]))
        planned = [{"head": h, "mode": m, "latency_steps": d} for h, m, d in cells if (h, m, d) not in grid]
        report["not_measured"] = planned
        write_json_atomic(report, result)

    if "text" in heads and "forced_prefix_cost_seconds" not in report and not args.no_run:
        report["forced_prefix_cost_seconds"] = forcing_cost(folders["text"], out / "data", args.repeats,
                                                            sorted(d for d in latencies if 0 < d < args.chunk_size))
        save()
    for head, mode, d in cells:
        if (head, mode, d) in grid:
            continue
        if d >= args.chunk_size:
            print(f"[realtime] skip d={d}: not below the chunk size {args.chunk_size}")
            continue
        folder = out / "eval" / head / f"{mode}_d{d}"
        if args.no_run:
            done = folder / "results.json"
            if done.exists() and json.loads(done.read_text())["episodes_per_task"] == args.episodes:
                grid[(head, mode, d)] = {"head": head, "mode": mode, "latency_steps": d,
                                         **summarise(json.loads(done.read_text()))}
            continue
        print(f"[realtime] {head} head, {mode}, d={d} ...", flush=True)
        res = evaluate(load(folders[head], mode, d), tasks, args.episodes, 10_000, folder, cameras=tuple(CAMERAS),
                       image_size=(64, 64), num_workers=args.workers, batch_envs=args.episodes, videos=0,
                       progress=False)
        grid[(head, mode, d)] = {"head": head, "mode": mode, "latency_steps": d, **summarise(res)}
        print(f"[realtime]   success {res['mean_success_rate']:.2f}, "
              f"jump {grid[(head, mode, d)]['mean_boundary_jump']:.3f}", flush=True)
        save()
    save()
    report["table"] = table(report)
    save()
    plot(report, result.with_suffix(".png"))
    print(report["table"])
    print(json.dumps({k: v for k, v in report.items() if k not in ("grid", "table")}, indent=1))


if __name__ == "__main__":
    main()
