"""VLA0Policy for LeRobot: vla0's processor, loss and inference policy behind LeRobot's policy API.

Training (`lerobot-train`): LeRobot's batch (float images in [0, 1], an (H, D) action chunk, the
task string) becomes vla0's training examples (ActionProcessor.training_example: crop, action
text with masked augmentation, labels) and the VLM's cross-entropy is the loss.
Inference (`lerobot-eval`): vla0's own VLA0Policy (constrained decoding, temporal ensembling,
clipping to the dataset's bounds) on the same VLM.

A saved LeRobot policy folder is LeRobot's config.json (+ its processor files) and a complete vla0
policy in `vla0/`, the only copy of the weights: `vla0 eval --policy FOLDER` and `vla0 serve` load
that folder as it is. A vla0 run becomes a LeRobot folder with `vla0-to-lerobot` (convert.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.pretrained import PreTrainedPolicy

from vla0.bins import NUM_BINS
from vla0.config import IMAGE_PREFIX, PolicyConfig, stats_to_lists
from vla0.model.vlm import load_vlm
from vla0.policy.policy import VLA0Policy as InferencePolicy
from vla0.policy.policy import load_policy_vlm
from vla0.processor import ActionProcessor
from vla0.prompt import collate
from vla0.train.model_setup import apply_lora

from lerobot_policy_vla0.configuration_vla0 import VLA0Config, camera_name

VLA0_FOLDER = "vla0"  # inside a LeRobot policy folder: the vla0 policy


def to_uint8_frames(images: torch.Tensor) -> np.ndarray:
    """LeRobot's (B, C, H, W) floats in [0, 1] -> vla0's (B, H, W, C) uint8 frames."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"vla0 expects (B, 3, H, W) images, got {tuple(images.shape)}")
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def policy_config_from(config: VLA0Config, dataset_stats: dict | None) -> PolicyConfig:
    """vla0's PolicyConfig for a fresh policy: cameras and action size from LeRobot's features,
    the bins' range from the dataset's action statistics."""
    config.validate_features()
    if not dataset_stats or "action" not in dataset_stats:
        raise ValueError("vla0: a new policy needs the dataset's action statistics (min/max) to place its bins")
    stats = {k: np.asarray(v.cpu() if torch.is_tensor(v) else v) for k, v in dataset_stats["action"].items()
             if k in ("min", "max", "mean", "std", "q01", "q99")}
    keys = config.camera_keys
    shapes = {camera_name(k): list(config.input_features[k].shape) for k in keys}
    return PolicyConfig(
        action_dim=int(config.output_features["action"].shape[0]), cameras=[camera_name(k) for k in keys],
        action_stats=stats_to_lists(stats), chunk_size=config.chunk_size, action_format=config.action_format,
        num_bins=config.num_bins or (NUM_BINS if config.action_format == "bins" else 1000),
        normalization="quantile" if config.action_format == "bins" else config.normalization,
        image_layout=config.image_layout, image_size=config.image_size, crop_fraction=config.crop_fraction,
        # LeRobot's visual shapes are (C, H, W); vla0 records (H, W)
        camera_shapes={camera_name(k): s[1:] if len(s) == 3 and s[0] == 3 else s[:2] for k, s in shapes.items()},
        n_action_steps=config.n_action_steps, ensemble=config.ensemble, ensemble_weights=config.ensemble_weights,
        base_model=str(config.model), dataset="lerobot", training={"lerobot": {"type": "vla0"}})


