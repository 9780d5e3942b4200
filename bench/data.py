"""Training data at scale: peak memory of `vla0 train` against dataset size, and loader throughput.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/data.py            # both parts, bench/results/data.json
    python bench/data.py --only throughput

Synthetic LeRobot v3.0 datasets of 1k, 10k and 100k frames, two 256x256 cameras, 10 fps, episodes
of 100 frames. Generating 100k frames of video per camera would take longer than the benchmark,
so the videos are made once and shared: vla0's LeRobotWriter records a real 1,000-frame dataset
(10 episodes of distinct, moving content, x264 as vla0 collect writes it), and the larger datasets
repeat its episodes: their data parquet holds every row (100k rows with their own episode and
frame indices) and their episode table points each episode at one of the 10 recorded segments of
the same video files (v3.0 locates an episode by file and timestamps, so this is a valid dataset,
LeRobot's own layout). What the trainer reads per sample (a seek and a decode of 256x256 frames)
is what a real dataset costs; only the disk footprint is smaller.

Memory: `vla0 train` (the tiny model, both cameras resized to 224x224 and tiled, batch 4, 200
steps, 1 loader worker) runs as a subprocess; peak resident memory is sampled every 0.2 s for the trainer process
(RSS) and for the trainer and its DataLoader workers together (PSS: shared pages counted once).
For comparison, the same datasets decoded into memory the old way (load_lerobot(decode=True)),
measured at 1k and 10k frames.

Throughput: samples/s the DataLoader delivers (seek, decode, crop, resize, tile, tokenise,
collate) with 0, 1 and 2 workers, and from the frame cache, against the samples/s of the tiny
model's training step at the same shape.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from vla0.io import write_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE, EPISODE, BASE_EPISODES = 256, 100, 10
TASKS = ["stack the red block", "open the top drawer"]


def frames(e: int, cam: int) -> np.ndarray:
    """An episode of moving, textured content: what a codec must really encode."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out = np.empty((EPISODE, SIZE, SIZE, 3), np.uint8)
    for t in range(EPISODE):
        cx, cy = SIZE / 2 + 70 * np.cos(0.07 * t + e), SIZE / 2 + 70 * np.sin(0.07 * t + e + cam)
        disk = (xx - cx) ** 2 + (yy - cy) ** 2 < 400
        out[t, ..., 0] = (xx * 3 + yy + 11 * e + 40 * cam) % 256
        out[t, ..., 1] = (yy * 2 + 3 * t) % 256
        out[t, ..., 2] = np.where(disk, 255, 60 + 15 * e)
    return out


def base_dataset(root: Path) -> Path:
    from vla0.data.lerobot_writer import LeRobotWriter
    if (root / "meta/info.json").exists():
        return root
    w = LeRobotWriter(root, 10, {"agentview": (SIZE, SIZE), "wrist": (SIZE, SIZE)}, 8, 7)
    rng = np.random.default_rng(0)
    for e in range(BASE_EPISODES):
        t = np.arange(EPISODE)[:, None]
        actions = np.sin(0.1 * t + np.arange(7) + e).astype(np.float32) + 0.01 * rng.normal(size=(EPISODE, 7))
        w.add_episode({"agentview": frames(e, 0), "wrist": frames(e, 1)}, rng.normal(size=(EPISODE, 8)),
                      actions.astype(np.float32), TASKS[e % 2])
    return w.finalize()


def scaled_dataset(base: Path, root: Path, total: int) -> Path:
    """base's episodes repeated to `total` frames; videos shared (see the module docstring)."""
    if (root / "meta/info.json").exists():
        return root
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp, ignore=shutil.ignore_patterns("*.parquet"))
    shutil.copy(base / "meta/tasks.parquet", tmp / "meta/tasks.parquet")
    data = pq.read_table(base / "data/chunk-000/file-000.parquet")
    eps = pq.read_table(base / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    n_eps = total // EPISODE
    tables, rows = [], []
    for e in range(n_eps):
        src = e % BASE_EPISODES
        part = data.slice(src * EPISODE, EPISODE)
        part = part.set_column(part.schema.get_field_index("episode_index"), "episode_index",
                               pa.array(np.full(EPISODE, e, np.int64)))
        part = part.set_column(part.schema.get_field_index("index"), "index",
                               pa.array(np.arange(e * EPISODE, (e + 1) * EPISODE, dtype=np.int64)))
        tables.append(part)
        rows.append(dict(eps[src], episode_index=e, dataset_from_index=e * EPISODE,
                         dataset_to_index=(e + 1) * EPISODE))
    pq.write_table(pa.concat_tables(tables), tmp / "data/chunk-000/file-000.parquet")
    (tmp / "meta/episodes/chunk-000").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp / "meta/episodes/chunk-000/file-000.parquet")
    info = json.loads((base / "meta/info.json").read_text())
    info.update(total_episodes=n_eps, total_frames=n_eps * EPISODE, splits={"train": f"0:{n_eps}"})
    (tmp / "meta/info.json").write_text(json.dumps(info, indent=2))
    tmp.rename(root)
    return root


