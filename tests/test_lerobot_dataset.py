"""LeRobotDataset v3.0 writer/reader round trip, v2.1 reading, bad input, expert collection."""
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vla0.data.lerobot_dataset import load_lerobot, validate_lerobot
from vla0.data.lerobot_writer import LeRobotWriter
from vla0.data.video import VideoWriter

H, W = 24, 32


def smooth_frames(T: int, e: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return np.stack(
        [np.stack([(xx * 6 + t * 5 + e * 30) % 256, yy * 9, np.full_like(xx, 60 + 40 * e)], -1) for t in range(T)]
    ).astype(np.uint8)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "demo"
    rng = np.random.default_rng(0)
    w = LeRobotWriter(root, 80, {"cam": (H, W)}, 4, 4, extra={"observation.environment_state": 6})
    eps = []
    for e, T in enumerate([5, 7, 6]):
        ep = dict(img=smooth_frames(T, e), state=rng.normal(size=(T, 4)).astype(np.float32),
                  action=rng.uniform(-1, 1, (T, 4)).astype(np.float32), task=["reach the goal", "push"][e % 2],
                  env=rng.normal(size=(T, 6)).astype(np.float32))
        w.add_episode({"cam": ep["img"]}, ep["state"], ep["action"], ep["task"], extra={"observation.environment_state": ep["env"]})
        eps.append(ep)
    assert not root.exists()  # nothing visible before finalize
    w.finalize()
    return root, eps


def test_round_trip(written):
    root, eps = written
    d = load_lerobot(root)
    assert d.version == "v3.0" and d.fps == 80 and d.camera_keys == ["observation.images.cam"]
    np.testing.assert_array_equal(d.action, np.concatenate([e["action"] for e in eps]))
    np.testing.assert_array_equal(d.state, np.concatenate([e["state"] for e in eps]))
    np.testing.assert_array_equal(d.extra["observation.environment_state"], np.concatenate([e["env"] for e in eps]))
    frames = np.concatenate([e["img"] for e in eps])
    got = d.images["observation.images.cam"]
    assert got.dtype == np.uint8 and got.shape == frames.shape
    assert np.abs(got.astype(int) - frames).mean() < 3
    assert d.tasks == ["reach the goal", "push"]
    assert [(r.start, r.end, r.task) for r in d.episodes] == [(0, 5, "reach the goal"), (5, 12, "push"), (12, 18, "reach the goal")]
    np.testing.assert_array_equal(d.frame_index, np.concatenate([np.arange(5), np.arange(7), np.arange(6)]))
    np.testing.assert_array_equal(d.task_index, np.repeat([0, 1, 0], [5, 7, 6]))


def test_one_frame_episode_round_trips(tmp_path):
    """An episode of one frame (an expert that succeeds at once): the encoder holds the frame and
    no video bytes exist yet when the writer checks the file's size for rollover."""
    w = LeRobotWriter(tmp_path / "one", 10, {"cam": (H, W)}, 4, 4)
    for e, T in enumerate([1, 3]):
        w.add_episode({"cam": smooth_frames(T, e)}, np.full((T, 4), e, np.float32), np.full((T, 4), e, np.float32), "t")
    d = load_lerobot(w.finalize())
    assert [(r.start, r.end) for r in d.episodes] == [(0, 1), (1, 4)]
    assert d.images["observation.images.cam"].shape == (4, H, W, 3)
    np.testing.assert_array_equal(d.action[:, 0], [0, 1, 1, 1])


def test_layout_and_stats(written):
    root, eps = written
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == 18 and info["total_episodes"] == 3
    assert info["splits"] == {"train": "0:3"} and info["chunks_size"] == 1000
    cam = info["features"]["observation.images.cam"]
    assert cam["dtype"] == "video" and cam["shape"] == [H, W, 3] and cam["names"] == ["height", "width", "channels"]
    stats = load_lerobot(root).stats
    actions = np.concatenate([e["action"] for e in eps])
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["action"]["std"], actions.std(0), rtol=1e-5)
    np.testing.assert_allclose(stats["action"]["q50"], np.quantile(actions, 0.5, axis=0), rtol=1e-5)
    assert stats["action"]["count"].tolist() == [18]
    frames = np.concatenate([e["img"] for e in eps]) / 255.0
    assert stats["observation.images.cam"]["mean"].shape == (3, 1, 1)
    np.testing.assert_allclose(stats["observation.images.cam"]["mean"].ravel(), frames.reshape(-1, 3).mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["observation.images.cam"]["max"].ravel(), frames.reshape(-1, 3).max(0))
    ep_table = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [r["length"] for r in ep_table] == [5, 7, 6]
    assert ep_table[1]["videos/observation.images.cam/from_timestamp"] == pytest.approx(5 / 80)
    assert np.asarray(ep_table[0]["stats/observation.images.cam/mean"]).shape == (3, 1, 1)
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["reach the goal", "push"]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]