class VLA0Policy(PreTrainedPolicy):
    config_class = VLA0Config
    name = "vla0"

    def __init__(self, config: VLA0Config, dataset_stats: dict | None = None, vla0_folder: str | None = None,
                 **kwargs):
        """A new policy from config.model and the dataset's statistics, or (vla0_folder) a saved one."""
        super().__init__(config)
        config.validate_features()
        if vla0_folder is not None:
            self.policy_config = PolicyConfig.load(vla0_folder)
            check_fits(self.policy_config, config)
            vlm = load_policy_vlm(Path(vla0_folder))
        else:
            if not config.model:
                raise ValueError("vla0: give --policy.model, the VLM to fine-tune (a `vla0 init-model` folder, a "
                                 "Qwen2.5-VL folder or hub id)")
            self.policy_config = policy_config_from(config, dataset_stats)
            vlm = load_vlm(config.model)
        self.vlm = vlm
        model = vlm.model
        if config.lora_rank and vla0_folder is None:
            model = apply_lora(model, config, None)
        self.model = model  # the module LeRobot trains, moves and saves
        self.processor = ActionProcessor(self.policy_config, vlm.tokenizer, vlm.image_processor)
        self.rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        self._inference: InferencePolicy | None = None

    # -- LeRobot's save / load -----------------------------------------------------------------
    def _save_pretrained(self, save_directory: Path) -> None:
        """LeRobot's config.json, and the vla0 policy in vla0/ (the weights' only copy)."""
        self.config._save_pretrained(save_directory)
        folder = Path(save_directory) / VLA0_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        model = self.model.module if hasattr(self.model, "module") else self.model
        model.save_pretrained(folder)  # a LoRA model writes its adapter; load_policy_vlm puts it on its base
        self.vlm.save_processor(folder)
        config = self.policy_config
        if self.config.lora_rank and Path(str(config.base_model)).exists():
            config.base_model = str(Path(config.base_model).resolve())
        config.save(folder)

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path: str | Path, *, config: PreTrainedConfig | None = None,
                        **kwargs) -> "VLA0Policy":
        folder = Path(pretrained_name_or_path)
        if not (folder / VLA0_FOLDER).is_dir():
            raise FileNotFoundError(f"vla0: {folder} is not a saved vla0 LeRobot policy (no {VLA0_FOLDER}/ folder); "
                                    "convert a vla0 run with `vla0-to-lerobot RUN OUT`")
        if config is None:
            config = PreTrainedConfig.from_pretrained(folder)
        kwargs.pop("dataset_stats", None)  # the saved policy has its own bins
        kwargs.pop("dataset_meta", None)
        policy = cls(config, vla0_folder=str(folder / VLA0_FOLDER))
        policy.to(config.device)
        policy.eval()
        return policy

    # -- training --------------------------------------------------------------------------------
    def get_optim_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """VLA-0's loss: cross-entropy on the action text, with masked action augmentation."""
        frames = self._frames(batch)
        actions = batch["action"].detach().float().cpu().numpy()
        tasks = _tasks(batch, len(actions))
        cfg = self.config
        examples = [self.processor.training_example([cam[i] for cam in frames], tasks[i], actions[i], self.rng,
                                                    cfg.mask_max_frac, cfg.mask_p_none)
                    for i in range(len(actions))]
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in collate(examples, self.processor.pad_id, "right").items()}
        loss = self.model(**inputs).loss
        return loss, {"loss": loss.item()}

    # -- inference -------------------------------------------------------------------------------
    def reset(self) -> None:
        if self._inference is not None:
            self._inference.reset()

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict, **kwargs) -> torch.Tensor:
        chunks = self._policy().predict_action_chunk(self._observation(batch))
        return torch.from_numpy(chunks).to(self._device())

    @torch.no_grad()
    def select_action(self, batch: dict, **kwargs) -> torch.Tensor:
        actions = self._policy().select_action(self._observation(batch))
        return torch.from_numpy(np.asarray(actions, np.float32)).to(self._device())

    def _policy(self) -> InferencePolicy:
        if self._inference is None:  # built on first use: training never needs the decoder
            self._inference = InferencePolicy(self.vlm, self.policy_config, self._device(), processor=self.processor)
        return self._inference

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _frames(self, batch: dict) -> list[np.ndarray]:
        """Per camera the policy reads, (B, H, W, 3) uint8 frames; one error naming what is missing."""
        keys = self.config.camera_keys
        missing = [k for k in keys if k not in batch]
        if missing:
            have = sorted(k for k in batch if k.startswith("observation.image"))
            raise ValueError(f"vla0: this policy reads cameras {keys}; the observation has {have} (map them with "
                             f"--rename_map='{{\"<their key>\": \"{missing[0]}\"}}')")
        return [to_uint8_frames(batch[k]) for k in keys]

    def _observation(self, batch: dict) -> dict:
        frames = self._frames(batch)
        obs = {IMAGE_PREFIX + camera_name(k): f for k, f in zip(self.config.camera_keys, frames)}
        obs["task"] = _tasks(batch, len(frames[0]))
        return obs


def _tasks(batch: dict, n: int) -> list[str]:
    task = batch.get("task")
    if task is None:
        raise ValueError("vla0: the batch has no 'task' (the language instruction VLA-0 is prompted with)")
    tasks = [task] * n if isinstance(task, str) else list(task)
    if len(tasks) != n:
        raise ValueError(f"vla0: {len(tasks)} task strings for a batch of {n}")
    return tasks


def check_fits(saved: PolicyConfig, config: VLA0Config) -> None:
    """A saved policy against the dataset or env it is now used with (action size, cameras)."""
    action = (config.output_features or {}).get("action")
    if action is not None and int(action.shape[0]) != saved.action_dim:
        raise ValueError(f"vla0: this policy was built for {saved.action_dim}-D actions; the dataset/env has "
                         f"{int(action.shape[0])}-D actions")
    names = [camera_name(k) for k in config.camera_keys]
    if names != saved.cameras:
        raise ValueError(f"vla0: this policy reads cameras {saved.cameras}; the LeRobot config lists {names}")

