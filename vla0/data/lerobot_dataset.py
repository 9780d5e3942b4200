"""Read a LeRobotDataset (v3.0 or v2.1) from a local folder.

load_lerobot() reads the tables (actions, state, episodes, tasks, stats) and, for each camera, where
every frame lives (FrameLocator: video file and time, or the PNG bytes of an image feature). With
decode=True it also decodes every frame into memory (small datasets, tests, `vla0 predict`); with
decode=False nothing is decoded and vla0.data.streaming reads frames when a sample is drawn.
validate_lerobot() checks layout, info.json and that every referenced file exists, without
decoding, so bad input fails in a second with a message naming the file or key.

Datasets name their features differently on the hub: physical-intelligence/libero (v2.0, PNG frames
in the parquet files) has `image`, `wrist_image`, `state`, `actions`; HuggingFaceVLA/libero (v3.0,
videos) has `observation.images.image`, `observation.images.image2`, `observation.state`, `action`.
load_lerobot() takes the action and state keys and camera names as the dataset spells them and
hands everything on under LeRobot's standard keys (ACTION, STATE, `observation.images.<name>`, the
name being the key without that prefix), so nothing downstream depends on a dataset's spelling.
"""
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vla0.data.stats import histogram_stats, image_histogram, vector_stats
from vla0.data.video import match_frames

VERSIONS = ("v3.0", "v2.1", "v2.0")
ACTION, STATE, IMAGES = "action", "observation.state", "observation.images."
STATE_KEYS = (STATE, "state")  # tried in this order when no state key is given
CAMERA_DTYPES = ("video", "image")


@dataclass
class EpisodeRange:
    index: int
    start: int  # first row in the concatenated arrays
    end: int  # one past the last row
    task: str


@dataclass
class FrameLocator:
    """Where each frame of one camera lives: row i is at time[i] seconds in paths[file[i]] (video),
    or is png[i] (an image feature: encoded bytes kept, decoded on use)."""
    shape: tuple[int, int]  # (h, w) as info.json declares
    tolerance: float  # half a frame period: a frame within this of the wanted time is the one
    paths: list[Path] = field(default_factory=list)
    file: np.ndarray | None = None  # (N,) int32 index into paths
    time: np.ndarray | None = None  # (N,) float64 seconds in that file
    png: list[bytes] | None = None


@dataclass
class LeRobotData:
    root: Path
    version: str
    fps: float
    camera_keys: list[str]
    images: dict[str, np.ndarray]
    state: np.ndarray | None
    action: np.ndarray
    episode_index: np.ndarray
    frame_index: np.ndarray
    task_index: np.ndarray
    tasks: list[str]
    episodes: list[EpisodeRange]
    stats: dict[str, dict[str, np.ndarray]]
    locators: dict[str, FrameLocator] = field(default_factory=dict)  # per camera key
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # other float features, e.g. environment_state
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.action)


# -- validation ---------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
    return rows


