"""The `vla0` command: one subcommand per job, each a thin layer over a library function."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Two cores oversubscribed by torch's default threads made training 10x slower here.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace("x", ",").split(",") if x]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def cmd_init_model(args) -> None:
    from vla0.model.tiny import init_model
    out = init_model(args.preset, Path(args.out), seed=args.seed)
    print(f"wrote {args.preset} model to {out}")


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder (vla0 init-model) or hub id, e.g. Qwen/Qwen2.5-VL-3B-Instruct")
    p.add_argument("--dataset", required=True, help="LeRobotDataset folder (v3.0 or v2.1)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, policy/, train_log.jsonl")
    p.add_argument("--cameras", type=_names, default=None, help="comma-separated camera names (default: all)")
    p.add_argument("--horizon", type=int, default=8, help="H, steps per action chunk")
    p.add_argument("--bins", type=int, default=1000, dest="num_bins", help="B, actions are integers 0..B")
    p.add_argument("--normalization", choices=["minmax", "quantile"], default="minmax")
    p.add_argument("--image-layout", choices=["tile", "separate"], default="tile")
    p.add_argument("--image-size", type=_ints, default=None, help="HxW each camera is resized to, e.g. 84x84")
    p.add_argument("--crop", type=float, default=0.875, dest="crop_fraction", help="random-crop fraction (1 = off)")
    p.add_argument("--mask-max-frac", type=float, default=0.4, help="masked action augmentation, max fraction")
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999))
    p.add_argument("--schedule", choices=["constant", "cosine"], default="constant")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--lora-rank", type=int, default=0, help="0 = full fine-tuning")
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-targets", type=_names, default=["q_proj", "k_proj", "v_proj", "o_proj"])
    p.add_argument("--ensemble", type=int, default=8, help="temporal ensembling window stored with the policy")
    p.add_argument("--action-horizon", type=int, default=1, help="steps executed per prediction, stored with the policy")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def cmd_train(args) -> None:
    from vla0.train.trainer import TrainConfig, train
    fields = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    print(f"policy written to {train(cfg)}")


def cmd_predict(args) -> None:
    import numpy as np

    from vla0.data.lerobot_dataset import load_lerobot
    from vla0.policy.policy import VLA0Policy
    policy = VLA0Policy.from_pretrained(args.policy)
    data = load_lerobot(Path(args.dataset), cameras=policy.config.cameras)
    i = args.frame
    obs = {k: data.images[k][i:i + 1] for k in policy.config.image_keys}
    obs["task"] = [data.tasks[int(data.task_index[i])]]
    chunk = policy.predict_action_chunk(obs)[0]
    truth = data.action[np.minimum(np.arange(i, i + policy.config.horizon), len(data.action) - 1)]
    np.set_printoptions(precision=3, suppress=True)
    print(f"task: {obs['task'][0]}\npredicted chunk:\n{chunk}\ndataset chunk:\n{truth}")
    print(f"mean abs error: {np.abs(chunk - truth).mean():.4f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla0", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init-model", help="build the embedded model (random init, generated tokenizer)")
    p.add_argument("preset", choices=["tiny"])
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_init_model)

    p = sub.add_parser("train", help="fine-tune a VLM on a LeRobot dataset (VLA-0)")
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="predict one action chunk for a dataset frame")
    p.add_argument("--policy", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--frame", type=int, default=0)
    p.set_defaults(func=cmd_predict)

    from vla0.rl.cli import add_parser as add_rl
    from vla0.serve.cli import add_parser as add_serve
    from vla0.sim.cli import add_parsers as add_sim
    add_sim(sub)
    add_rl(sub)
    add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as e:  # OSError: missing files and folders, no GL library
        # A user's mistake gets one line naming what and where, not a traceback.
        if os.environ.get("VLA0_DEBUG"):
            raise
        print(f"vla0 {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
