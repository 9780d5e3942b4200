"""`vla0-to-lerobot POLICY OUT`: a vla0 policy (or run folder) as a LeRobot policy folder, for
`lerobot-eval --policy.path=OUT`. The vla0 policy is copied into OUT/vla0 unchanged; LeRobot's
config.json and processor files are written around it. (The other way needs nothing: `vla0 eval`
and `vla0 serve` read a LeRobot folder of this plugin directly.)"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from lerobot.configs.types import FeatureType, PolicyFeature

from vla0.config import IMAGE_PREFIX, PolicyConfig
from vla0.io import save_folder_atomic
from vla0.policy.policy import resolve_policy_dir
from vla0.train.checkpoint import TRAINER_STATE

from lerobot_policy_vla0.configuration_vla0 import VLA0Config
from lerobot_policy_vla0.modeling_vla0 import VLA0_FOLDER
from lerobot_policy_vla0.processor_vla0 import make_vla0_pre_post_processors


def lerobot_config(pc: PolicyConfig, device: str = "cpu") -> VLA0Config:
    """The LeRobot config that describes a vla0 policy: its cameras, action size and options."""
    inputs = {IMAGE_PREFIX + c: PolicyFeature(FeatureType.VISUAL, (3, *pc.camera_shapes.get(c, pc.image_size or [224, 224])))
              for c in pc.cameras}
    if pc.state_dim:
        inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (pc.state_dim,))
    return VLA0Config(
        input_features=inputs, output_features={"action": PolicyFeature(FeatureType.ACTION, (pc.action_dim,))},
        device=device, push_to_hub=False, model=pc.base_model or None, chunk_size=pc.chunk_size,
        n_action_steps=pc.n_action_steps, num_bins=pc.num_bins, normalization=pc.normalization,
        action_format=pc.action_format, cameras=[IMAGE_PREFIX + c for c in pc.cameras], image_layout=pc.image_layout,
        image_size=pc.image_size, crop_fraction=pc.crop_fraction, ensemble=pc.ensemble,
        ensemble_weights=pc.ensemble_weights)


def convert(policy: str | Path, out: str | Path) -> Path:
    source = resolve_policy_dir(policy)
    pc = PolicyConfig.load(source)
    if pc.head != "text":
        raise ValueError(f"{source}: a {pc.head}-head policy; the LeRobot plugin runs text-head (VLA-0) policies")
    config = lerobot_config(pc)

    def write(tmp: Path) -> None:
        shutil.copytree(source, tmp / VLA0_FOLDER, ignore=shutil.ignore_patterns(TRAINER_STATE))
        config._save_pretrained(tmp)
        pre, post = make_vla0_pre_post_processors(config)
        pre.save_pretrained(tmp)
        post.save_pretrained(tmp)

    save_folder_atomic(Path(out), write)
    return Path(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="vla0-to-lerobot", description=__doc__)
    ap.add_argument("policy", help="vla0 policy folder or run folder")
    ap.add_argument("out", help="LeRobot policy folder to write (lerobot-eval --policy.path=OUT)")
    args = ap.parse_args(argv)
    print(convert(args.policy, args.out))


if __name__ == "__main__":
    main()
