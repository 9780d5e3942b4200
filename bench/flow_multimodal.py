"""Multimodality check: do the heads keep two distinct ways of reaching a goal apart?

A synthetic task: from the start, reach the goal straight ahead; an obstacle sits half way, and the
demonstrations go around it on the left in half of the episodes and on the right in the other half,
from the very same first image. Each episode's actions are its 8 waypoints (x, y), so the chunk
predicted at the first frame is the whole path. An average of the two modes runs into the obstacle.

Stage 1 trains the tiny VLM to write the waypoints as text; stage 2 trains a flow head on it (VLM
frozen). At the first frame we draw many flow samples (different noise) and the greedy text chunk,
and count left / right / through-the-obstacle paths. Writes bench/results/flow_multimodal.json and
flow_multimodal.png.

    python bench/flow_multimodal.py --out runs/bench_flow_multimodal
"""

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

RESULTS = Path(__file__).parent / "results"
H, SIZE, TASK = 8, 32, "reach the goal without touching the obstacle"
OBSTACLE, RADIUS, DETOUR = np.array([0.0, 0.5]), 0.15, 0.4
MARKER = 3  # the robot is a (2 * MARKER + 1)-pixel square: a 3-pixel dot was not read by a short stage 1


def demo_path(side: float) -> np.ndarray:
    """(H, 2) waypoints from (0, 0) to (0, 1), bulging DETOUR to one side around the obstacle."""
    s = np.linspace(1 / H, 1, H)
    return np.stack([side * DETOUR * np.sin(np.pi * s), s], axis=1).astype(np.float32)


