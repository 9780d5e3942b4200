"""Forked DataLoader workers and FFmpeg: no hang, by repetition.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/loader_fork.py [--iterations 100]

The hang this guards against (vla0.data.video._INHERITED, vla0.train.loader.training_loader): a
worker forked while the parent holds open video containers must never free them, because FFmpeg
would wait forever to join decoder threads that exist only in the parent. Each iteration makes
that situation on purpose: the parent reads a few samples (its containers are then open), then a
2-worker loader forks and streams 12 micro-batches (seeks and decodes in both workers). A hang
shows as this script never finishing (run it under `timeout`). Writes
bench/results/loader_fork.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from vla0.config import PolicyConfig  # noqa: E402
from vla0.data.chunks import ChunkDataset  # noqa: E402
from vla0.data.lerobot_dataset import load_lerobot  # noqa: E402
from vla0.data.lerobot_writer import LeRobotWriter  # noqa: E402
from vla0.data.streaming import FrameSource  # noqa: E402
from vla0.io import write_json_atomic  # noqa: E402
from vla0.model.tiny import init_model  # noqa: E402
from vla0.model.vlm import load_processor  # noqa: E402
from vla0.processor import ActionProcessor  # noqa: E402
from vla0.prompt import collate  # noqa: E402
from vla0.train.loader import StepSampler, TrainingExamples, text_example, training_loader  # noqa: E402


def moving_frames(T: int, e: int, h: int = 24, w: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.stack([np.stack([(xx * 6 + t * 5 + e * 30) % 256, yy * 9, np.full_like(xx, 60 + 40 * e)], -1)
                     for t in range(T)]).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "loader_fork.json"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        writer = LeRobotWriter(Path(tmp) / "data", 10, {"a": (24, 32), "b": (24, 32)}, 2, 2)
        for e, T in enumerate([37, 5, 23, 41, 30]):  # longer than a GOP (16): seeks land between keyframes
            f = moving_frames(T, e)
            writer.add_episode({"a": f, "b": 255 - f}, rng.normal(size=(T, 2)), rng.normal(size=(T, 2)), f"task {e}")
        data = load_lerobot(writer.finalize(), decode=False)
        model = init_model("tiny", Path(tmp) / "model", seed=0)
        config = PolicyConfig(action_dim=2, cameras=["a", "b"], chunk_size=2, num_bins=100, image_size=[28, 28],
                              action_stats={k: v.tolist() for k, v in data.stats["action"].items()})
        processor = ActionProcessor(config, *load_processor(model))
        make = partial(text_example, processor, mask_max_frac=0.4, p_no_mask=0.1)
        examples = TrainingExamples(ChunkDataset(data, config.image_keys, 2, FrameSource(data)), make, seed=3)
        pad = partial(collate, pad_id=processor.pad_id, padding_side="right")
        t0, batches = time.perf_counter(), 0
        for it in range(args.iterations):
            for i in rng.integers(0, len(data), 5):  # the parent reads: its containers are open at the fork
                examples[(0, int(i))]
            sampler = StepSampler(len(data), 4, 1, 0, seed=it, start=0, stop=12)
            batches += len(list(training_loader(examples, sampler, pad, workers=2, prefetch=2)))
            print(f"iteration {it + 1}/{args.iterations}: {batches} batches, {time.perf_counter() - t0:.0f} s", flush=True)
    report = {"bench": "loader_fork", "iterations": args.iterations, "workers": 2, "batches": batches,
              "finished": "all iterations (a hang would have kept this file from being written)", "seconds": round(time.perf_counter() - t0, 1),
              "command": f"python bench/loader_fork.py --iterations {args.iterations}"}
    write_json_atomic(report, Path(args.out))
    print(report)


if __name__ == "__main__":
    main()
