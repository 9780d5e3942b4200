"""Frames of a LeRobot dataset -> training samples: camera frames, task, and the next H actions.
Frames come from a FrameSource (memory, the frame cache or the videos: vla0.data.streaming).

A chunk that runs past the end of its episode repeats the episode's last action (the robot
holds still once done), as LeRobot does when padding action chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vla0.data.lerobot_dataset import LeRobotData
from vla0.data.streaming import FrameSource


@dataclass
class Sample:
    frames: list[np.ndarray]  # one (h, w, 3) uint8 image per camera
    task: str
    actions: np.ndarray  # (H, D)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # the requested vector features at this frame


class ChunkDataset:
    def __init__(self, data: LeRobotData, image_keys: list[str], horizon: int, frames: FrameSource | None = None,
                 vector_keys: list[str] = ()):
        """frames: where camera frames come from (default: data.images, decoded in memory);
        vector_keys: vector features each sample carries (e.g. observation.state for a flow expert)."""
        self.data = data
        self.vectors = {k: data.state if k == "observation.state" else data.extra[k] for k in vector_keys}
        self.frames = frames or FrameSource(data)
        self.image_keys = image_keys
        self.horizon = horizon
        # For each frame, the last frame index of its episode, so chunk ends clamp there.
        self._episode_end = np.empty(len(data.action), dtype=np.int64)
        for ep in data.episodes:
            self._episode_end[ep.start:ep.end] = ep.end - 1

    def __len__(self) -> int:
        return len(self.data.action)

    def __getitem__(self, i: int) -> Sample:
        rows = np.minimum(np.arange(i, i + self.horizon), self._episode_end[i])
        return Sample(
            frames=[self.frames(k, i) for k in self.image_keys],
            task=self.data.tasks[int(self.data.task_index[i])],
            actions=self.data.action[rows],
            vectors={k: v[i] for k, v in self.vectors.items()},
        )
