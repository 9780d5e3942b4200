"""`--policy.type=vla0`: VLA-0's options as LeRobot policy fields.

LeRobot's factory finds the rest by name from this module's: configuration_vla0.VLA0Config ->
modeling_vla0.VLA0Policy and processor_vla0.make_vla0_pre_post_processors. Defaults are read from
`vla0 train`'s own TrainConfig, so both front ends train the same policy from the same numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import FeatureType, NormalizationMode
from lerobot.optim.optimizers import AdamWConfig

from vla0.config import ACTION_FORMATS, IMAGE_PREFIX, NORMALIZATIONS
from vla0.train.trainer import TrainConfig

_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _default(name: str):
    """TrainConfig's default for `name` (a plain value, or a factory for lists)."""
    f = _TRAIN_FIELDS[name]
    if f.default_factory is not dataclasses.MISSING:
        return field(default_factory=f.default_factory)
    return field(default=f.default)


def camera_name(key: str) -> str:
    """A LeRobot image key -> the camera name vla0 stores: observation.images.top -> top;
    LeRobot's single-camera key observation.image -> image."""
    return key[len(IMAGE_PREFIX):] if key.startswith(IMAGE_PREFIX) else key.rsplit(".", 1)[-1]


@PreTrainedConfig.register_subclass("vla0")
@dataclass
class VLA0Config(PreTrainedConfig):
    # -- the VLM: a folder made by `vla0 init-model`, a Qwen2.5-VL folder, or a hub id --
    model: str | None = None
    # -- what the model writes (VLA-0: integers 0..num_bins as text) --
    chunk_size: int = _default("chunk_size")
    n_action_steps: int = _default("n_action_steps")
    num_bins: int | None = _default("num_bins")  # None: 1000 for text, 256 for bins
    normalization: str = _default("normalization")
    action_format: str = _default("action_format")
    # -- what it reads: these image keys (None: every camera of the dataset) --
    cameras: list[str] | None = None
    image_layout: str = _default("image_layout")
    image_size: list[int] | None = _default("image_size")
    crop_fraction: float = _default("crop_fraction")
    # -- masked action augmentation (VLA-0) --
    mask_max_frac: float = _default("mask_max_frac")
    mask_p_none: float = _default("mask_p_none")
    # -- LoRA (0 = full fine-tuning) --
    lora_rank: int = _default("lora_rank")
    lora_alpha: int = _default("lora_alpha")
    lora_targets: list[str] = _default("lora_targets")
    lora_scope: str = _default("lora_scope")
    # -- execution: temporal ensembling over the newest chunks --
    ensemble: int = _default("ensemble")
    ensemble_weights: str = _default("ensemble_weights")
    # -- optimiser (LeRobot's AdamW preset) --
    optimizer_lr: float = _default("lr")
    optimizer_weight_decay: float = _default("weight_decay")
    optimizer_grad_clip_norm: float = _default("max_grad_norm")
    # vla0 normalises actions itself (its bins come from the dataset's min/max or quantiles):
    # LeRobot's normaliser leaves every feature alone.
    normalization_mapping: dict[str, NormalizationMode] = field(default_factory=lambda: {
        "VISUAL": NormalizationMode.IDENTITY, "STATE": NormalizationMode.IDENTITY,
        "ACTION": NormalizationMode.IDENTITY})

    def __post_init__(self):
        super().__post_init__()
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"vla0: --policy.normalization must be one of {list(NORMALIZATIONS)}, "
                             f"got {self.normalization!r}")
        if self.action_format not in ACTION_FORMATS:
            raise ValueError(f"vla0: --policy.action_format must be one of {list(ACTION_FORMATS)}, "
                             f"got {self.action_format!r}")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(f"vla0: --policy.n_action_steps ({self.n_action_steps}) must be in "
                             f"1..--policy.chunk_size ({self.chunk_size})")

    # -- what LeRobot's dataset must deliver per sample --
    @property
    def observation_delta_indices(self) -> None:
        return None  # the current frame only (VLA-0 reads no history)

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))  # the chunk the model learns to write

    @property
    def reward_delta_indices(self) -> None:
        return None

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(lr=self.optimizer_lr, weight_decay=self.optimizer_weight_decay,
                           grad_clip_norm=self.optimizer_grad_clip_norm)

    def get_scheduler_preset(self) -> None:
        return None  # constant learning rate, as `vla0 train`'s default

    @property
    def camera_keys(self) -> list[str]:
        """The image keys the policy reads, in order."""
        have = [k for k, f in (self.input_features or {}).items() if f.type is FeatureType.VISUAL]
        return list(self.cameras) if self.cameras else have

    def validate_features(self) -> None:
        """The dataset (or env) against what vla0 can learn from: one line each, before any model loads."""
        have = [k for k, f in (self.input_features or {}).items() if f.type is FeatureType.VISUAL]
        if not have:
            raise ValueError("vla0: the dataset has no camera feature (observation.images.*); VLA-0 reads "
                             f"images, and the features are {sorted(self.input_features or {})}")
        missing = [k for k in self.cameras or [] if k not in have]
        if missing:
            raise ValueError(f"vla0: --policy.cameras {missing} are not in the dataset; it has cameras {have}")
        action = (self.output_features or {}).get("action")
        if action is None or len(action.shape) != 1:
            raise ValueError("vla0: the dataset has no 1-D 'action' feature; its features are "
                             f"{sorted(self.output_features or {})}")