def _v3_episodes(root: Path) -> list[dict]:
    files = sorted((root / "meta/episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no episode metadata: expected {root}/meta/episodes/chunk-000/file-000.parquet")
    rows = []
    for f in files:
        names = [n for n in pq.read_schema(f).names if not n.startswith("stats/")]
        rows += pq.read_table(f, columns=names).to_pylist()
    return sorted(rows, key=lambda r: r["episode_index"])


def _episodes(root: Path, info: dict) -> list[dict]:
    """Episode rows with data/video file paths resolved, for either layout."""
    version = info["codebase_version"]
    cams = [k for k, f in info["features"].items() if f.get("dtype") == "video"]
    if version == "v3.0":
        eps = _v3_episodes(root)
        for e in eps:
            e["data_file"] = root / info["data_path"].format(chunk_index=e["data/chunk_index"], file_index=e["data/file_index"])
            e["video_files"] = {}
            for k in cams:
                if f"videos/{k}/chunk_index" not in e:
                    raise ValueError(f"{root}/meta/episodes: no videos/{k}/* columns for video feature {k}")
                path = root / info["video_path"].format(video_key=k, chunk_index=e[f"videos/{k}/chunk_index"], file_index=e[f"videos/{k}/file_index"])
                e["video_files"][k] = (path, float(e[f"videos/{k}/from_timestamp"]))
        return eps
    eps = sorted(_read_jsonl(root / "meta/episodes.jsonl"), key=lambda r: r["episode_index"])
    size = info.get("chunks_size", 1000)
    for e in eps:
        ep, chunk = e["episode_index"], e["episode_index"] // size
        e["data_file"] = root / info["data_path"].format(episode_chunk=chunk, episode_index=ep)
        e["video_files"] = {
            k: (root / info["video_path"].format(episode_chunk=chunk, video_key=k, episode_index=ep), 0.0) for k in cams
        }
    return eps


def validate_lerobot(root: Path, action_key: str = ACTION) -> dict:
    """Check a dataset folder without decoding anything; returns its info.json dict.

    Raises FileNotFoundError / ValueError naming the file or key at fault.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    info_path = root / "meta/info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"not a LeRobot dataset: missing {info_path}")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{info_path}: not valid JSON ({e})") from None
    version = info.get("codebase_version")
    if version not in VERSIONS:
        raise ValueError(f"{info_path}: codebase_version {version!r} is not supported (supported: {', '.join(VERSIONS)})")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise ValueError(f"{info_path}: missing key {key!r}")
    feats = info["features"]
    if action_key not in feats:
        raise ValueError(f"{info_path}: no {action_key!r} feature (features: {', '.join(feats)}); name the "
                         "dataset's action feature with --action-key")
    for key, ft in feats.items():
        shape = ft.get("shape")
        if not isinstance(shape, list | tuple) or not all(isinstance(s, int) and s > 0 for s in shape):
            raise ValueError(f"{info_path}: feature {key!r} has invalid shape {shape!r}")
        if ft.get("dtype") in CAMERA_DTYPES:
            if len(shape) != 3 or 3 not in (shape[0], shape[2]):
                raise ValueError(f"{info_path}: camera {key!r} shape must be (h, w, 3), got {shape}")
        elif key in (action_key, *STATE_KEYS) and len(shape) != 1:
            raise ValueError(f"{info_path}: feature {key!r} must be a vector, got shape {shape}")
    if any(ft.get("dtype") == "video" for ft in feats.values()) and not info.get("video_path"):
        raise ValueError(f"{info_path}: has video features but no 'video_path'")
    tasks_file = root / ("meta/tasks.parquet" if version == "v3.0" else "meta/tasks.jsonl")
    if not tasks_file.is_file():
        raise FileNotFoundError(f"missing {tasks_file}")
    eps = _episodes(root, info)
    if not eps:
        raise ValueError(f"{root}: dataset has no episodes")
    for e in eps:
        if not e["data_file"].is_file():
            raise FileNotFoundError(f"episode {e['episode_index']}: missing data file {e['data_file']}")
        for key, (path, _) in e["video_files"].items():
            if not path.is_file():
                raise FileNotFoundError(f"episode {e['episode_index']}: missing video for {key}: {path}")
    return info


# -- loading ------------------------------------------------------------------------


def _column(table: pa.Table, key: str, dim: int, where: Path) -> np.ndarray:
    col = table.column(key).combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        values = col.flatten().to_numpy(zero_copy_only=False)
        if len(values) != len(col) * dim:
            raise ValueError(f"{where}: column {key!r} does not hold {dim} values per row as info.json says")
        return values.reshape(len(col), dim).astype(np.float32)
    values = col.to_numpy(zero_copy_only=False)
    if dim != 1:
        raise ValueError(f"{where}: column {key!r} is scalar but info.json says shape [{dim}]")
    return values.reshape(len(col), 1).astype(np.float32)


def _read_tasks(root: Path, version: str) -> list[str]:
    if version != "v3.0":
        rows = _read_jsonl(root / "meta/tasks.jsonl")
        by_index = {int(r["task_index"]): r["task"] for r in rows}
    else:
        table = pq.read_table(root / "meta/tasks.parquet")
        names = table.column_names
        # The task string is the pandas index: named "task", or "__index_level_0__" when unnamed.
        key = "task" if "task" in names else next((n for n in names if n != "task_index"), None)
        if key is None or "task_index" not in names:
            raise ValueError(f"{root}/meta/tasks.parquet: expected a task column/index and a task_index column, got {names}")
        by_index = dict(zip(table.column("task_index").to_pylist(), table.column(key).to_pylist()))
    return [by_index.get(i, "") for i in range(max(by_index) + 1)] if by_index else []


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image  # only for datasets that store frames as PNG in parquet

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def camera_name(key: str) -> str:
    """A camera's name: its feature key without LeRobot's observation.images. prefix."""
    return key[len(IMAGES):] if key.startswith(IMAGES) else key


def camera_keys(root: Path, info: dict, cameras: list[str] | None) -> list[str]:
    """Feature keys of the asked cameras (names or keys; None = all), or an error naming the dataset's."""
    feats = info["features"]
    all_cams = [k for k, f in feats.items() if f.get("dtype") in CAMERA_DTYPES]
    if cameras is None:
        return all_cams
    keys = []
    for c in cameras:
        key = c if c.startswith(IMAGES) or c in feats else IMAGES + c
        if key not in all_cams:
            raise ValueError(f"{root}: camera {c!r} not in dataset; cameras: {', '.join(all_cams) or '(none)'}")
        keys.append(key)
    return keys


def dataset_cameras(info: dict) -> list[str]:
    """The names of a dataset's cameras (features of dtype image or video, without observation.images.)."""
    return [camera_name(k) for k, f in info["features"].items() if f.get("dtype") in CAMERA_DTYPES]


def camera_shapes(info: dict, cameras: list[str]) -> dict[str, list[int]]:
    """(h, w) each named camera is recorded at (features stored as (h, w, 3) or (3, h, w))."""
    keys = {camera_name(k): k for k in info["features"]}
    shapes = {c: info["features"][keys[c]]["shape"] for c in cameras}
    return {c: list(s[:2] if s[2] == 3 else s[1:]) for c, s in shapes.items()}


def decode_all(loc: FrameLocator, key: str) -> np.ndarray:
    """Every frame of one camera, decoded into one (N, h, w, 3) array: each video file once, in order."""
    n = len(loc.png) if loc.png is not None else len(loc.time)
    out = np.empty((n, *loc.shape, 3), np.uint8)
    if loc.png is not None:
        for i, data in enumerate(loc.png):
            out[i] = decode_png(data)
        return out
    for f, path in enumerate(loc.paths):
        rows = np.flatnonzero(loc.file == f)
        for j, frame in match_frames(path, loc.time[rows], loc.tolerance):
            if frame.shape != out.shape[1:]:
                raise ValueError(f"{path}: frames are {frame.shape}, info.json says {key} is {out.shape[1:]}")
            out[rows[j]] = frame
    return out


def state_key_of(info: dict, state_key: str | None = None) -> str | None:
    """The dataset's state feature: the one named, else observation.state or state if present."""
    if state_key is not None:
        if state_key not in info["features"]:
            raise ValueError(f"no state feature {state_key!r}; features: {', '.join(info['features'])}")
        return state_key
    return next((k for k in STATE_KEYS if k in info["features"]), None)


def vector_features(info: dict) -> list[str]:
    """The float vector features of a dataset (action, observation.state, ...), from its info.json."""
    return [k for k, f in info["features"].items()
            if f.get("dtype") in ("float32", "float64") and k != "timestamp" and len(f["shape"]) == 1]


def load_lerobot(root: Path, cameras: list[str] | None = None, decode: bool = True, action_key: str = ACTION,
                 state_key: str | None = None) -> LeRobotData:
    """Load a dataset. cameras: names or full keys; None = all cameras. decode: decode every frame
    into memory (LeRobotData.images); otherwise only locate them (LeRobotData.locators).
    action_key / state_key: the dataset's names for them (state: observation.state or state when
    None). The result uses the standard keys: ACTION, STATE and observation.images.<camera name>."""
    root = Path(root)
    info = validate_lerobot(root, action_key)
    state_key = state_key_of(info, state_key)
    version, fps = info["codebase_version"], float(info["fps"])
    feats = info["features"]
    cam_keys = camera_keys(root, info, cameras)
    eps = _episodes(root, info)
    tasks = _read_tasks(root, version)

    # Data: read each file once, keep rows in global `index` order.
    vector_keys = vector_features(info)
    tables = []
    for path in dict.fromkeys(e["data_file"] for e in eps):
        t = pq.read_table(path)
        for k in [action_key, "episode_index", "frame_index", "timestamp"] + [k for k in vector_keys]:
            if k not in t.column_names:
                raise ValueError(f"{path}: missing column {k!r}")
        tables.append(t)
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    order = np.lexsort((table.column("frame_index").to_numpy(), table.column("episode_index").to_numpy()))
    table = table.take(pa.array(order))
    vectors = {}
    for k in vector_keys:
        vectors[k] = _column(table, k, feats[k]["shape"][0], root / info["data_path"])
    episode_index = table.column("episode_index").to_numpy().astype(np.int64)
    frame_index = table.column("frame_index").to_numpy().astype(np.int64)
    timestamp = table.column("timestamp").to_numpy().astype(np.float64)
    if "task_index" in table.column_names:
        task_index = table.column("task_index").to_numpy().astype(np.int64)
    else:
        task_index = np.zeros(len(table), np.int64)

    ranges, starts = [], np.searchsorted(episode_index, [e["episode_index"] for e in eps])
    for e, start in zip(eps, starts):
        end = int(np.searchsorted(episode_index, e["episode_index"], side="right"))
        if end - start != e["length"]:
            raise ValueError(f"{e['data_file']}: episode {e['episode_index']} has {end - start} rows, metadata says {e['length']}")
        task = e["tasks"][0] if e.get("tasks") else (tasks[task_index[start]] if tasks else "")
        ranges.append(EpisodeRange(int(e["episode_index"]), int(start), end, task))

    locators = {}
    for key in cam_keys:
        h, w = feats[key]["shape"][:2] if feats[key]["shape"][2] == 3 else feats[key]["shape"][1:]
        loc = FrameLocator(shape=(h, w), tolerance=0.5 / fps)
        if feats[key]["dtype"] == "image":
            loc.png = [x["bytes"] for x in table.column(key).to_pylist()]
        else:
            loc.file, loc.time = np.empty(len(table), np.int32), np.empty(len(table), np.float64)
            file_ids: dict[Path, int] = {}
            for e, r in zip(eps, ranges):
                path, from_ts = e["video_files"][key]
                loc.file[r.start:r.end] = file_ids.setdefault(path, len(file_ids))
                loc.time[r.start:r.end] = from_ts + timestamp[r.start:r.end]
            loc.paths = list(file_ids)
        locators[key] = loc
    images = {key: decode_all(loc, key) for key, loc in locators.items()} if decode else {}

    # from here on, the standard keys
    rename = {action_key: ACTION, **({state_key: STATE} if state_key else {}),
              **{k: IMAGES + camera_name(k) for k in cam_keys}}
    vectors = {rename.get(k, k): v for k, v in vectors.items()}
    locators = {rename[k]: v for k, v in locators.items()}
    images = {rename[k]: v for k, v in images.items()}
    cam_keys = [rename[k] for k in cam_keys]
    stats = _load_stats(root)
    if stats is not None:
        stats = {rename.get(k, k): v for k, v in stats.items()}
    if stats is None:  # v2.1 without stats.json: compute what training needs
        stats = {k: vector_stats(v) for k, v in vectors.items()}
        for k, v in images.items():  # camera statistics only when decoded: training does not read them
            stats[k] = histogram_stats(image_histogram(v), len(v))
    return LeRobotData(
        root=root,
        version=version,
        fps=fps,
        camera_keys=cam_keys,
        images=images,
        state=vectors.pop(STATE, None),
        action=vectors.pop(ACTION),
        episode_index=episode_index,
        frame_index=frame_index,
        task_index=task_index,
        tasks=tasks,
        episodes=ranges,
        stats=stats,
        locators=locators,
        extra=vectors,
        info=info,
    )


def _load_stats(root: Path) -> dict | None:
    path = root / "meta/stats.json"
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return {k: {s: np.asarray(v) for s, v in st.items()} for k, st in raw.items()}
