"""vla0 as a LeRobot policy, through LeRobot's own entry points: discovery, lerobot-train on a
LeRobot v3.0 dataset written here, save/load round trips (LeRobot <-> vla0) with identical actions,
one lerobot-eval episode on Meta-World, and the bad-input errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from synthetic import TASKS, synthetic_actions, synthetic_frame
from vla0.data.lerobot_writer import LeRobotWriter

BIN = Path(sys.executable).parent
HERE = Path(__file__).parent
TRAIN_OPTIONS = ["--policy.chunk_size=2", "--policy.num_bins=100", "--policy.image_size=[32,32]",
                 "--policy.ensemble=2", "--policy.device=cpu", "--policy.push_to_hub=false", "--batch_size=2",
                 "--num_workers=0", "--wandb.enable=false", "--log_freq=1"]


def write_dataset(root: Path, cameras=("top",), action_dim: int = 4) -> Path:
    writer = LeRobotWriter(root, fps=10, cameras={c: (32, 32) for c in cameras}, state_dim=4, action_dim=action_dim)
    for e, task in enumerate(TASKS):
        sign = -1.0 if e == 0 else 1.0
        actions = np.stack([synthetic_actions(t, sign)[:action_dim] for t in range(6)])
        frames = {c: np.stack([synthetic_frame(t) for t in range(6)]) for c in cameras}
        writer.add_episode(frames, state=np.zeros((6, 4), np.float32), action=actions, task=task)
    return writer.finalize()


def run(cmd: list[str], tmp: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_LEROBOT_HOME": str(tmp / "lerobot-home"), "HF_HOME": str(tmp / "hf-home")}
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def train(tmp: Path, dataset: Path, out: str, *options: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "lerobot-train"), "--dataset.repo_id=local/x", f"--dataset.root={dataset}",
                f"--output_dir={out}", *TRAIN_OPTIONS, *options], tmp, check)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """lerobot-train --policy.type=vla0, 4 steps on the test dataset: (work dir, checkpoint, stderr)."""
    tmp = tmp_path_factory.mktemp("lerobot")
    dataset = write_dataset(tmp / "ds")
    proc = train(tmp, dataset, "out", "--policy.type=vla0", f"--policy.model={tiny_model_dir}", "--steps=4",
                 "--save_freq=4")
    return tmp, tmp / "out" / "checkpoints" / "last" / "pretrained_model", proc.stderr


def observation(n: int = 2, key: str = "observation.images.top") -> dict:
    """What LeRobot hands a policy: float (B, 3, H, W) images in [0, 1] and the task strings."""
    frames = np.stack([synthetic_frame(t) for t in range(n)])
    return {key: torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255, "task": TASKS[:n]}


def test_lerobot_discovers_the_vla0_policy_type():
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()
    assert "vla0" in PreTrainedConfig.get_known_choices()
    cls = get_policy_class("vla0")
    assert cls.__module__ == "lerobot_policy_vla0.modeling_vla0" and cls.__name__ == "VLA0Policy"
    config = PreTrainedConfig.get_choice_class("vla0")(device="cpu")
    assert config.action_delta_indices == list(range(config.chunk_size)) and config.chunk_size == 8  # VLA-0's H


def test_lerobot_train_writes_a_checkpoint_vla0_and_lerobot_both_load(trained):
    tmp, ckpt, stderr = trained
    losses = [float(x.split("loss:")[1].split()[0]) for x in stderr.splitlines() if " loss:" in x]
    assert len(losses) == 4 and all(np.isfinite(losses)), stderr[-2000:]
    assert (ckpt / "config.json").exists() and (ckpt / "vla0" / "vla0_policy.json").exists()
    assert not (ckpt / "model.safetensors").exists()  # one copy of the weights, in vla0/
    assert json.loads((ckpt / "config.json").read_text())["type"] == "vla0"


def test_round_trip_gives_identical_actions(trained, tmp_path):
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    from vla0.policy.policy import VLA0Policy as Vla0Native

    _, ckpt, _ = trained
    cls = get_policy_class("vla0")
    loaded = cls.from_pretrained(ckpt)
    pre, post = make_pre_post_processors(PreTrainedConfig.from_pretrained(ckpt), pretrained_path=str(ckpt))
    obs = observation()
    ours = post(loaded.select_action(pre(dict(obs))))
    loaded.save_pretrained(tmp_path / "again")  # save what was loaded, load that again
    again = cls.from_pretrained(tmp_path / "again").select_action(dict(obs))
    native = Vla0Native.from_pretrained(ckpt)  # vla0's own loader reads the LeRobot folder as it is
    frames = (obs["observation.images.top"].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    theirs = native.select_action({"observation.images.top": frames, "task": obs["task"]})
    assert ours.shape == (2, 4)
    np.testing.assert_array_equal(ours.numpy(), again.numpy())
    np.testing.assert_array_equal(ours.numpy(), theirs)


def test_a_vla0_policy_converts_for_lerobot(tiny_model_dir, tmp_path):
    import shutil

    from lerobot_policy_vla0.convert import convert
    from lerobot_policy_vla0.modeling_vla0 import VLA0Policy as LeRobotVLA0

    from vla0.config import PolicyConfig
    from vla0.policy.policy import VLA0Policy as Vla0Native

    src = tmp_path / "vla0-policy"
    shutil.copytree(tiny_model_dir, src)
    PolicyConfig(action_dim=4, cameras=["top"], chunk_size=2, num_bins=100, image_size=[32, 32], ensemble=2,
                 action_stats={"min": [-1.0] * 4, "max": [1.0] * 4}, camera_shapes={"top": [32, 32]}).save(src)
    out = convert(src, tmp_path / "lerobot-policy")
    obs = observation()
    ours = LeRobotVLA0.from_pretrained(out).select_action(dict(obs)).numpy()
    frames = (obs["observation.images.top"].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    theirs = Vla0Native.from_pretrained(src).select_action({"observation.images.top": frames, "task": obs["task"]})
    np.testing.assert_array_equal(ours, theirs)


def test_lerobot_eval_runs_an_episode_on_metaworld(trained):
    tmp, ckpt, _ = trained
    proc = run([sys.executable, str(HERE / "eval_capped.py"), "12", f"--policy.path={ckpt}", "--policy.device=cpu",
                "--env.type=metaworld", "--env.task=reach-v3", "--eval.n_episodes=1", "--eval.batch_size=1",
                "--output_dir=eval", '--rename_map={"observation.image": "observation.images.top"}'], tmp)
    info = json.loads((tmp / "eval" / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 1, proc.stdout[-2000:]
    assert list((tmp / "eval" / "videos").rglob("*.mp4"))


def test_lerobot_eval_with_other_cameras_names_the_expected_ones(trained):
    tmp, ckpt, _ = trained
    proc = run([sys.executable, str(HERE / "eval_capped.py"), "2", f"--policy.path={ckpt}", "--policy.device=cpu",
                "--env.type=metaworld", "--env.task=reach-v3", "--eval.n_episodes=1", "--eval.batch_size=1",
                "--output_dir=eval-bad"], tmp, check=False)
    assert proc.returncode != 0
    assert "observation.images.top" in proc.stderr and "rename_map" in proc.stderr


def test_a_dataset_without_cameras_fails_in_lerobot_train_before_the_model_loads(tiny_model_dir, tmp_path):
    dataset = write_dataset(tmp_path / "no-camera", cameras=())
    proc = train(tmp_path, dataset, "out", "--policy.type=vla0", f"--policy.model={tmp_path / 'not-a-model'}",
                 "--steps=1", check=False)
    assert proc.returncode != 0
    assert "vla0: the dataset has no camera feature" in proc.stderr
    assert "model folder not found" not in proc.stderr  # failed before looking for the model


def test_fine_tuning_on_another_action_size_fails_in_lerobot_train(trained, tmp_path):
    _, ckpt, _ = trained
    dataset = write_dataset(tmp_path / "three-d", action_dim=3)
    proc = train(tmp_path, dataset, "out", f"--policy.path={ckpt}", "--steps=1", check=False)
    assert proc.returncode != 0
    assert "vla0: this policy was built for 4-D actions; the dataset/env has 3-D actions" in proc.stderr
