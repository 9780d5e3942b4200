"""MP4 encode/decode with PyAV (FFmpeg bundled in the wheel, no system ffmpeg).

Dataset videos are H.264 in x264's lossless mode (CRF 0) with full-resolution
chroma (yuv444p). At 64-96 px a target is a few pixels, and Meta-World renders
without anti-aliasing, so lossy settings ring at every edge: measured mean
error 2.5/255 at CRF 12 and 4.7/255 with 4:2:0 at CRF 18, versus 0.3/255 (only
the RGB<->YUV rounding) at CRF 0, for about 1 KB per 64 px frame.
FFmpeg/torchcodec (LeRobot's reader) decodes it. Rollout videos meant for
people use yuv420p, which every player shows.
"""
import math
import os
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

DATASET_CODEC = dict(codec="libx264", pix_fmt="yuv444p", crf=0, gop=16)
PREVIEW_CODEC = dict(codec="libx264", pix_fmt="yuv420p", crf=20, gop=32)


class VideoWriter:
    """Appends RGB frames to one mp4; frame i gets pts i at time base 1/fps."""

    def __init__(self, path: Path, fps: int, height: int, width: int, codec="libx264", pix_fmt="yuv444p", crf=12, gop=16):
        if pix_fmt == "yuv420p" and (height % 2 or width % 2):
            raise ValueError(f"{path}: yuv420p needs even height/width, got {height}x{width}")
        self.path = Path(path)
        self.fps, self.height, self.width = int(fps), int(height), int(width)
        self._container = av.open(str(self.path), mode="w", format="mp4")
        stream = self._container.add_stream(codec, rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, pix_fmt
        stream.time_base = Fraction(1, self.fps)
        stream.codec_context.gop_size = gop
        # No B-frames keeps decode order == display order: simpler seeking for readers.
        opts = {"crf": str(crf), "bf": "0"} if codec in ("libx264", "libx265") else {"crf": str(crf)}
        if codec == "libx264":
            opts["preset"] = "veryfast"
        stream.options = opts
        self._stream = stream
        self.frames = 0

    def add(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"{self.path}: frames must be uint8 (T,{self.height},{self.width},3), got {frames.dtype} {frames.shape}"
            )
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.frames
            self.frames += 1
            for packet in self._stream.encode(frame):
                self._container.mux(packet)

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None


def encode_video(path: Path, frames: np.ndarray, fps: int, preview: bool = True) -> Path:
    """Write frames (T,h,w,3) uint8 to path in one go."""
    frames = np.asarray(frames)
    opts = PREVIEW_CODEC if preview else DATASET_CODEC
    if opts["pix_fmt"] == "yuv420p" and (frames.shape[1] % 2 or frames.shape[2] % 2):
        frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]  # x264 4:2:0 needs even sizes
    w = VideoWriter(path, fps, frames.shape[1], frames.shape[2], **opts)
    w.add(frames)
    w.close()
    return Path(path)


def decode_video_with_times(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All frames (N,h,w,3) uint8 and their presentation times in seconds (N,), sorted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file missing: {path}")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path}: no video frames")
    frames.sort(key=lambda x: x[0])
    return np.stack([f for _, f in frames]), np.array([t for t, _ in frames])


def _frame_time(frame) -> float:
    return float(frame.pts * frame.time_base)


def match_frames(path: Path, wants: np.ndarray, tolerance: float) -> Iterator[tuple[int, np.ndarray]]:
    """Decode a video once, front to back, yielding (j, frame) for each wanted time wants[j]: the
    first frame at or after wants[j] - tolerance, which must lie within tolerance of it. Memory
    holds one frame, however long the file. The random-access reader below picks the same frame."""
    order = np.argsort(wants, kind="stable")
    pending, last = 0, None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            t = last = _frame_time(frame)
            image = None
            while pending < len(order) and t >= wants[order[pending]] - tolerance:
                j = order[pending]
                if abs(t - wants[j]) > tolerance:
                    raise ValueError(f"{path}: no frame at {wants[j]:.3f} s (nearest after it: {t:.3f} s)")
                image = frame.to_ndarray(format="rgb24") if image is None else image
                yield int(j), image
                pending += 1
            if pending == len(order):
                return
    raise ValueError(f"{path}: video ends at {last if last is not None else 0:.3f} s but frames up to "
                     f"{wants[order[-1]]:.3f} s are asked for (truncated?)")


# Containers a forked process inherited. Freeing one there would hang: FFmpeg joins the decoder's
# threads, which exist only in the parent. They are kept referenced, never freed, in the child.
_INHERITED: list = []


class VideoFrames:
    """Random access to video frames by timestamp: seek to the keyframe before the time and
    decode forward to it. Keeps the last few files open, per process: a forked DataLoader worker
    must not share a file offset with its parent, so it opens its own."""

    def __init__(self, max_open: int = 8):
        self.max_open = max_open
        self._open: OrderedDict[Path, av.container.InputContainer] = OrderedDict()
        self._pid = os.getpid()

    def __getstate__(self):
        return {"max_open": self.max_open, "_open": OrderedDict(), "_pid": None}

    def _container(self, path: Path):
        if self._pid != os.getpid():  # inherited through fork: the parent's files are not ours to read
            _INHERITED.extend(self._open.values())  # and never ours to free (see _INHERITED)
            self._open, self._pid = OrderedDict(), os.getpid()
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        try:
            container = av.open(str(path))
        except (av.error.FFmpegError, OSError) as e:
            raise ValueError(f"{path}: cannot open video ({e})") from None
        self._open[path] = container
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)[1].close()
        return container

    def frame_at(self, path: Path, t: float, tolerance: float) -> np.ndarray:
        container = self._container(Path(path))
        stream = container.streams.video[0]
        target = t - tolerance
        container.seek(max(0, math.floor(target / stream.time_base)), stream=stream, backward=True)
        last = None
        for frame in container.decode(stream):
            last = _frame_time(frame)
            if last >= target:
                if abs(last - t) > tolerance:
                    raise ValueError(f"{path}: no frame at {t:.3f} s (nearest after it: {last:.3f} s)")
                return frame.to_ndarray(format="rgb24")
        raise ValueError(f"{path}: video ends at {last or 0:.3f} s, a frame at {t:.3f} s is asked for (truncated?)")

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


def video_duration(path: Path) -> float:
    """The duration a video's header declares, in seconds (no decoding): catches truncated files
    whose index is cut off before anything is decoded."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.duration is not None:
                return float(stream.duration * stream.time_base)
            return float(container.duration or 0) / av.time_base
    except (av.error.FFmpegError, OSError, IndexError) as e:
        raise ValueError(f"{path}: not a readable video ({e}); truncated or corrupt?") from None
