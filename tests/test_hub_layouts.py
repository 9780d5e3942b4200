"""The LIBERO datasets as they are on the hub (tests/hub_layouts.py builds both layouts small):
keys mapped to LeRobot's standard ones, the vla0-libero recipe training on each, and the official
training numerics (bf16 weights and AdamW state, no clipping)."""

import numpy as np
import pytest
import torch

from hub_layouts import write_hf_libero, write_pi_libero
from vla0.cli import main
from vla0.config import PolicyConfig
from vla0.data.lerobot_dataset import load_lerobot


@pytest.fixture(scope="module")
def pi_libero(tmp_path_factory):
    return write_pi_libero(tmp_path_factory.mktemp("hub") / "physical-intelligence-libero")


@pytest.fixture(scope="module")
def hf_libero(tmp_path_factory):
    return write_hf_libero(tmp_path_factory.mktemp("hub") / "HuggingFaceVLA-libero")


def test_keys_as_the_dataset_spells_them(pi_libero, hf_libero):
    pi = load_lerobot(pi_libero, cameras=["image", "wrist_image"], action_key="actions")
    assert pi.version == "v2.0" and pi.action.shape == (12, 7) and pi.state.shape == (12, 8)
    assert pi.camera_keys == ["observation.images.image", "observation.images.wrist_image"]
    assert pi.images["observation.images.wrist_image"].shape == (12, 32, 32, 3)
    assert len(pi.stats["action"]["min"]) == 7 and "actions" not in pi.stats
    hf = load_lerobot(hf_libero, decode=False)
    assert hf.version == "v3.0" and hf.action.shape == (12, 7) and hf.state.shape == (12, 8)
    assert hf.camera_keys == ["observation.images.image", "observation.images.image2"]
    # the same episodes in both layouts
    np.testing.assert_array_equal(pi.action, hf.action)


def _train(dataset, model, out, *flags):
    return main(["train", "--recipe", "vla0-libero", "--dataset", str(dataset), "--model", str(model),
                 "--out", str(out), "--steps", "1", "--batch-size", "2", "--image-size", "28x28", "--workers", "0",
                 "--no-progress", "--log-with", "none", *flags])


@pytest.mark.parametrize("layout", ["pi", "hf"])
def test_vla0_libero_recipe_trains_on_both_hub_layouts(layout, pi_libero, hf_libero, tiny_model_dir, tmp_path):
    from vla0.envs.libero import CAMERAS
    flags = ["--cameras", "image,wrist_image", "--action-key", "actions"] if layout == "pi" else []
    assert _train(pi_libero if layout == "pi" else hf_libero, tiny_model_dir, tmp_path / "run", *flags) == 0
    config = PolicyConfig.load(tmp_path / "run" / "policy")
    cameras = ["image", "wrist_image"] if layout == "pi" else ["image", "image2"]
    assert config.cameras == cameras and config.state_dim == 8 and config.vision_id and config.mask_char == "?"
    assert config.camera_shapes == {c: [32, 32] for c in cameras}
    # evaluation on LIBERO renders the agentview into the first slot and the wrist camera into the second
    assert [CAMERAS[c] for c in config.cameras] == ["agentview", "robot0_eye_in_hand"]


def test_bad_keys_and_camera_sizes_fail_before_the_model(pi_libero, tmp_path, capsys):
    no_model = tmp_path / "no-model"  # never reached: each error comes first
    assert _train(pi_libero, no_model, tmp_path / "a", "--cameras", "image,wrist_image") == 2
    assert "no 'action' feature (features: image, wrist_image, state, actions" in capsys.readouterr().err
    assert _train(pi_libero, no_model, tmp_path / "b", "--cameras", "image,left", "--action-key", "actions") == 2
    assert "camera(s) ['left'] not in dataset" in capsys.readouterr().err
    assert _train(pi_libero, no_model, tmp_path / "c", "--action-key", "actions", "--state-key", "joints") == 2
    assert "no state feature 'joints'" in capsys.readouterr().err
    mixed = write_pi_libero(tmp_path / "mixed", wrist_size=24)
    assert main(["train", "--dataset", str(mixed), "--model", str(no_model), "--out", str(tmp_path / "d"),
                 "--steps", "1", "--action-key", "actions"]) == 2
    assert "cameras of different heights {'image': 32, 'wrist_image': 24}" in capsys.readouterr().err


def test_official_numerics_bf16_weights_and_adamw_state_no_clipping(hf_libero, tiny_model_dir, tmp_path, monkeypatch):
    from accelerate import Accelerator

    from vla0.cli import build_parser
    from vla0.cli.train import train_config
    from vla0.train.trainer import Trainer

    def no_clipping(*a, **k):
        raise AssertionError("--max-grad-norm 0 must not clip")
    monkeypatch.setattr(Accelerator, "clip_grad_norm_", no_clipping)
    args = build_parser().parse_args(["train", "--recipe", "vla0-libero", "--dataset", str(hf_libero), "--model",
                                      str(tiny_model_dir), "--out", str(tmp_path / "r"), "--steps", "2",
                                      "--batch-size", "2", "--image-size", "28x28", "--workers", "0",
                                      "--no-progress", "--log-with", "none", "--lr", "1e-2"])
    trainer = Trainer(train_config(args))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    params = dict(trainer.model.named_parameters())
    assert {p.dtype for p in params.values()} == {torch.bfloat16}  # no fp32 copy of the weights
    states = [s for s in trainer.optimizer.state.values() if s]
    moments = {s[k].dtype for s in states for k in ("exp_avg", "exp_avg_sq")}
    assert states and moments == {torch.bfloat16}
    assert trainer.lr == 1e-2  # one process: --scale-lr-with-gpus multiplies by 1
    assert any(not torch.equal(before[n], p) for n, p in params.items())  # and it trained
