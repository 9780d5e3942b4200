"""Small local datasets in the two LIBERO layouts found on the hub, with their real key names,
dtypes and info.json structure (frames shrunk to `size` px, a few short episodes):

- physical-intelligence/libero: LeRobot v2.0, frames as PNG inside the parquet files (a struct
  {bytes, path}), keys image, wrist_image, state (8), actions (7); the data VLA-0's code trains on;
- HuggingFaceVLA/libero: LeRobot v3.0, AV1/H.264 videos, keys observation.images.image,
  observation.images.image2, observation.state, action (written by vla0's own LeRobotWriter).
"""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vla0.data.lerobot_writer import LeRobotWriter

TASKS = ["put the bowl on the plate", "open the top drawer of the cabinet"]


def _episode(e: int, steps: int, size: int, wrist_size: int):
    rng = np.random.default_rng(e)
    image = rng.integers(0, 256, (steps, size, size, 3), dtype=np.uint8)
    wrist = rng.integers(0, 256, (steps, wrist_size, wrist_size, 3), dtype=np.uint8)
    state = rng.uniform(-1, 1, (steps, 8)).astype(np.float32)
    actions = rng.uniform(-1, 1, (steps, 7)).astype(np.float32)
    actions[:, 6] = np.where(actions[:, 6] > 0, 1.0, -1.0)  # the gripper: -1 open, +1 close
    return image, wrist, state, actions


def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def _vector_stats(x: np.ndarray) -> dict:
    return {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "max": x.max(0).tolist(), "min": x.min(0).tolist()}


def _image_stats(frames: np.ndarray) -> dict:
    x = frames.reshape(-1, 3).astype(np.float64) / 255.0
    per_channel = {k: np.asarray(v).reshape(3, 1, 1).tolist() for k, v in _vector_stats(x).items()}
    return per_channel


def write_pi_libero(root: Path, episodes: int = 2, steps: int = 6, size: int = 32,
                    wrist_size: int | None = None) -> Path:
    """physical-intelligence/libero's layout (LeRobot v2.0, images in parquet)."""
    root = Path(root)
    wrist_size = wrist_size or size
    (root / "meta").mkdir(parents=True)
    eps, all_rows = [], {"image": [], "wrist_image": [], "state": [], "actions": []}
    index = 0
    for e in range(episodes):
        image, wrist, state, actions = _episode(e, steps, size, wrist_size)
        task_index = e % len(TASKS)
        table = pa.table({
            "image": pa.array([{"bytes": _png(f), "path": f"frame_{i:06d}.png"} for i, f in enumerate(image)],
                              pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "wrist_image": pa.array([{"bytes": _png(f), "path": f"frame_{i:06d}.png"} for i, f in enumerate(wrist)],
                                    pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "state": pa.array(state.tolist(), pa.list_(pa.float32())),
            "actions": pa.array(actions.tolist(), pa.list_(pa.float32())),
            "timestamp": pa.array(np.arange(steps, dtype=np.float32) / 10),
            "frame_index": pa.array(np.arange(steps, dtype=np.int64)),
            "episode_index": pa.array(np.full(steps, e, np.int64)),
            "index": pa.array(np.arange(index, index + steps, dtype=np.int64)),
            "task_index": pa.array(np.full(steps, task_index, np.int64)),
        })
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        eps.append({"episode_index": e, "tasks": [TASKS[task_index]], "length": steps})
        for k, v in (("image", image), ("wrist_image", wrist), ("state", state), ("actions", actions)):
            all_rows[k].append(v)
        index += steps
    camera = {"dtype": "image", "names": ["height", "width", "channel"]}
    scalar = {"shape": [1], "names": None}
    info = {
        "codebase_version": "v2.0", "robot_type": "panda", "total_episodes": episodes, "total_frames": index,
        "total_tasks": len(TASKS), "total_videos": 0, "total_chunks": 1, "chunks_size": 1000, "fps": 10,
        "splits": {"train": f"0:{episodes}"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet", "video_path": None,
        "features": {
            "image": {**camera, "shape": [size, size, 3]},
            "wrist_image": {**camera, "shape": [wrist_size, wrist_size, 3]},
            "state": {"dtype": "float32", "shape": [8], "names": ["state"]},
            "actions": {"dtype": "float32", "shape": [7], "names": ["actions"]},
            "timestamp": {"dtype": "float32", **scalar}, "frame_index": {"dtype": "int64", **scalar},
            "episode_index": {"dtype": "int64", **scalar}, "index": {"dtype": "int64", **scalar},
            "task_index": {"dtype": "int64", **scalar},
        },
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    (root / "meta/episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    (root / "meta/tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                   for i, t in enumerate(TASKS)))
    stats = {k: (_image_stats if k in ("image", "wrist_image") else _vector_stats)(np.concatenate(v))
             for k, v in all_rows.items()}
    (root / "meta/stats.json").write_text(json.dumps(stats))
    return root


def write_hf_libero(root: Path, episodes: int = 2, steps: int = 6, size: int = 32) -> Path:
    """HuggingFaceVLA/libero's layout (LeRobot v3.0, videos)."""
    writer = LeRobotWriter(root, fps=10, cameras={"image": (size, size), "image2": (size, size)}, state_dim=8,
                           action_dim=7)
    for e in range(episodes):
        image, wrist, state, actions = _episode(e, steps, size, size)
        writer.add_episode({"image": image, "image2": wrist}, state=state, action=actions, task=TASKS[e % len(TASKS)])
    return writer.finalize()