def test_bad_input(written, tmp_path):
    root, _ = written
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        validate_lerobot(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="info.json"):
        load_lerobot(tmp_path / "empty")
    with pytest.raises(ValueError, match="camera 'wrist' not in dataset; cameras: observation.images.cam"):
        load_lerobot(root, cameras=["wrist"])
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    (broken / "videos/observation.images.cam/chunk-000/file-000.mp4").unlink()
    with pytest.raises(FileNotFoundError, match="missing video for observation.images.cam"):
        validate_lerobot(broken)
    info = json.loads((broken / "meta/info.json").read_text())
    del info["features"]["action"]
    (broken / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="no 'action' feature"):
        validate_lerobot(broken)
    w = LeRobotWriter(tmp_path / "w", 10, {"cam": (H, W)}, 4, 4)
    with pytest.raises(ValueError, match="observation.images.cam must be uint8"):
        w.add_episode({"cam": np.zeros((3, H + 1, W, 3), np.uint8)}, np.zeros((3, 4)), np.zeros((3, 4)), "t")
    w.abort()
    with pytest.raises(FileExistsError):
        LeRobotWriter(root, 10, {}, 4, 4)


def write_v21(root, eps, fps=10):
    """A LeRobot v2.1 layout by hand: parquet + mp4 per episode, jsonl metadata, no stats.json."""
    (root / "meta").mkdir(parents=True)
    info = {
        "codebase_version": "v2.1", "robot_type": "x", "fps": fps, "total_episodes": len(eps), "chunks_size": 1000,
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": {
            "observation.images.top": {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channel"]},
            "observation.state": {"dtype": "float32", "shape": [4], "names": None},
            "action": {"dtype": "float32", "shape": [4], "names": None},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text('{"task_index": 0, "task": "open the drawer"}\n')
    lines, start = [], 0
    for e, (img, act) in enumerate(eps):
        T = len(act)
        lines.append(json.dumps({"episode_index": e, "tasks": ["open the drawer"], "length": T}))
        table = pa.table({
            "observation.state": pa.array(list(act), type=pa.list_(pa.float32())),
            "action": pa.array(list(act), type=pa.list_(pa.float32())),
            "timestamp": pa.array(np.arange(T) / fps, pa.float32()),
            "frame_index": np.arange(T), "episode_index": np.full(T, e), "index": np.arange(start, start + T),
            "task_index": np.zeros(T, np.int64),
        })
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / f"data/chunk-000/episode_{e:06d}.parquet")
        vid = root / f"videos/chunk-000/observation.images.top/episode_{e:06d}.mp4"
        vid.parent.mkdir(parents=True, exist_ok=True)
        v = VideoWriter(vid, fps, H, W, crf=0)
        v.add(img)
        v.close()
        start += T
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")


def test_reads_v21(tmp_path):
    rng = np.random.default_rng(1)
    eps = [(smooth_frames(T, e), rng.normal(size=(T, 4)).astype(np.float32)) for e, T in enumerate([4, 6])]
    write_v21(tmp_path / "v21", eps)
    d = load_lerobot(tmp_path / "v21", cameras=["top"])
    assert d.version == "v2.1" and d.tasks == ["open the drawer"] and len(d) == 10
    np.testing.assert_array_equal(d.action, np.concatenate([a for _, a in eps]))
    frames = np.concatenate([i for i, _ in eps])
    assert np.abs(d.images["observation.images.top"].astype(int) - frames).mean() < 3
    np.testing.assert_allclose(d.stats["action"]["mean"], d.action.mean(0), rtol=1e-5)  # computed, no stats.json
    assert [(r.start, r.end) for r in d.episodes] == [(0, 4), (4, 10)]


def test_collect_expert_demos(tmp_path):
    from vla0.envs.collect import collect

    with pytest.raises(ValueError, match="unknown metaworld task 'reach-v2'"):
        collect(["reach-v2"], 1, 0, tmp_path / "x", progress=False)
    out = collect(["reach-v3"], 2, 0, tmp_path / "demos", cameras=("corner3",), image_size=(32, 32), num_workers=0, progress=False)
    d = load_lerobot(out)
    assert len(d.episodes) == 2 and d.tasks == ["reach the goal"]
    assert d.images["observation.images.corner3"].shape == (len(d), 32, 32, 3)
    assert np.abs(d.action).max() <= 1 and d.extra["observation.environment_state"].shape == (len(d), 39)
    assert json.loads((out / "meta/vla0.json").read_text())["seeds"] == [0, 1]


def test_reads_unnamed_task_index(written, tmp_path):
    """LeRobot itself writes the task strings as an unnamed pandas index (__index_level_0__)."""
    root, _ = written
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    pq.write_table(pa.table({"task_index": [0, 1], "__index_level_0__": ["reach the goal", "push"]}), copy / "meta/tasks.parquet")
    assert load_lerobot(copy).tasks == ["reach the goal", "push"]
