"""`--compile`: per-chunk latency of a policy with and without torch.compile, and what compiling costs.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/compile.py [--device cuda] [--model MODEL_DIR]

A policy at the paper's shape (H=8, D=7, B=1000, two 64 px cameras tiled) on the embedded tiny
model (or --model, e.g. one built by `vla0 init-model qwen2.5-vl-3b-shape`), untrained weights
(decoding still writes the grammar's 56 numbers). For each mode (none, then each --modes): the
first call's seconds (compilation included), the median seconds per chunk over --repeats calls
at batch 1 and 16 (greedy, fast decoder, no drafts), and whether the chunks equal the eager
ones. Writes bench/results/compile.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vla0.config import PolicyConfig  # noqa: E402
from vla0.io import write_json_atomic  # noqa: E402
from vla0.model.tiny import init_model  # noqa: E402
from vla0.policy.policy import VLA0Policy  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def observations(batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"observation.images.a": rng.integers(0, 255, (batch, 64, 64, 3), dtype=np.uint8),
            "observation.images.b": rng.integers(0, 255, (batch, 64, 64, 3), dtype=np.uint8),
            "task": ["put the bowl on the plate"] * batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the embedded tiny model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--modes", default="default", help="comma-separated torch.compile modes")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=str(RESULTS / "compile.json"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "policy"
        if args.model is None:
            init_model("tiny", folder, seed=0)
        else:  # the model's files linked, not copied (7.5 GB at the 3B shape), beside our policy config
            folder.mkdir()
            for f in Path(args.model).resolve().iterdir():
                (folder / f.name).symlink_to(f)
        PolicyConfig(action_dim=7, cameras=["a", "b"], chunk_size=8, num_bins=1000, image_size=[64, 64],
                     crop_fraction=1.0, action_stats={"min": [-1.0] * 7, "max": [1.0] * 7}, ensemble=1).save(folder)
        batches = [int(b) for b in args.batches.split(",")]
        dtype = getattr(torch, args.dtype)
        results, reference = {}, {}
        for mode in ["none"] + [m.strip() for m in args.modes.split(",")]:
            policy = VLA0Policy.from_pretrained(folder, device=args.device, dtype=dtype, compile_mode=mode)
            row = {}
            for b in batches:
                obs = observations(b)
                t0 = time.perf_counter()
                chunks = policy.predict_action_chunk(obs)
                first = time.perf_counter() - t0
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    policy.predict_action_chunk(obs)
                    times.append(time.perf_counter() - t0)
                if mode == "none":
                    reference[b] = chunks
                row[f"batch_{b}"] = {"first_call_s": round(first, 3), "median_s": round(float(np.median(times)), 4),
                                     "chunks_equal_eager": bool(np.array_equal(chunks, reference[b]))}
                print(mode, b, row[f"batch_{b}"], flush=True)
            results[mode] = row
    report = {"bench": "compile", "model": args.model or "embedded tiny (untrained)", "device": args.device,
              "dtype": args.dtype, "shape": {"H": 8, "D": 7, "B": 1000, "cameras": 2, "camera_px": 64},
              "repeats": args.repeats, "results": results,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                          "load_avg_end": list(os.getloadavg())}}
    write_json_atomic(report, Path(args.out))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
