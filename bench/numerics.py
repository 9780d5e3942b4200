"""bf16 vs fp32 weights under the vla0-libero recipe: what VLA-0's released numerics (weights and
AdamW state in bf16, no fp32 master copy) do to training, measured on a small run.

The embedded tiny Qwen2.5-VL trains with `vla0 train --recipe vla0-libero` (bf16 autocast, no
clipping, constant lr, vision ids, masking, jitter) on a synthetic LeRobot v3.0 dataset in
HuggingFaceVLA/libero's layout whose actions are a function of the image and the task; only the
weight dtype (--model-dtype fp32 / bf16) and the learning rate change between runs. For each run:
the loss over the first and last 10% of steps, and after the run the fraction of weights that moved
at all and their median relative change. With bf16 weights an AdamW step of about lr moves a
weight w only if lr > ~|w| * 2^-9 (half a bf16 ulp): at lr 5e-6 most weights of |w| > 3e-3 never move.

    python bench/numerics.py                    # 4 runs x 200 steps, about 10 min on 2 cores
    python bench/numerics.py --steps 3 --smoke  # checks the script (seconds)
Writes bench/results/numerics.json.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TASKS = ["put the bowl on the plate", "open the top drawer of the cabinet"]


def write_dataset(root: Path, episodes: int, steps: int, size: int) -> Path:
    """Two cameras (image, image2), 8-D state, 7-D actions that depend on the frame and the task."""
    from vla0.data.lerobot_writer import LeRobotWriter
    writer = LeRobotWriter(root, fps=10, cameras={"image": (size, size), "image2": (size, size)}, state_dim=8,
                           action_dim=7)
    for e in range(episodes):
        sign = 1.0 if e % 2 else -1.0
        t = np.arange(steps)
        image = np.zeros((steps, size, size, 3), np.uint8)
        for i in t:  # a bar that grows with t, its colour set by the episode
            image[i, :, : (i + 1) * size // steps] = (255, 40 * (e % 5), 0)
        actions = np.stack([sign * np.sin(t / 3), np.cos(t / 3), sign * t / steps, 0 * t, 0 * t, 0 * t,
                            np.where(t > steps // 2, 1.0, -1.0)], 1).astype(np.float32)
        writer.add_episode({"image": image, "image2": image[:, ::-1].copy()}, state=np.zeros((steps, 8), np.float32),
                           action=actions, task=TASKS[e % 2])
    return writer.finalize()


def run(dataset: Path, model: Path, out: Path, dtype: str, lr: float, steps: int, size: int) -> dict:
    from vla0.cli import build_parser
    from vla0.cli.train import train_config
    from vla0.train.trainer import Trainer
    args = build_parser().parse_args([
        "train", "--recipe", "vla0-libero", "--dataset", str(dataset), "--model", str(model), "--out", str(out),
        "--steps", str(steps), "--batch-size", "8", "--image-size", f"{size}x{size}", "--workers", "0",
        "--model-dtype", dtype, "--lr", str(lr), "--save-every", str(10 * steps), "--no-progress",
        "--log-with", "none", "--seed", "0"])
    torch.manual_seed(0)
    trainer = Trainer(train_config(args))
    start = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters()}
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    losses = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    moved, rel = 0, []
    total = 0
    for n, p in trainer.model.named_parameters():
        delta = (p.detach().float() - start[n]).abs()
        moved += int((delta > 0).sum())
        total += delta.numel()
        scale = start[n].abs().clamp_min(1e-12)
        rel.append((delta / scale).flatten())
    k = max(1, steps // 10)
    return {"weights": dtype, "lr": lr, "steps": steps, "loss_first": float(np.mean(losses[:k])),
            "loss_last": float(np.mean(losses[-k:])), "fraction_of_weights_moved": moved / total,
            "median_relative_change": float(torch.cat(rel).median()), "seconds": round(seconds, 1),
            "optimizer_state_dtype": str(next(s["exp_avg"].dtype for s in trainer.optimizer.state.values() if s))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lrs", default="5e-6,1e-4", help="learning rates, comma-separated (5e-6: the recipe's)")
    ap.add_argument("--size", type=int, default=56, help="px per camera")
    ap.add_argument("--smoke", action="store_true", help="write bench/results/numerics_smoke.json instead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from vla0.model.tiny import init_model
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = init_model("tiny", tmp / "model", seed=0)
        dataset = write_dataset(tmp / "data", episodes=8, steps=16, size=args.size)
        runs = []
        for lr in [float(x) for x in args.lrs.split(",")]:
            for dtype in ("fp32", "bf16"):
                runs.append(run(dataset, model, tmp / f"run-{dtype}-{lr}", dtype, lr, args.steps, args.size))
                print(json.dumps(runs[-1]))
    result = {"bench": "numerics", "model": "embedded tiny Qwen2.5-VL (random init)",
              "recipe": "vla0-libero", "dataset": "synthetic, 8 episodes x 16 steps, 2 cameras", "size": args.size,
              "batch_size": 8, "runs": runs, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(),
              "command": "python bench/numerics.py" + (f" --steps {args.steps}" if args.steps != 200 else "")
                         + (" --smoke" if args.smoke else "")}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("numerics_smoke.json" if args.smoke else "numerics.json")
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
