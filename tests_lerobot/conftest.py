"""Tests of the LeRobot plugin (packages/lerobot-policy-vla0) against the real lerobot 0.4.4.
They run in .venv-lerobot (`make test-lerobot`), not in `make test`'s .venv."""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # synthetic.py

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from vla0.model.tiny import init_model
    return init_model("tiny", tmp_path_factory.mktemp("models") / "tiny", seed=0)
