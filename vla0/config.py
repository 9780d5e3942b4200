"""The policy's own configuration: everything besides the VLM weights needed to turn an
observation into an action. Saved as vla0_policy.json next to each checkpoint.

Names (one meaning each, as LeRobot's): `chunk_size` is H, the steps one prediction covers;
`n_action_steps` is how many of them run before the next prediction; an episode's step cap is
`max_episode_steps` (an environment setting, never stored here)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from vla0_client.executor import check_latency

POLICY_FILE = "vla0_policy.json"
IMAGE_PREFIX = "observation.images."
HEADS = ("text", "flow")
NORMALIZATIONS = {"minmax": ("min", "max"), "quantile": ("q01", "q99")}
ACTION_FORMATS = ("text", "bins")  # vla0.processor: VLA-0's digits, OpenVLA's action tokens
# vla0 0.1 names, still read from older policy folders
_RENAMED = {"horizon": "chunk_size", "action_horizon": "n_action_steps"}


@dataclass
class PolicyConfig:
    # -- what the model writes --
    action_dim: int  # D
    cameras: list[str]  # camera names, without the "observation.images." prefix
    action_stats: dict[str, list[float]]  # min/max/q01/q99... per action dimension
    chunk_size: int = 8  # H: steps per predicted chunk
    num_bins: int = 1000  # B: text: actions are integers 0..B; bins: the number of bins (tokens)
    normalization: str = "minmax"  # or "quantile" (q01/q99); the bins format always uses quantile
    action_format: str = "text"  # "text" (VLA-0: digits) or "bins" (OpenVLA: one token per number)
    # -- what the model reads --
    image_layout: str = "tile"  # "tile": cameras side by side in one image; "separate": one image each
    image_size: list[int] | None = None  # (h, w) each camera is resized to; None keeps the input size
    crop_fraction: float = 0.875  # random crop in training, centre crop at inference (VLA-0)
    mask_char: str = "_"  # masked action augmentation replaces action characters with this
    vision_id: bool = False  # "Picture 1: " before each image (Qwen's add_vision_id; VLA-0's released runs)
    camera_shapes: dict[str, list[int]] = field(default_factory=dict)  # (h, w) each camera was recorded at
    state_dim: int = 0  # length of observation.state in the training data (0: none); not a model input
    # -- which head turns the VLM into actions --
    head: str = "text"  # "text": the VLM writes the actions (VLA-0); "flow": a flow-matching expert reads it
    flow_expert: dict = field(default_factory=dict)  # the flow head's FlowExpertConfig (vla0.policy.flow_head)
    # -- how chunks are executed --
    n_action_steps: int = 1  # steps executed per prediction
    ensemble: int = 8  # chunks averaged per step (temporal ensembling); 1 = off
    ensemble_decay: float = 0.0  # ALOHA's exp(-decay * i) weights; 0 = uniform
    ensemble_weights: str = "exponential"  # or "vla0": newest chunk 1.0, older ones 0.5 (VLA-0's code)
    execution: str = "sync"  # sync | async | async-ensemble | rtc (vla0_client.executor)
    latency_steps: int = 0  # control steps a prediction takes, simulated in evaluation (0: none)
    # -- provenance, for the record: nothing reads it back --
    base_model: str = ""  # what training started from (an adapter loads on top of it)
    dataset: str = ""
    training: dict = field(default_factory=dict)  # the run's config (supervised, RL) that produced it

    def __post_init__(self):
        if self.image_layout not in ("tile", "separate"):
            raise ValueError(f"image_layout must be 'tile' or 'separate', got {self.image_layout!r}")
        if not self.cameras:
            raise ValueError("a policy needs at least one camera")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got {self.normalization!r}")
        if self.action_format not in ACTION_FORMATS:
            raise ValueError(f"action_format must be one of {list(ACTION_FORMATS)}, got {self.action_format!r}")
        if self.action_format == "bins" and self.normalization != "quantile":
            raise ValueError("the bins action format normalises with q01/q99 (OpenVLA): normalization must be "
                             f"'quantile', got {self.normalization!r}")
        for key in ("min", "max", *NORMALIZATIONS[self.normalization]):
            if len(self.action_stats.get(key, [])) != self.action_dim:
                raise ValueError(f"action_stats[{key!r}] must have {self.action_dim} values "
                                 f"(action_dim), got {self.action_stats.get(key)}")
        if self.chunk_size < 1 or self.num_bins < 1:
            raise ValueError(f"chunk_size and num_bins must be >= 1, got {self.chunk_size} and {self.num_bins}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if (self.head == "flow") != bool(self.flow_expert):
            raise ValueError("a flow-head policy needs flow_expert settings, and only a flow-head policy has them")
        check_execution(self.n_action_steps, self.ensemble, self.chunk_size)
        check_latency(self.latency_steps, self.chunk_size, self.execution)
        if self.ensemble_weights not in ("exponential", "vla0"):
            raise ValueError(f"ensemble_weights must be 'exponential' or 'vla0', got {self.ensemble_weights!r}")

    @property
    def image_keys(self) -> list[str]:
        return [IMAGE_PREFIX + c for c in self.cameras]

    @property
    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The dataset's min and max per dimension: every executed action is clipped to them."""
        return (np.asarray(self.action_stats["min"], np.float32), np.asarray(self.action_stats["max"], np.float32))

    def save(self, folder: str | os.PathLike) -> None:
        Path(folder, POLICY_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "PolicyConfig":
        path = Path(folder, POLICY_FILE)
        if not path.exists():
            raise FileNotFoundError(f"{folder} is not a vla0 policy: {POLICY_FILE} is missing")
        return cls.from_dict(json.loads(path.read_text()), where=str(path))

    @classmethod
    def from_dict(cls, raw: dict, where: str = "policy config") -> "PolicyConfig":
        raw = {_RENAMED.get(k, k): v for k, v in raw.items()}
        extra = raw.pop("extra", None) or {}  # vla0 0.1's untyped side channel
        raw.setdefault("camera_shapes", extra.get("camera_shapes", {}))
        raw.setdefault("state_dim", extra.get("state_dim", 0))
        raw.setdefault("dataset", extra.get("dataset", ""))
        raw.setdefault("training", {k: v for k, v in extra.items() if k in ("train", "rl")})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; a PolicyConfig has {sorted(known)}")
        return cls(**raw)


def check_execution(n_action_steps: int, ensemble: int, chunk_size: int) -> None:
    """How a policy executes its chunks: a new chunk every `n_action_steps` steps (at most
    chunk_size: a chunk must cover the steps it is executed for), `ensemble` newest chunks voting."""
    if not 1 <= n_action_steps <= chunk_size:
        raise ValueError(f"n_action_steps must be in 1..{chunk_size} (the chunk_size), got {n_action_steps}")
    if ensemble < 1:
        raise ValueError(f"ensemble must be >= 1, got {ensemble}")


def stats_to_lists(stats: dict[str, np.ndarray]) -> dict[str, list[float]]:
    return {k: np.asarray(v, dtype=np.float64).reshape(-1).tolist() for k, v in stats.items()}
