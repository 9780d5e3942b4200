"""Text actions (VLA-0) against discrete action tokens (OpenVLA), side by side.

Both policies are the quickstart's (vla0/quickstart.py): the same three Meta-World tasks, the same
expert demonstrations (collected once, copied to the second run), the same recipe and training
steps, the same held-out seeds. Only the action format differs: text writes H*D integers in 0..B
as digits (B = the recipe's 100); bins writes one reserved token per number, 256 bins over the
dataset's q01..q99 (OpenVLA). Reported: success per task with 95% Wilson intervals, the paired
comparison on the same (task, seed) episodes (exact McNemar), tokens generated per chunk, and
greedy decode latency per chunk (the exact fast decoder, batch 1, dataset frames replayed).

    python bench/action_formats.py                       # about 2 x 15 min on 2 cores
    python bench/action_formats.py --steps 20 --demos 2 --episodes 2 --tasks reach-v3 \\
        --work /tmp/formats_smoke --result /tmp/formats_smoke.json   # a smoke test (minutes)
"""

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

QUICKSTART_TASKS = ["reach-v3", "button-press-topdown-v3", "drawer-open-v3"]


def replay(policy, data_dir: Path, frames: int, seed: int = 0) -> dict:
    """Greedy-decode `frames` dataset observations one at a time (no drafts): per chunk the tokens
    written, the decode seconds, the bins, and the actions before clipping."""
    import torch

    from vla0.data.lerobot_dataset import load_lerobot
    data = load_lerobot(Path(data_dir), cameras=policy.config.cameras)
    rows = np.random.default_rng(seed).choice(len(data.action), size=min(frames, len(data.action)), replace=False)
    out = {"tokens": [], "seconds": [], "bins": [], "actions": []}
    with torch.no_grad():
        for r in sorted(rows.tolist()):
            prompt = policy.processor.prompt([data.images[k][r] for k in policy.config.image_keys],
                                             data.tasks[data.task_index[r]])
            t0 = time.perf_counter()
            tokens = policy.decoder.greedy([prompt])[0]
            out["seconds"].append(time.perf_counter() - t0)
            decoded = policy.processor.decode(tokens)
            out["tokens"].append(len(tokens))
            out["bins"].append(decoded.bins)
            out["actions"].append(decoded.actions)
    return out


