"""Frames read when drawn (video seeks, frame cache) equal frames decoded up front; the loader's
order is a pure function of (seed, step); datasets by hub id from a prepared offline cache."""
import json
import shutil

import numpy as np
import pytest
import torch

from test_lerobot_dataset import smooth_frames, write_v21
from vla0.data.chunks import ChunkDataset
from vla0.data.hub import parse_hub_id, resolve_dataset
from vla0.data.lerobot_dataset import load_lerobot
from vla0.data.lerobot_writer import LeRobotWriter
from vla0.data.streaming import FrameSource, build_frame_cache, check_videos

H, W = 24, 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two cameras, episodes longer than a GOP (16), so seeks land between keyframes."""
    root = tmp_path_factory.mktemp("stream") / "ds"
    w = LeRobotWriter(root, 10, {"a": (H, W), "b": (H, W)}, 2, 2)
    rng = np.random.default_rng(0)
    for e, T in enumerate([37, 5, 23]):
        frames = smooth_frames(T, e)
        w.add_episode({"a": frames, "b": 255 - frames}, rng.normal(size=(T, 2)), rng.normal(size=(T, 2)), f"task {e}")
    return w.finalize()


def test_streaming_equals_in_memory_sample_for_sample(dataset):
    memory = ChunkDataset(load_lerobot(dataset), ["observation.images.a", "observation.images.b"], 4)
    lazy = load_lerobot(dataset, decode=False)
    assert lazy.images == {}
    stream = ChunkDataset(lazy, ["observation.images.a", "observation.images.b"], 4, FrameSource(lazy))
    for i in np.random.default_rng(1).permutation(len(memory)):  # random order: every read is a seek
        m, s = memory[int(i)], stream[int(i)]
        assert m.task == s.task and np.array_equal(m.actions, s.actions)
        assert all(np.array_equal(x, y) for x, y in zip(m.frames, s.frames)), i


def test_streaming_v21_and_png_frames(tmp_path):
    rng = np.random.default_rng(2)
    write_v21(tmp_path / "v21", [(smooth_frames(T, e), rng.normal(size=(T, 4)).astype(np.float32))
                                 for e, T in enumerate([20, 18])])
    memory, lazy = load_lerobot(tmp_path / "v21"), load_lerobot(tmp_path / "v21", decode=False)
    source = FrameSource(lazy)
    key = "observation.images.top"
    assert all(np.array_equal(memory.images[key][i], source(key, i)) for i in (37, 0, 19, 20, 5))


def test_truncated_or_missing_video_is_named_before_training(dataset, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    video = broken / "videos/observation.images.b/chunk-000/file-000.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    with pytest.raises(ValueError, match="observation.images.b/chunk-000/file-000.mp4"):
        check_videos(load_lerobot(broken, decode=False))
    video.unlink()
    with pytest.raises(FileNotFoundError, match="missing video for observation.images.b"):
        load_lerobot(broken, decode=False)


def test_frame_cache_holds_frames_at_training_size_and_is_reused(dataset, tmp_path):
    data = load_lerobot(dataset, decode=False)
    keys = ["observation.images.a"]
    paths = build_frame_cache(data, keys, tmp_path / "cache", image_size=[14, 21], crop_fraction=0.875)
    source = FrameSource(data, paths)
    frame = source("observation.images.a", 40)
    assert frame.shape == (16, 24, 3)  # 14 / 0.875, 21 / 0.875: a 0.875 crop is exactly 14x21
    full = load_lerobot(dataset).images["observation.images.a"][40]
    from PIL import Image
    expected = np.asarray(Image.fromarray(full).resize((24, 16), Image.BILINEAR))
    assert np.array_equal(frame, expected)
    mtime = paths[keys[0]].stat().st_mtime_ns
    assert build_frame_cache(data, keys, tmp_path / "cache", [14, 21], 0.875) == paths
    assert paths[keys[0]].stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_loader_order_is_a_pure_function_of_seed_and_step(dataset, tiny_model_dir):
    from vla0.config import PolicyConfig
    from vla0.model.vlm import load_processor
    from vla0.processor import ActionProcessor
    from functools import partial

    from vla0.prompt import collate
    from vla0.train.loader import StepSampler, TrainingExamples, text_example, training_loader

    data = load_lerobot(dataset, decode=False)
    config = PolicyConfig(action_dim=2, cameras=["a", "b"], chunk_size=2, num_bins=100, image_size=[28, 28],
                          action_stats={k: v.tolist() for k, v in data.stats["action"].items()})
    processor = ActionProcessor(config, *load_processor(tiny_model_dir))
    make = partial(text_example, processor, mask_max_frac=0.4, p_no_mask=0.1,
                   jitter=dict(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05))
    examples = TrainingExamples(ChunkDataset(data, config.image_keys, 2, FrameSource(data)), make, seed=3)
    pad = partial(collate, pad_id=processor.pad_id, padding_side="right")

    def batches(workers, start, rank=0, world=1):
        sampler = StepSampler(len(data), 4, world, rank, seed=3, start=start, stop=12)
        return list(training_loader(examples, sampler, pad, workers=workers, prefetch=2))

    inline, parallel, resumed = batches(0, 0), batches(2, 0), batches(1, 7)
    assert len(inline) == 12 and len(resumed) == 5
    for a, b in zip(inline, parallel):
        assert all(torch.equal(a[k], b[k]) for k in a)
    for a, b in zip(inline[7:], resumed):
        assert all(torch.equal(a[k], b[k]) for k in a)
    ranks = [StepSampler(len(data), 4, 2, r, 3, 0, 8) for r in (0, 1)]
    for micro in range(8):  # the two ranks' slices of each global batch never overlap
        k0, k1 = (set(s.keys(micro)) for s in ranks)
        assert len(k0) == len(k1) == 4 and not k0 & k1
    seen = [f for m in range(len(data) // 8) for s in ranks for _, f in s.keys(m)]
    assert len(seen) == len(set(seen))  # one epoch visits each frame at most once


# -- datasets by hub id -----------------------------------------------------------------------


def fake_hub_cache(cache, repo, dataset, commit="0123456789abcdef0123456789abcdef01234567", ref="main"):
    """The layout huggingface_hub's cache has after a download: refs/<ref> -> commit, snapshots/<commit>/."""
    folder = cache / f"datasets--{repo.replace('/', '--')}"
    shutil.copytree(dataset, folder / "snapshots" / commit)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / ref).write_text(commit)
    return folder / "snapshots" / commit


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, dataset):
    from huggingface_hub import constants
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read once at import: point the module at it too
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    snapshot = fake_hub_cache(cache, "someone/pick-place", dataset)
    fake_hub_cache(cache, "someone/pick-place", dataset, commit="f" * 40, ref="v1.0")
    return snapshot


