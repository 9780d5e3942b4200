"""Quantized inference against full precision, on one trained policy.

For each --quantize mode (vla0.model.quantize): weight memory (parameters and buffers as stored;
bitsandbytes' 4-bit scales excluded), greedy decode latency per chunk (the exact fast decoder,
batch 1, dataset frames replayed), the fraction of chunks whose bins equal the unquantized
model's exactly and within +-1 bin, chunks with a decoded action outside the dataset's min..max
before clipping (the outliers a quantized re-implementation saw under NF4), and closed-loop
success on the quickstart's held-out seeds with 95% intervals and the paired comparison against
the unquantized policy on the same episodes.

    python bench/quantization.py --policy runs/bench_formats/text/run --data runs/bench_formats/text/data
    python bench/quantization.py ... --episodes 0          # skip the closed loop (minutes, not an hour)
"""

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
from action_formats import QUICKSTART_TASKS, replay, summary  # noqa: E402

MODES = ["none", "int8", "nf4", "ao-int8", "ao-int8-weight", "ao-int4"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="runs/bench_formats/text/run", help="policy or run folder")
    ap.add_argument("--data", default="runs/bench_formats/text/data", help="dataset whose frames are replayed")
    ap.add_argument("--result", default=str(Path(__file__).parent / "results" / "quantization.json"))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--tasks", default=",".join(QUICKSTART_TASKS))
    ap.add_argument("--episodes", type=int, default=20, help="held-out episodes per task (0: no closed loop)")
    ap.add_argument("--eval-modes", default=None, help="modes evaluated in closed loop (default: all)")
    ap.add_argument("--none-results", default=None,
                    help="results.json of the unquantized policy on the same seeds (skips re-evaluating it)")
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument("--work", default="runs/bench_quantization", help="evaluation folders")
    args = ap.parse_args()

    from vla0.eval.evaluate import evaluate
    from vla0.eval.report import paired_comparison
    from vla0.io import write_json_atomic
    from vla0.model.quantize import weight_bytes
    from vla0.policy.policy import VLA0Policy

    modes = args.modes.split(",")
    if modes[0] != "none":
        modes = ["none"] + modes  # the reference every mode is compared with
    eval_modes = modes if args.eval_modes is None else ["none", *args.eval_modes.split(",")]
    report = {"machine": {"cpus": os.cpu_count()}, "settings": vars(args), "modes": {}}
    out = Path(args.result)
    reference = None
    for mode in modes:  # the open-loop replay first, for every mode (minutes)
        t0 = time.perf_counter()
        policy = VLA0Policy.from_pretrained(args.policy, quantize=mode)
        load_s = time.perf_counter() - t0
        rep = replay(policy, Path(args.data), args.frames)
        bins = np.stack(rep["bins"])
        actions = np.stack(rep["actions"])  # before clipping
        low, high = (np.asarray(policy.config.action_stats[k]) for k in ("min", "max"))
        outside = np.any((actions < low - 1e-6) | (actions > high + 1e-6), axis=(1, 2))
        if reference is None:
            reference = bins
        diff = np.abs(bins - reference)
        report["modes"][mode] = {
            "weight_mib": round(weight_bytes(policy.vlm.model) / 2**20, 3),
            "load_seconds": round(load_s, 2),
            "decode_ms_per_chunk_batch1": summary(np.asarray(rep["seconds"]) * 1e3),
            "tokens_per_chunk": summary(rep["tokens"]),
            "chunks": len(bins),
            "chunks_equal": float(np.mean(np.all(diff == 0, axis=(1, 2)))),
            "chunks_within_1_bin": float(np.mean(np.all(diff <= 1, axis=(1, 2)))),
            "numbers_equal": float(np.mean(diff == 0)),
            "max_bin_difference": int(diff.max()),
            # a far-off number: more than a tenth of the range away from the unquantized model's
            "chunks_off_by_over_10pct": float(np.mean(np.any(diff > policy.config.num_bins / 10, axis=(1, 2)))),
            "chunks_outside_bounds_before_clipping": int(outside.sum()),
        }
        print(mode, report["modes"][mode], flush=True)
        write_json_atomic(report, out)
    reference_eval = None
    for mode in eval_modes if args.episodes else []:  # then the closed loop (slow under quantization)
        entry = report["modes"][mode]
        if mode == "none" and args.none_results:  # the same policy, seeds and settings, evaluated before
            res = json.loads(Path(args.none_results).read_text())
        else:
            policy = VLA0Policy.from_pretrained(args.policy, quantize=mode)
            cfg = policy.config
            shape = next(iter(cfg.camera_shapes.values()), [64, 64])
            res = evaluate(policy, args.tasks.split(","), args.episodes, args.seed, Path(args.work) / mode,
                           cameras=tuple(cfg.cameras), image_size=tuple(shape), batch_envs=args.episodes,
                           videos=0, progress=False)
        entry["success"] = {t: {k: r[k] for k in ("successes", "episodes", "success_rate", "ci95")}
                            for t, r in res["tasks"].items()}
        entry["mean_success_rate"] = res["mean_success_rate"]
        entry["eval_seconds"] = res["wall_seconds"]
        reference_eval = reference_eval or res["episodes"]
        entry["paired_vs_none"] = paired_comparison(reference_eval, res["episodes"])
        print(mode, entry["success"], entry["paired_vs_none"], flush=True)
        write_json_atomic(report, out)  # after each mode: a partial run keeps its numbers
    print(table(report))


def table(report: dict) -> str:
    lines = ["| --quantize | weights MiB | decode ms/chunk (median) | chunks equal | within +-1 bin | "
             "off by > 10% of range | max bin diff | success (all tasks) |", "|---|---|---|---|---|---|---|---|"]
    for mode, e in report["modes"].items():
        ok = "-"
        if "success" in e:
            s = sum(r["successes"] for r in e["success"].values())
            n = sum(r["episodes"] for r in e["success"].values())
            ok = f"{s}/{n} ({e['mean_success_rate']:.0%})"
        lines.append(f"| {mode} | {e['weight_mib']:.2f} | {e['decode_ms_per_chunk_batch1']['median']:.1f} | "
                     f"{e['chunks_equal']:.0%} | {e['chunks_within_1_bin']:.0%} | "
                     f"{e['chunks_off_by_over_10pct']:.0%} | {e['max_bin_difference']} | {ok} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
