"""Camera frames read when a sample is drawn, in bounded memory whatever the dataset's size.

A FrameSource answers "frame `row` of camera `key`" from one of three places, the first that has it:
  1. frames already in memory (load_lerobot(decode=True): small datasets, tests);
  2. an on-disk cache of frames already resized for training (build_frame_cache), memory-mapped,
     so reading one is a page-cache copy: for small datasets and CPU training, where decoding
     would dominate;
  3. the video itself: PyAV seeks to the keyframe before the frame's timestamp and decodes forward
     (vla0.data.video.VideoFrames), or the PNG bytes of an image feature are decoded.
Memory holds the dataset's tables (a few floats per frame) and a few open video files per
process; frames are never all resident. A FrameSource is picklable: each DataLoader worker
opens its own files.

The cache stores each camera at image_size / crop_fraction (e.g. 256 px for a 224 px crop of
0.875), so a random crop of crop_fraction of a cached frame is exactly the training size and is
not resampled a second time. Training from the cache is therefore close to, not bit-identical
with, training from the videos (one resize before the crop instead of one after it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from vla0.data.lerobot_dataset import FrameLocator, LeRobotData, decode_png
from vla0.data.video import VideoFrames, match_frames, video_duration
from vla0.io import write_file_atomic, write_json_atomic


class FrameSource:
    def __init__(self, data: LeRobotData, cache: dict[str, Path] | None = None):
        self.images = data.images
        self.locators = data.locators
        self.cache_paths = dict(cache or {})
        self._cache: dict[str, np.ndarray] = {}
        self._video = VideoFrames()

    def __getstate__(self):  # memory maps and open videos are per process
        return {**self.__dict__, "_cache": {}, "_video": VideoFrames()}

    def __call__(self, key: str, row: int) -> np.ndarray:
        if key in self.images:
            return self.images[key][row]
        if key in self.cache_paths:
            if key not in self._cache:
                self._cache[key] = open_cache(self.cache_paths[key])
            return np.array(self._cache[key][row])
        loc = self.locators[key]
        if loc.png is not None:
            return decode_png(loc.png[row])
        frame = self._video.frame_at(loc.paths[loc.file[row]], float(loc.time[row]), loc.tolerance)
        if frame.shape[:2] != tuple(loc.shape):
            raise ValueError(f"{loc.paths[loc.file[row]]}: frames are {frame.shape}, the dataset declares "
                             f"{key} as {tuple(loc.shape)}")
        return frame


def check_videos(data: LeRobotData) -> None:
    """Every video file's header must cover the times read from it: a truncated or corrupt file
    fails here, naming it, before a model is loaded rather than mid-training. One open per file,
    no decoding."""
    for key, loc in data.locators.items():
        if loc.png is not None:
            continue
        last = np.zeros(len(loc.paths))
        np.maximum.at(last, loc.file, loc.time)
        for path, t in zip(loc.paths, last):
            duration = video_duration(path)
            if duration and duration + loc.tolerance < t:
                raise ValueError(f"{path}: video lasts {duration:.3f} s but the dataset reads {key} frames up to "
                                 f"{t:.3f} s (truncated?)")


# -- the on-disk frame cache ----------------------------------------------------------------------


def cache_size(loc: FrameLocator, image_size: list[int] | None, crop_fraction: float) -> tuple[int, int]:
    """(h, w) frames are cached at: the crop of crop_fraction is then exactly image_size."""
    if not image_size:
        return tuple(loc.shape)
    return tuple(int(round(s / crop_fraction)) for s in image_size)


def _fingerprint(data: LeRobotData, key: str, size: tuple[int, int]) -> str:
    loc = data.locators[key]
    what = {"root": str(Path(data.root).resolve()), "info": data.info, "key": key, "size": size, "rows": len(data),
            "files": [(str(p), os.path.getsize(p), os.path.getmtime(p)) for p in loc.paths]}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def open_cache(path: Path) -> np.ndarray:
    meta = json.loads(Path(str(path) + ".json").read_text())
    return np.memmap(path, np.uint8, "r", shape=tuple(meta["shape"]))


def build_frame_cache(data: LeRobotData, keys: list[str], folder: Path, image_size: list[int] | None,
                      crop_fraction: float, progress: bool = False) -> dict[str, Path]:
    """One memory-mapped uint8 file per camera under folder, built once (decoding each video file
    front to back, one frame in memory at a time) and reused while the dataset is unchanged."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    paths = {}
    for key in keys:
        loc = data.locators[key]
        h, w = cache_size(loc, image_size, crop_fraction)
        path = folder / f"{key}-{h}x{w}-{_fingerprint(data, key, (h, w))}.u8"
        paths[key] = path
        if Path(str(path) + ".json").is_file():
            continue  # the metadata is written last: its presence means the frames are complete

        def write(tmp: Path, loc=loc, h=h, w=w, key=key) -> None:
            out = np.memmap(tmp, np.uint8, "w+", shape=(len(data), h, w, 3))
            bar = tqdm(total=len(data), desc=f"caching {key}", disable=not progress)

            def put(row: int, frame: np.ndarray) -> None:
                if frame.shape[:2] != (h, w):
                    frame = np.asarray(Image.fromarray(frame).resize((w, h), Image.BILINEAR))
                out[row] = frame
                bar.update(1)

            if loc.png is not None:
                for row, png in enumerate(loc.png):
                    put(row, decode_png(png))
            for f, video in enumerate(loc.paths):
                rows = np.flatnonzero(loc.file == f)
                for j, frame in match_frames(video, loc.time[rows], loc.tolerance):
                    put(int(rows[j]), frame)
            out.flush()
            del out
            bar.close()

        write_file_atomic(path, write)
        write_json_atomic({"shape": [len(data), h, w, 3], "dataset": str(data.root), "key": key}, str(path) + ".json")
    return paths
