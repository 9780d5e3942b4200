"""`vla0 init-model`, `vla0 train`, `vla0 predict`, `vla0 import-vla0`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vla0.options import add_options, build


def cmd_init_model(args) -> None:
    from vla0.model.tiny import init_model
    out = init_model(args.preset, Path(args.out), seed=args.seed)
    print(f"wrote {args.preset} model to {out}")


def train_config(args):
    """The run's TrainConfig: the dataclass defaults, then the --recipe's values, then the flags given
    (a training length given as --steps replaces a recipe's --epochs, and the other way round)."""
    from vla0.train.recipes import recipe
    from vla0.train.trainer import TrainConfig
    base = recipe(args.recipe) if args.recipe else {}
    for given, other in (("steps", "epochs"), ("epochs", "steps")):
        if given in vars(args):
            base.pop(other, None)
    return build(TrainConfig, args, base)


def cmd_train(args) -> None:
    from vla0.train.trainer import train
    print(f"policy written to {train(train_config(args))}")


def cmd_predict(args) -> None:
    import numpy as np

    from vla0.config import PolicyConfig
    from vla0.data.hub import resolve_dataset
    from vla0.data.lerobot_dataset import load_lerobot
    from vla0.data.streaming import FrameSource
    from vla0.policy.policy import VLA0Policy, resolve_policy_dir
    cameras = PolicyConfig.load(resolve_policy_dir(args.policy)).cameras  # checked before the model loads
    data = load_lerobot(resolve_dataset(args.dataset), cameras=cameras, decode=False)  # one frame is read, not all
    policy = VLA0Policy.from_pretrained(args.policy)
    i = args.frame
    if not 0 <= i < len(data):
        raise ValueError(f"--frame {i} is outside {args.dataset} (0..{len(data) - 1})")
    frames = FrameSource(data)
    obs = {k: frames(k, i)[None] for k in policy.config.image_keys}
    obs["task"] = [data.tasks[int(data.task_index[i])]]
    chunk = policy.predict_action_chunk(obs)[0]
    truth = data.action[np.minimum(np.arange(i, i + policy.config.chunk_size), len(data.action) - 1)]
    np.set_printoptions(precision=3, suppress=True)
    print(f"task: {obs['task'][0]}\npredicted chunk:\n{chunk}\ndataset chunk:\n{truth}")
    print(f"mean abs error: {np.abs(chunk - truth).mean():.4f}")


def cmd_import_vla0(args) -> None:
    from vla0.model.official import import_run
    out = import_run(args.run_dir, args.out, processor=args.processor, trust_pickle=args.trust_pickle)
    print(f"imported {args.run_dir} as the vla0 policy {out}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from vla0.model.tiny import PRESETS
    from vla0.train.recipes import RECIPES
    from vla0.train.trainer import TrainConfig

    p = sub.add_parser("init-model", help="build a randomly initialised model with a generated tokenizer: tiny "
                                          "(the quickstart's) or qwen2.5-vl-3b-shape (3.75 B parameters, bf16, ~8 GB)")
    p.add_argument("preset", choices=list(PRESETS))
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_init_model)

    p = sub.add_parser("train", help="fine-tune a VLM on a LeRobot dataset (VLA-0)")
    p.add_argument("--recipe", default=None, help=f"start from a named recipe ({', '.join(sorted(RECIPES))}); "
                                                  "flags given here override its values")
    add_options(p, TrainConfig)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="predict one action chunk for a dataset frame")
    p.add_argument("--policy", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--frame", type=int, default=0)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("import-vla0", help="turn a run folder of VLA-0's released code (NVlabs/vla0: model_last/, "
                                           "model_last.pth, dataset_stats.pkl, config.yaml) into a vla0 policy")
    p.add_argument("run_dir")
    p.add_argument("out", help="policy folder to write (must not exist)")
    p.add_argument("--processor", default=None, help="tokenizer and image processor: a folder or hub id (default: "
                                                     "model_last/ when it holds them, else the run's base model)")
    p.add_argument("--trust-pickle", action="store_true", help="unpickle dataset_stats.pkl even if it holds types "
                                                               "other than plain data (runs the code it names)")
    p.set_defaults(func=cmd_import_vla0)
