"""The policy's own configuration: everything besides the VLM weights needed to turn
an observation into an action. Saved as vla0_policy.json next to each checkpoint."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

POLICY_FILE = "vla0_policy.json"
IMAGE_PREFIX = "observation.images."


@dataclass
class PolicyConfig:
    action_dim: int  # D
    cameras: list[str]  # camera names, without the "observation.images." prefix
    action_stats: dict[str, list[float]]  # min/max/q01/q99... per action dimension
    horizon: int = 8  # H, steps per predicted chunk
    num_bins: int = 1000  # B, actions are integers 0..B
    normalization: str = "minmax"  # or "quantile" (q01/q99)
    image_layout: str = "tile"  # "tile": cameras side by side in one image; "separate": one image each
    image_size: list[int] | None = None  # (h, w) each camera is resized to; None keeps the input size
    crop_fraction: float = 0.875  # random crop in training, centre crop at inference (VLA-0)
    mask_char: str = "_"  # masked action augmentation replaces action characters with this
    action_horizon: int = 1  # steps executed per prediction
    ensemble: int = 8  # chunks averaged per step (temporal ensembling); 1 = off
    ensemble_decay: float = 0.0
    base_model: str = ""  # what training started from, for the record
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.image_layout not in ("tile", "separate"):
            raise ValueError(f"image_layout must be 'tile' or 'separate', got {self.image_layout!r}")
        if not self.cameras:
            raise ValueError("a policy needs at least one camera")
        for key in ("min", "max"):
            if len(self.action_stats.get(key, [])) != self.action_dim:
                raise ValueError(f"action_stats[{key!r}] must have {self.action_dim} values "
                                 f"(action_dim), got {self.action_stats.get(key)}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")

    @property
    def image_keys(self) -> list[str]:
        return [IMAGE_PREFIX + c for c in self.cameras]

    def save(self, folder: str | os.PathLike) -> None:
        Path(folder, POLICY_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "PolicyConfig":
        path = Path(folder, POLICY_FILE)
        if not path.exists():
            raise FileNotFoundError(f"{folder} is not a vla0 policy: {POLICY_FILE} is missing")
        return cls(**json.loads(path.read_text()))


def stats_to_lists(stats: dict[str, np.ndarray]) -> dict[str, list[float]]:
    return {k: np.asarray(v, dtype=np.float64).reshape(-1).tolist() for k, v in stats.items()}