def test_predict_names_a_camera_the_dataset_lacks(tiny_policy_dir, dataset, capsys):
    from vla0.cli import main as cli
    assert cli(["predict", "--policy", str(tiny_policy_dir), "--dataset", str(dataset)]) == 2
    assert "camera 'front' not in dataset" in capsys.readouterr().err


def test_parse_hub_id():
    assert parse_hub_id("lerobot/libero") == ("lerobot/libero", None)
    assert parse_hub_id("lerobot/libero@v2.1") == ("lerobot/libero", "v2.1")
    assert parse_hub_id("./runs/demos") is None and parse_hub_id("/data/x") is None and parse_hub_id("demos") is None


def test_hub_id_loads_from_the_offline_cache(hub_cache):
    root = resolve_dataset("someone/pick-place")
    assert root == hub_cache
    assert resolve_dataset("someone/pick-place@v1.0").name == "f" * 40
    assert len(load_lerobot(root, decode=False)) == 65


def test_hub_id_errors_name_what_is_missing(hub_cache, tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'someone/absent' at revision 'main' is not in the hub cache.*"
                                                r"HF_HUB_OFFLINE=1"):
        resolve_dataset("someone/absent")
    with pytest.raises(FileNotFoundError, match="'someone/pick-place' at revision 'nope' is not in the hub cache"):
        resolve_dataset("someone/pick-place@nope")
    from vla0.train.trainer import TrainConfig, Trainer
    cfg = dict(model=str(tiny_model_dir), out=str(tmp_path / "r"), steps=1, progress=False)
    with pytest.raises(ValueError, match=r"camera\(s\) \['wrist'\] not in dataset someone/pick-place"):
        Trainer(TrainConfig(dataset="someone/pick-place", cameras=["wrist"], **cfg))
    info = json.loads((hub_cache / "meta/info.json").read_text())
    assert "observation.images.a" in info["features"]
