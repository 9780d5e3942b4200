"""Write a LeRobotDataset v3.0 folder (LeRobot's own layout and field names).

Layout (see LeRobot's `lerobot/datasets/utils.py`):
  meta/info.json, meta/stats.json, meta/tasks.parquet,
  meta/episodes/chunk-000/file-000.parquet   one row per episode (+ per-episode stats)
  data/chunk-000/file-000.parquet            one row per frame, many episodes per file
  videos/<key>/chunk-000/file-000.mp4        many episodes per file, located by timestamps
Everything is built in a hidden temp folder next to `root` and renamed into
place by finalize(), so a crash never leaves a half dataset that looks whole.
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vla0.data.stats import histogram_stats, image_histogram, vector_stats
from vla0.data.video import DATASET_CODEC, VideoWriter

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INDEX_COLUMNS = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64", "task_index": "int64"}


def camera_key(cam: str) -> str:
    return cam if cam.startswith("observation.images.") else f"observation.images.{cam}"


def _fixed_list(x: np.ndarray) -> pa.Array:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _tasks_table(tasks: list[str]) -> pa.Table:
    # pandas metadata makes pd.read_parquet (what LeRobot calls) restore `task` as the index.
    meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    schema = pa.schema([("task_index", pa.int64()), ("task", pa.string())], metadata={b"pandas": json.dumps(meta).encode()})
    return pa.table({"task_index": list(range(len(tasks))), "task": tasks}, schema=schema)


class LeRobotWriter:
    """Collects episodes and writes a LeRobotDataset v3.0 on finalize().

    cameras: {name or "observation.images.<name>": (height, width)}
    extra: more float vector features, {key: dim}, e.g. {"observation.environment_state": 39};
    undeclared extras passed to add_episode are declared from the first episode.
    """

    def __init__(
        self,
        root: Path,
        fps: int,
        cameras: dict[str, tuple[int, int]],
        state_dim: int | None,
        action_dim: int,
        robot_type: str = "sawyer",
        extra: dict[str, int] | None = None,
        state_names: list[str] | None = None,
        action_names: list[str] | None = None,
        overwrite: bool = False,
        data_file_mb: float = 100,
        video_file_mb: float = 200,  # LeRobot 0.4 defaults: 100 MB data, 200 MB video
    ):
        self.root = Path(root)
        if self.root.exists() and not overwrite:
            raise FileExistsError(f"dataset folder already exists: {self.root} (pass overwrite=True to replace it)")
        if fps <= 0 or action_dim <= 0:
            raise ValueError(f"LeRobotWriter: fps and action_dim must be positive, got fps={fps} action_dim={action_dim}")
        self.fps, self.robot_type, self.overwrite = int(fps), robot_type, overwrite
        self.cameras = {camera_key(k): (int(h), int(w)) for k, (h, w) in cameras.items()}
        self.vectors: dict[str, int] = {"action": int(action_dim)}
        if state_dim:
            self.vectors["observation.state"] = int(state_dim)
        self.vectors.update({k: int(v) for k, v in (extra or {}).items()})
        self.names = {"action": action_names, "observation.state": state_names}
        self.data_bytes_limit = data_file_mb * 2**20
        self.video_bytes_limit = video_file_mb * 2**20

        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.root.parent / f".{self.root.name}.tmp-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()

        self.tasks: list[str] = []
        self.episodes: list[dict] = []
        self.total_frames = 0
        self._data_file = (0, 0)  # (chunk, file) of the parquet being filled
        self._rows: list[dict[str, np.ndarray]] = []
        self._rows_bytes = 0
        self._videos: dict[str, VideoWriter] = {}
        self._video_file = {k: (0, 0) for k in self.cameras}
        self._all: dict[str, list[np.ndarray]] = {k: [] for k in self.vectors}
        self._hist = {k: np.zeros((3, 256), np.int64) for k in self.cameras}

    # -- episodes -----------------------------------------------------------------

    def add_episode(self, images: dict[str, np.ndarray], state: np.ndarray | None, action: np.ndarray, task: str, extra: dict[str, np.ndarray] | None = None) -> int:
        """Append one episode; returns its episode_index. Arrays are (T, ...) for the same T."""
        ep = len(self.episodes)
        action = np.asarray(action, np.float32)
        T = len(action)
        arrays = {"action": action}
        if state is not None:
            arrays["observation.state"] = np.asarray(state, np.float32)
        for k, v in (extra or {}).items():
            arrays[k] = np.asarray(v, np.float32)
            if k not in self.vectors:
                if self.episodes:
                    raise ValueError(f"episode {ep}: extra feature {k!r} was not in earlier episodes")
                self.vectors[k] = arrays[k].reshape(T, -1).shape[1]
                self._all[k] = []
        images = {camera_key(k): v for k, v in images.items()}
        self._check_episode(ep, T, arrays, images, task)

        if task not in self.tasks:
            self.tasks.append(task)
        task_index = self.tasks.index(task)
        start = self.total_frames
        index_cols = {
            "timestamp": (np.arange(T) / self.fps).astype(np.float32),
            "frame_index": np.arange(T, dtype=np.int64),
            "episode_index": np.full(T, ep, np.int64),
            "index": np.arange(start, start + T, dtype=np.int64),
            "task_index": np.full(T, task_index, np.int64),
        }
        row = {"episode_index": ep, "tasks": [task], "length": T}

        chunk, file = self._data_file
        row.update({"data/chunk_index": chunk, "data/file_index": file, "dataset_from_index": start, "dataset_to_index": start + T})
        cols = {k: arrays[k].reshape(T, -1) for k in self.vectors}
        cols.update(index_cols)
        self._rows.append(cols)
        self._rows_bytes += sum(v.nbytes for v in cols.values())
        if self._rows_bytes >= self.data_bytes_limit:
            self._flush_data()

        stats = {}
        for key, frames in images.items():
            writer = self._video_writer(key)
            chunk, file = self._video_file[key]
            from_ts = writer.frames / self.fps
            writer.add(frames)
            row.update({
                f"videos/{key}/chunk_index": chunk,
                f"videos/{key}/file_index": file,
                f"videos/{key}/from_timestamp": from_ts,
                f"videos/{key}/to_timestamp": writer.frames / self.fps,
            })
            hist = image_histogram(frames)
            self._hist[key] += hist
            stats[key] = histogram_stats(hist, T)
            # the encoder may hold a short episode's frames (no file on disk yet): nothing written, no rollover
            if writer.path.exists() and writer.path.stat().st_size >= self.video_bytes_limit:
                self._close_video(key, advance=True)
        for k in self.vectors:
            stats[k] = vector_stats(cols[k])
            self._all[k].append(cols[k])
        for k, v in index_cols.items():
            stats[k] = vector_stats(v[:, None])
        row["meta/episodes/chunk_index"] = 0
        row["meta/episodes/file_index"] = 0
        for feat, st in stats.items():
            for name, val in st.items():
                row[f"stats/{feat}/{name}"] = val.tolist()
        self.episodes.append(row)
        self.total_frames += T
        return ep

    def _check_episode(self, ep, T, arrays, images, task):
        if T == 0:
            raise ValueError(f"episode {ep}: no frames")
        if not isinstance(task, str) or not task:
            raise ValueError(f"episode {ep}: task must be a non-empty string, got {task!r}")
        for k, v in arrays.items():
            if v.ndim == 1:
                v = v[:, None]
            if len(v) != T or v.reshape(T, -1).shape[1] != self.vectors.get(k, -1):
                raise ValueError(f"episode {ep}: {k} has shape {v.shape}, expected ({T}, {self.vectors.get(k)})")
            if not np.isfinite(v).all():
                raise ValueError(f"episode {ep}: {k} has non-finite values")
        missing = [k for k in self.vectors if k not in arrays]
        if missing:
            raise ValueError(f"episode {ep}: missing features {missing}")
        if set(images) != set(self.cameras):
            raise ValueError(f"episode {ep}: cameras {sorted(images)} do not match declared {sorted(self.cameras)}")
        for k, v in images.items():
            h, w = self.cameras[k]
            if v.dtype != np.uint8 or v.shape != (T, h, w, 3):
                raise ValueError(f"episode {ep}: {k} must be uint8 ({T}, {h}, {w}, 3), got {v.dtype} {v.shape}")

    # -- files --------------------------------------------------------------------

    @staticmethod
    def _next(chunk: int, file: int) -> tuple[int, int]:
        return (chunk + 1, 0) if file + 1 >= CHUNKS_SIZE else (chunk, file + 1)

    def _flush_data(self) -> None:
        if not self._rows:
            return
        chunk, file = self._data_file
        cols = {}
        for k in self.vectors:
            cols[k] = _fixed_list(np.concatenate([r[k] for r in self._rows]))
        for k, dtype in INDEX_COLUMNS.items():
            cols[k] = pa.array(np.concatenate([r[k] for r in self._rows]).astype(dtype))
        _write_parquet(pa.table(cols), self.tmp / DATA_PATH.format(chunk_index=chunk, file_index=file))
        self._rows, self._rows_bytes = [], 0
        self._data_file = self._next(chunk, file)

    def _video_writer(self, key: str) -> VideoWriter:
        if key not in self._videos:
            chunk, file = self._video_file[key]
            path = self.tmp / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            path.parent.mkdir(parents=True, exist_ok=True)
            h, w = self.cameras[key]
            self._videos[key] = VideoWriter(path, self.fps, h, w, **DATASET_CODEC)
        return self._videos[key]

    def _close_video(self, key: str, advance: bool) -> None:
        self._videos.pop(key).close()
        if advance:
            self._video_file[key] = self._next(*self._video_file[key])

    def _features(self) -> dict:
        feats = {}
        for k, dim in self.vectors.items():
            names = self.names.get(k) or ([f"{k.split('.')[-1]}_{i}" for i in range(dim)])
            feats[k] = {"dtype": "float32", "shape": [dim], "names": list(names)}
        for k, (h, w) in self.cameras.items():
            feats[k] = {
                "dtype": "video",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": h,
                    "video.width": w,
                    "video.codec": "h264",
                    "video.pix_fmt": DATASET_CODEC["pix_fmt"],
                    "video.is_depth_map": False,
                    "video.fps": self.fps,
                    "video.channels": 3,
                    "has_audio": False,
                },
            }
        for k, dtype in INDEX_COLUMNS.items():
            feats[k] = {"dtype": dtype, "shape": [1], "names": None}
        return feats

    def finalize(self, meta_files: dict[str, dict] | None = None) -> Path:
        """Write metadata and move the dataset into place; returns root.

        meta_files: extra JSON files for meta/, e.g. {"vla0.json": collection settings}.
        """
        if not self.episodes:
            self.abort()
            raise ValueError(f"no episodes to write to {self.root}")
        self._flush_data()
        for key in list(self._videos):
            self._close_video(key, advance=False)

        stats = {k: vector_stats(np.concatenate(v)) for k, v in self._all.items()}
        for k, hist in self._hist.items():
            stats[k] = histogram_stats(hist, self.total_frames)
        n = self.total_frames
        stats["index"] = vector_stats(np.arange(n)[:, None])
        stats["episode_index"] = vector_stats(np.concatenate([np.full(e["length"], e["episode_index"]) for e in self.episodes])[:, None])
        stats["frame_index"] = vector_stats(np.concatenate([np.arange(e["length"]) for e in self.episodes])[:, None])
        stats["timestamp"] = vector_stats(np.concatenate([np.arange(e["length"]) / self.fps for e in self.episodes])[:, None])
        task_of = {t: i for i, t in enumerate(self.tasks)}
        stats["task_index"] = vector_stats(np.concatenate([np.full(e["length"], task_of[e["tasks"][0]]) for e in self.episodes])[:, None])
        (self.tmp / "meta").mkdir(exist_ok=True)
        (self.tmp / "meta/stats.json").write_text(json.dumps({k: {s: v.tolist() for s, v in st.items()} for k, st in stats.items()}, indent=2))

        _write_parquet(_tasks_table(self.tasks), self.tmp / "meta/tasks.parquet")
        _write_parquet(pa.Table.from_pylist(self.episodes), self.tmp / EPISODES_PATH.format(chunk_index=0, file_index=0))

        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self.episodes),
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": self.data_bytes_limit / 2**20,
            "video_files_size_in_mb": self.video_bytes_limit / 2**20,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self.episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.cameras else None,
            "features": self._features(),
        }
        (self.tmp / "meta/info.json").write_text(json.dumps(info, indent=4))
        for name, content in (meta_files or {}).items():
            (self.tmp / "meta" / name).write_text(json.dumps(content, indent=2))

        if self.root.exists():  # overwrite=True: swap, then delete the old one
            old = self.root.parent / f".{self.root.name}.old-{os.getpid()}"
            os.replace(self.root, old)
            os.replace(self.tmp, self.root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.root)
        return self.root

    def abort(self) -> None:
        for key in list(self._videos):
            try:
                self._close_video(key, advance=False)
            except Exception:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is not None:
            self.abort()