def peak_memory(cmd: list[str], env: dict) -> dict:
    """Run cmd; sample the trainer's RSS and the PSS of it plus its children every 0.2 s."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    main = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        try:
            procs = [main] + main.children(recursive=True)
            peak_rss = max(peak_rss, main.memory_info().rss)
            pss = 0
            for p in procs:
                try:
                    pss += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peak_pss = max(peak_pss, pss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    err = proc.stderr.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {"peak_rss_trainer_mb": peak_rss / 2**20, "peak_pss_with_workers_mb": peak_pss / 2**20,
            "wall_s": time.perf_counter() - t0}


def in_memory_rss(dataset: Path) -> float:
    """Peak RSS (MB) of a fresh process that decodes the dataset into memory (the old loader)."""
    code = ("import resource, sys; from vla0.data.lerobot_dataset import load_lerobot; "
            "d = load_lerobot(sys.argv[1]); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(dataset)], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return float(out.stdout.split()[-1])


def memory(work: Path, model: Path, steps: int, sizes: list[int], batch: int) -> dict:
    base = base_dataset(work / "base-1k")
    results = {}
    for total in sizes:
        ds = base if total == BASE_EPISODES * EPISODE else scaled_dataset(base, work / f"ds-{total}", total)
        out = work / f"run-{total}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "vla0.cli", "train", "--model", str(model), "--dataset", str(ds),
               "--out", str(out), "--steps", str(steps), "--batch-size", str(batch), "--image-size", "224x224",
               "--chunk-size", "8", "--bins", "1000", "--lr", "1e-4", "--workers", "1", "--save-every",
               str(steps), "--no-progress", "--log-with", "none"]
        r = peak_memory(cmd, dict(os.environ, PYTHONPATH=str(ROOT)))
        log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
        r["steps"] = len(log)
        r["median_samples_per_s"] = float(np.median([x["samples_per_s"] for x in log[5:]]))
        if total <= 10_000:
            r["old_in_memory_load_peak_rss_mb"] = in_memory_rss(ds)
        results[str(total)] = r
        print(total, json.dumps(r), flush=True)
    small, large = results[str(min(sizes))], results[str(max(sizes))]
    results["ratio_largest_to_smallest_pss"] = large["peak_pss_with_workers_mb"] / small["peak_pss_with_workers_mb"]
    results["ratio_largest_to_smallest_rss"] = large["peak_rss_trainer_mb"] / small["peak_rss_trainer_mb"]
    return results


def throughput(work: Path, model: Path, batches: int) -> dict:
    import torch

    from vla0.config import PolicyConfig, stats_to_lists
    from vla0.data.chunks import ChunkDataset
    from vla0.data.lerobot_dataset import load_lerobot
    from vla0.data.streaming import FrameSource, build_frame_cache
    from vla0.model.vlm import load_vlm
    from vla0.processor import ActionProcessor
    from functools import partial

    from vla0.prompt import collate
    from vla0.train.loader import StepSampler, TrainingExamples, text_example, training_loader
    torch.set_num_threads(1)
    ds = scaled_dataset(base_dataset(work / "base-1k"), work / "ds-10000", 10_000)
    data = load_lerobot(ds, decode=False)
    config = PolicyConfig(action_dim=7, cameras=["agentview", "wrist"], chunk_size=8, num_bins=1000,
                          image_size=[224, 224], action_stats=stats_to_lists(data.stats["action"]))
    vlm = load_vlm(model)
    processor = ActionProcessor(config, vlm.tokenizer, vlm.image_processor)
    jitter = dict(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05)
    results = {"batch_size": 8, "cameras": "2 x 256x256 -> crop 0.875 -> 224x224, tiled, colour jitter"}

    def rate(source, workers):
        make = partial(text_example, processor, mask_max_frac=0.4, p_no_mask=0.1, jitter=jitter)
        examples = TrainingExamples(ChunkDataset(data, config.image_keys, 8, source), make, 0)
        loader = iter(training_loader(examples, StepSampler(len(data), 8, 1, 0, 0, 0, batches + 2),
                                      partial(collate, pad_id=processor.pad_id, padding_side="right"), workers=workers))
        next(loader), next(loader)  # workers started, first batches out
        t0 = time.perf_counter()
        for _ in range(batches):
            batch = next(loader)
        return 8 * batches / (time.perf_counter() - t0), batch

    for workers in (0, 1, 2):
        results[f"loader_samples_per_s_{workers}_workers"], batch = rate(FrameSource(data), workers)
        print(workers, results[f"loader_samples_per_s_{workers}_workers"], flush=True)
    cache = build_frame_cache(data, config.image_keys, work / "frame-cache", [224, 224], 0.875)
    results["loader_samples_per_s_frame_cache_0_workers"], _ = rate(FrameSource(data, cache), 0)
    # the tiny model's training step at this shape (forward, backward, AdamW), batch 8
    model_ = vlm.model.train()
    opt = torch.optim.AdamW(model_.parameters(), lr=1e-4)
    times = []
    for i in range(12):
        t0 = time.perf_counter()
        model_(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    results["tiny_model_step_samples_per_s"] = 8 / float(np.median(times[2:]))
    results["tokens_per_sample"] = int(batch["input_ids"].shape[1])
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/vla0-bench-data")
    ap.add_argument("--only", choices=("memory", "throughput"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "bench/results/data.json"))
    args = ap.parse_args()
    from vla0.model.tiny import init_model
    work = Path(args.work)
    model = work / "tiny"
    if not model.exists():
        init_model("tiny", model)
    path = Path(args.out)
    results = json.loads(path.read_text()) if path.exists() else {}
    t0 = time.perf_counter()
    if args.only != "throughput":
        results["memory"] = memory(work, model, args.steps, [int(s) for s in args.sizes.split(",")], args.batch_size)
    if args.only != "memory":
        results["throughput"] = throughput(work, model, args.batches)
    results["machine"] = f"{os.cpu_count()} CPU cores, no GPU, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    results.setdefault("wall_s", {})[args.only or "all"] = time.perf_counter() - t0
    write_json_atomic(results, path)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
