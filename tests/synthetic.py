"""A small LeRobot v3.0 dataset whose actions are a function of the image and the task,
so a policy can only reproduce them by reading both."""

from pathlib import Path

import numpy as np

from vla0.data.lerobot_writer import LeRobotWriter

TASKS = ["move left", "move right"]


def synthetic_actions(t: int, sign: float) -> np.ndarray:
    return np.array([sign * np.sin(t / 2), np.cos(t / 2), sign * t / 10, 0.5], np.float32)


def synthetic_frame(t: int, size: int = 32) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    img[:, : (t + 1) * size // 8] = 255  # a bar that grows with t: readable after a crop
    img[..., 1] = 40 * t
    return img


def write_synthetic_dataset(root: Path, steps: int = 6, size: int = 32) -> Path:
    writer = LeRobotWriter(root, fps=10, cameras={"front": (size, size)}, state_dim=4, action_dim=4)
    for e, task in enumerate(TASKS):
        sign = -1.0 if e == 0 else 1.0
        frames = np.stack([synthetic_frame(t, size) for t in range(steps)])
        actions = np.stack([synthetic_actions(t, sign) for t in range(steps)])
        writer.add_episode({"front": frames}, state=actions, action=actions, task=task)
    return writer.finalize()