def frame(position: np.ndarray) -> np.ndarray:
    """The scene: goal (green) at the top, obstacle (red) in the middle, the robot (white) where it is."""
    img = np.zeros((SIZE, SIZE, 3), np.uint8)

    def px(p):
        return int(np.clip((1 - p[1]) * (SIZE - 8) + 4, 0, SIZE - 1)), int(np.clip(p[0] * (SIZE - 8) / 2 + SIZE / 2, 0, SIZE - 1))
    for p, colour, r in ((np.array([0.0, 1.0]), (0, 255, 0), 2), (OBSTACLE, (255, 0, 0), 3), (position, (255, 255, 255), MARKER)):
        y, x = px(p)
        img[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = colour
    return img


def write_dataset(root: Path, episodes: int) -> Path:
    from vla0.data.lerobot_writer import LeRobotWriter
    writer = LeRobotWriter(root, fps=10, cameras={"scene": (SIZE, SIZE)}, state_dim=2, action_dim=2)
    for e in range(episodes):
        path = demo_path(-1.0 if e % 2 == 0 else 1.0)
        positions = np.concatenate([[[0.0, 0.0]], path[:-1]]).astype(np.float32)
        # the action at step t is the next waypoint, so the chunk at frame 0 is the whole path
        writer.add_episode({"scene": np.stack([frame(p) for p in positions])}, state=positions, action=path, task=TASK)
    return writer.finalize()


def classify(paths: np.ndarray) -> dict:
    """Per path (with its start): through the obstacle (any point of the polyline within RADIUS of
    it), else left or right (every middle waypoint on that side), else mixed (switches sides)."""
    full = np.concatenate([np.zeros((len(paths), 1, 2), np.float32), paths], axis=1)
    s = np.linspace(0, 1, 20)[None, None, :, None]
    dense = full[:, :-1, None] + s * (full[:, 1:, None] - full[:, :-1, None])  # 20 points per segment
    hits = (np.linalg.norm(dense - OBSTACLE, axis=-1) < RADIUS).any(axis=(1, 2))
    middle = paths[:, 1:6, 0]
    left, right = ~hits & (middle < 0).all(axis=1), ~hits & (middle > 0).all(axis=1)
    return {"n": len(paths), "left": int(left.sum()), "right": int(right.sum()),
            "through_obstacle": int(hits.sum()), "mixed": int((~hits & ~left & ~right).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench_flow_multimodal")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--stage1-steps", type=int, default=800)
    ap.add_argument("--stage2-steps", type=int, default=2000)
    ap.add_argument("--expert-layers", default="-1", help="VLM hidden states the expert reads (e.g. 0,-1)")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--result", default=str(RESULTS / "flow_multimodal.json"))
    args = ap.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vla0.io import write_file_atomic, write_json_atomic
    from vla0.model.tiny import init_model
    from vla0.policy.policy import VLA0Policy
    from vla0.train.trainer import TrainConfig, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not (data / "meta" / "info.json").exists():
        write_dataset(data, args.episodes)
    if not (out / "model" / "config.json").exists():
        init_model("tiny", out / "model")
    common = dict(dataset=str(data), batch_size=16, lr=1e-3, schedule="cosine", warmup_steps=30, progress=False,
                  ensemble=1)
    seconds_file = out / "train_seconds.json"
    seconds = json.loads(seconds_file.read_text()) if seconds_file.exists() else {}
    for name, cfg in (("stage1", dict(model=str(out / "model"), out=str(out / "text"), steps=args.stage1_steps,
                                      chunk_size=H, num_bins=100, crop_fraction=1.0, mask_max_frac=0.0)),
                      ("stage2", dict(head="flow", from_policy=str(out / "text"), out=str(out / "flow"),
                                      steps=args.stage2_steps, expert_depth=4, expert_layers=args.expert_layers))):
        if not (Path(cfg["out"]) / "policy" / "vla0_policy.json").exists():
            t0 = time.perf_counter()
            train(TrainConfig(**common, **cfg, save_every=cfg["steps"]))
            seconds[name] = round(time.perf_counter() - t0, 1)
            write_json_atomic(seconds, seconds_file)

    start = {"observation.images.scene": frame(np.zeros(2))[None], "task": [TASK]}
    many = {"observation.images.scene": np.repeat(start["observation.images.scene"], args.samples, 0),
            "task": [TASK] * args.samples}
    text = VLA0Policy.from_pretrained(out / "text").predict_action_chunk(start)
    sampled_text = VLA0Policy.from_pretrained(out / "text", temperature=1.0,
                                              generator=torch.Generator().manual_seed(0)).predict_action_chunk(many)
    flow = VLA0Policy.from_pretrained(out / "flow", generator=torch.Generator().manual_seed(0)).predict_action_chunk(many)

    report = {"episodes": args.episodes, "expert_layers": args.expert_layers, "demos": {"left": args.episodes // 2, "right": args.episodes - args.episodes // 2},
              "stage1_steps": args.stage1_steps, "stage2_steps": args.stage2_steps, "train_seconds": seconds,
              "flow_samples": classify(flow), "text_greedy": classify(text), "text_sampled_t1": classify(sampled_text),
              "text_greedy_path": text[0].round(3).tolist()}
    write_json_atomic(report, Path(args.result))

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), sharex=True, sharey=True)
    panels = (("flow head: samples", flow), ("text head: greedy", text), ("text head: sampled (T=1)", sampled_text))
    for ax, (title, paths) in zip(axes, panels):
        for side in (-1.0, 1.0):
            demo = np.concatenate([[[0, 0]], demo_path(side)])
            ax.plot(demo[:, 0], demo[:, 1], "--", color="grey", lw=1)
        for p in paths:
            p = np.concatenate([[[0, 0]], p])
            ax.plot(p[:, 0], p[:, 1], "-", color="tab:blue", lw=2.5 if len(paths) == 1 else 0.6, alpha=1 if len(paths) == 1 else 0.4)
        ax.add_patch(plt.Circle(OBSTACLE, RADIUS, color="tab:red", alpha=0.5))
        ax.plot([0], [1], "g*", ms=12)
        c = classify(paths)
        ax.set_title(f"{title}\nleft {c['left']}, right {c['right']}, through the obstacle "
                     f"{c['through_obstacle']}, mixed {c['mixed']} (of {c['n']})",
                     fontsize=9)
        ax.set_aspect("equal")
    axes[0].set_xlim(-0.7, 0.7)
    fig.suptitle("two demonstrated modes (dashed) around an obstacle, from the same first image")
    fig.tight_layout()
    write_file_atomic(Path(args.result).with_suffix(".png"), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