def summary(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(v.mean()), 4), "median": round(float(np.median(v)), 4),
            "p90": round(float(np.percentile(v, 90)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/bench_formats", help="one quickstart folder per format")
    ap.add_argument("--result", default=str(Path(__file__).parent / "results" / "action_formats.json"))
    ap.add_argument("--tasks", default=",".join(QUICKSTART_TASKS))
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    ap.add_argument("--demos", type=int, default=50)
    ap.add_argument("--episodes", type=int, default=20, help="held-out episodes per task")
    ap.add_argument("--bins", type=int, default=256, help="bins of the bins format (OpenVLA: 256)")
    ap.add_argument("--frames", type=int, default=60, help="dataset frames replayed for tokens and latency")
    args = ap.parse_args()

    from vla0.eval.report import paired_comparison, wilson_interval
    from vla0.io import write_json_atomic
    from vla0.policy.policy import VLA0Policy
    from vla0.quickstart import QuickstartConfig, run_quickstart

    work, tasks = Path(args.work), args.tasks.split(",")
    formats = {"text": {"action_format": "text"}, "bins": {"action_format": "bins", "num_bins": args.bins}}
    report = {"machine": {"cpus": os.cpu_count()}, "settings": vars(args), "formats": {}}
    evals = {}
    for i, (fmt, training) in enumerate(formats.items()):
        out = work / fmt
        if i:  # the same demonstrations and baselines: copied, so collection and baselines are skipped
            first = work / next(iter(formats))
            for part in ("data", "eval/expert", "eval/random"):
                if not (out / part).exists():
                    shutil.copytree(first / part, out / part)
        t0 = time.perf_counter()
        results = run_quickstart(QuickstartConfig(out=str(out), tasks=tasks, demos_per_task=args.demos,
                                                  eval_episodes=args.episodes, steps=args.steps,
                                                  training=training, progress=False))
        evals[fmt] = results["vla0"]["episodes"]
        policy = VLA0Policy.from_pretrained(out / "run")
        rep = replay(policy, out / "data", args.frames)
        timings = json.loads((out / "timings.json").read_text())
        report["formats"][fmt] = {
            "config": {k: getattr(policy.config, k) for k in ("action_format", "num_bins", "normalization",
                                                              "chunk_size", "action_dim")},
            "tasks": {t: {"successes": r["successes"], "episodes": r["episodes"], "success_rate": r["success_rate"],
                          "ci95": r["ci95"]} for t, r in results["vla0"]["tasks"].items()},
            "mean_success_rate": results["vla0"]["mean_success_rate"],
            "tokens_per_chunk": summary(rep["tokens"]),
            "decode_ms_per_chunk_batch1": summary(np.asarray(rep["seconds"]) * 1e3),
            "train_seconds": timings.get("train"), "eval_seconds": timings.get("eval-vla0"),
            "final_loss": json.loads((out / "run" / "train_log.jsonl").read_text().splitlines()[-1])["loss"],
            "wall_seconds_this_call": round(time.perf_counter() - t0, 1),
        }
    all_t = [r for r in evals["text"]]
    all_b = [r for r in evals["bins"]]
    n = len(all_t)
    report["pooled"] = {fmt: {"successes": sum(r["success"] for r in evals[fmt]), "episodes": n,
                              "ci95": list(wilson_interval(sum(r["success"] for r in evals[fmt]), n))}
                        for fmt in formats}
    paired = {"all": paired_comparison(all_t, all_b)}  # "gained": bins succeeded where text failed
    for t in tasks:
        paired[t] = paired_comparison([r for r in all_t if r["task"] == t], [r for r in all_b if r["task"] == t])
    report["paired_text_to_bins"] = paired
    write_json_atomic(report, Path(args.result))
    print(table(report))


def table(report: dict) -> str:
    f = report["formats"]
    lines = ["| task | text (VLA-0) | 95% CI | bins (OpenVLA) | 95% CI | paired: bins won / lost, p |",
             "|---|---|---|---|---|---|"]
    for task, t in f["text"]["tasks"].items():
        b, p = f["bins"]["tasks"][task], report["paired_text_to_bins"][task]
        lines.append(f"| {task} | {t['successes']}/{t['episodes']} | [{t['ci95'][0]:.0%}, {t['ci95'][1]:.0%}] | "
                     f"{b['successes']}/{b['episodes']} | [{b['ci95'][0]:.0%}, {b['ci95'][1]:.0%}] | "
                     f"{p['gained']} / {p['lost']}, {p['p_value']:.2f} |")
    pt, pb, p = report["pooled"]["text"], report["pooled"]["bins"], report["paired_text_to_bins"]["all"]
    lines.append(f"| **all** | **{pt['successes']}/{pt['episodes']}** | [{pt['ci95'][0]:.0%}, {pt['ci95'][1]:.0%}] | "
                 f"**{pb['successes']}/{pb['episodes']}** | [{pb['ci95'][0]:.0%}, {pb['ci95'][1]:.0%}] | "
                 f"{p['gained']} / {p['lost']}, {p['p_value']:.2f} |")
    lines.append(f"| tokens per chunk (mean) | {f['text']['tokens_per_chunk']['mean']:.1f} | | "
                 f"{f['bins']['tokens_per_chunk']['mean']:.1f} | | |")
    lines.append(f"| decode ms per chunk (median, batch 1) | {f['text']['decode_ms_per_chunk_batch1']['median']:.1f} | | "
                 f"{f['bins']['decode_ms_per_chunk_batch1']['median']:.1f} | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
