import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The embedded tiny Qwen2.5-VL, randomly initialised, as a Hugging Face folder."""
    from vla0.model.tiny import init_model
    return init_model("tiny", tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_policy_dir(tiny_model_dir, tmp_path_factory):
    """An untrained policy folder (2 cameras of 32x32, H=2, D=4, B=100): enough for interface tests."""
    import shutil

    from vla0.config import PolicyConfig
    folder = tmp_path_factory.mktemp("policies") / "untrained"
    shutil.copytree(tiny_model_dir, folder)
    PolicyConfig(action_dim=4, cameras=["front", "wrist"], chunk_size=2, num_bins=100,
                 action_stats={"min": [-1.0] * 4, "max": [1.0] * 4}, image_size=[32, 32],
                 ensemble=2).save(folder)
    return folder


@pytest.fixture(scope="session")
def metaworld_policy_dir(tiny_model_dir, tmp_path_factory):
    """An untrained policy for Meta-World: corner3 recorded at 32x32, 4-dim actions in [-1, 1]."""
    import shutil

    from vla0.config import PolicyConfig
    folder = tmp_path_factory.mktemp("policies") / "metaworld"
    shutil.copytree(tiny_model_dir, folder)
    PolicyConfig(action_dim=4, cameras=["corner3"], chunk_size=2, num_bins=100, image_size=[32, 32],
                 action_stats={"min": [-1.0] * 4, "max": [1.0] * 4}, ensemble=2,
                 camera_shapes={"corner3": [32, 32]}).save(folder)
    return folder
