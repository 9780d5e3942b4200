"""Quickstart benchmark: wall time by phase and closed-loop evaluation throughput.

Runs `vla0 quickstart` into --out (phases already done there are reused, so point --out at a
fresh folder to time everything) and writes bench/results/quickstart.json.

    python bench/quickstart.py --out runs/bench_quickstart
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench_quickstart")
    ap.add_argument("--result", default=str(Path(__file__).parent / "results" / "quickstart.json"))
    args = ap.parse_args()
    from vla0.io import write_json_atomic
    from vla0.quickstart import QuickstartConfig, run_quickstart
    t0 = time.perf_counter()
    results = run_quickstart(QuickstartConfig(out=args.out, progress=False))
    wall = time.perf_counter() - t0
    out = Path(args.out)
    timings = json.loads((out / "timings.json").read_text())
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_end": os.getloadavg()},
        "wall_seconds_this_call": round(wall, 1),
        "phase_seconds": timings,
        "total_seconds": round(sum(timings.values()), 1),
        "eval_episodes_per_minute": {k: r.get("episodes_per_minute") for k, r in results.items()},
        "mean_success_rate": {k: r["mean_success_rate"] for k, r in results.items()},
        "per_task": {k: {t: v["success_rate"] for t, v in r["tasks"].items()} for k, r in results.items()},
    }
    write_json_atomic(report, Path(args.result))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
