"""Stage 2 of the two-stage policy: `vla0 train --head flow --from RUN_DIR`.

Stage 1 fine-tuned the VLM to write actions as text (VLA-0). Stage 2 loads that policy (a LoRA
adapter merged into its base), freezes every VLM weight and trains only a flow-matching action
expert (vla0.policy.flow_head) that reads the VLM's hidden states of the prompt. The VLM is
untouched, so the stage-2 folder still holds the stage-1 text policy bit for bit; its
vla0_policy.json says head = "flow" and flow_expert.safetensors holds the expert.

The trainer (vla0.train.trainer) stays the one loop, data order, checkpointing and accelerate
setup for both heads: this module gives it the stage-2 policy config, the trainable module (whose
forward returns the loss, as a transformers model's does) and the per-sample batch pieces.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from vla0.config import PolicyConfig
from vla0.data.lerobot_dataset import LeRobotData, camera_name, load_lerobot, vector_features
from vla0.data.stats import vector_stats
from vla0.model.vlm import check_model_folder
from vla0.policy.flow_head import (ActionNormalizer, Conditioning, FlowExpert, FlowExpertConfig, expert_config_for, flow_loss,
                                   load_expert, sample_time, save_expert, vlm_states)
from vla0.policy.policy import load_policy_vlm, resolve_policy_dir
from vla0.processor import ActionProcessor
from vla0.prompt import Encoded, collate


INPUT_PREFIX = "expert_input:"  # batch keys of the expert's extra inputs


def parse_layers(text: str) -> list[int]:
    try:
        layers = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--expert-layers must be comma-separated integers such as -1 or 4,8,-1, got {text!r}") from None
    if not layers:
        raise ValueError("--expert-layers: give at least one VLM layer")
    return layers


def check_stage2(cfg, info: dict) -> tuple[Path, PolicyConfig, FlowExpertConfig]:
    """Every stage-2 mistake we can see before loading weights: the stage-1 folder, the dataset's
    match with it, the expert's shape. Returns (stage-1 folder, its config, the expert's config)."""
    if not cfg.from_policy:
        raise ValueError("--head flow trains an action expert on a stage-1 policy: give --from RUN_DIR "
                         "(a text-action policy or run folder)")
    if cfg.model:
        raise ValueError("--head flow reads the VLM of the --from policy; drop --model")
    if cfg.lora_rank:
        raise ValueError("--head flow freezes the VLM and trains only the expert; drop --lora-rank")
    folder = resolve_policy_dir(cfg.from_policy)
    source = PolicyConfig.load(folder)
    if source.head != "text":
        raise ValueError(f"--from {cfg.from_policy} is a {source.head}-head policy; stage 2 starts from a "
                         "text-action (stage 1) policy")
    check_model_folder(folder)
    features = info["features"]
    names = {camera_name(k) for k in features}  # cameras as the dataset spells them, with or without the prefix
    missing = [c for c in source.cameras if c not in names]
    if missing:
        raise ValueError(f"dataset {cfg.dataset} lacks the stage-1 policy's camera(s) {missing}")
    vectors = [k for k in vector_features(info) if k != cfg.action_key]
    unknown = [k for k in cfg.expert_inputs if k not in vectors]
    if unknown:
        raise ValueError(f"--expert-inputs: dataset {cfg.dataset} has no vector feature {unknown}; its vector "
                         f"features are {vectors or 'none (besides action)'}")
    if cfg.expert_inputs and len(set(cfg.expert_inputs)) != len(cfg.expert_inputs):
        raise ValueError(f"--expert-inputs names a feature twice: {cfg.expert_inputs}")
    action_dim = int(features[cfg.action_key]["shape"][0])
    if action_dim != source.action_dim:
        raise ValueError(f"dataset {cfg.dataset} has {action_dim}-dim actions, the stage-1 policy {source.action_dim}")
    from transformers import AutoConfig  # the VLM's shape without its weights
    shape_from = source.base_model if (folder / "adapter_config.json").exists() else folder
    expert = expert_config_for(AutoConfig.from_pretrained(shape_from), cfg.expert_width, cfg.expert_depth,
                               cfg.expert_heads, parse_layers(cfg.expert_layers), cfg.flow_steps)
    return folder, source, expert


def input_specs(data: LeRobotData, keys: list[str]) -> dict[str, dict]:
    """{key: {dim, mean, std}} for the expert's extra inputs, from the dataset's statistics (or
    computed from its frames when stats.json lacks the feature)."""
    specs = {}
    for k in keys:
        values = data.state if k == "observation.state" else data.extra[k]
        stats = data.stats.get(k) or vector_stats(values)
        specs[k] = {"dim": int(values.shape[1]), "mean": np.asarray(stats["mean"], np.float64).reshape(-1).tolist(),
                    "std": np.asarray(stats["std"], np.float64).reshape(-1).tolist()}
    return specs


def stage1_files(folder: Path) -> dict[str, list[int]]:
    """Size and modification time of the stage-1 policy's files: cheap, and any rewrite shows."""
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(folder.iterdir()) if f.is_file()}


class FlowTraining(nn.Module):
    """The frozen VLM and the expert; forward(**batch) returns an object with .loss."""

    def __init__(self, vlm_model: nn.Module, expert: FlowExpert):
        super().__init__()
        self.vlm = vlm_model.requires_grad_(False).eval()
        self.expert = expert

    def train(self, mode: bool = True):
        super().train(mode)
        self.vlm.eval()  # frozen: no dropout, whatever the loop asks
        return self

    def forward(self, actions, noise, time, **prompt) -> SimpleNamespace:
        states, pad = vlm_states(self.vlm, prompt, self.expert.cfg.vlm_layers)  # once per observation, no grad
        cond = Conditioning([s.float() for s in states], pad, self.expert.input_tokens(
            {k[len(INPUT_PREFIX):]: v for k, v in prompt.items() if k.startswith(INPUT_PREFIX)}))
        return SimpleNamespace(loss=flow_loss(cond.velocity(self.expert), actions, noise, time))

    def save_pretrained(self, folder: Path, with_vlm: bool = True) -> None:
        """The whole (merged, LoRA-free) VLM and the expert: a folder that loads on its own. A
        checkpoint (with_vlm False) holds the expert only: the VLM is frozen, and its config names
        the stage-1 policy it comes from (7.5 GB of weights not written again at the 3B shape)."""
        if with_vlm:
            self.vlm.save_pretrained(folder)
        save_expert(self.expert, folder)


class Stage2:
    """What the trainer needs for a flow head: policy config, model, and batches."""

    def __init__(self, cfg, info: dict, resume_from: Path | None, root: Path):
        folder, source, expert_cfg = check_stage2(cfg, info)
        self.data = load_lerobot(root, cameras=source.cameras, decode=False, action_key=cfg.action_key,
                                 state_key=cfg.state_key)
        expert_cfg = dataclasses.replace(expert_cfg, inputs=input_specs(self.data, list(cfg.expert_inputs)))
        files = stage1_files(folder)
        if resume_from:  # checkpoints hold the expert only: the VLM must still be the one they trained on
            before = PolicyConfig.load(resume_from).training.get("stage1_files")
            if before is not None and before != files:
                changed = sorted(k for k in set(before) | set(files) if before.get(k) != files.get(k))
                raise ValueError(f"--resume: the stage-1 policy {folder} changed since this run's checkpoints were "
                                 f"written ({', '.join(changed)}); stage 2 resumes only on the same frozen VLM")
        self.policy_config = dataclasses.replace(
            source, head="flow", flow_expert=asdict(expert_cfg), base_model=str(folder.resolve()),
            dataset=str(cfg.dataset), training={**source.training, "stage2": asdict(cfg), "stage1_files": files})
        self.vlm = load_policy_vlm(folder)  # frozen, so always stage 1's; a LoRA adapter comes back merged
        if resume_from:
            expert = load_expert(self.policy_config, resume_from).train()
        else:
            torch.manual_seed(cfg.seed)
            expert = FlowExpert(expert_cfg, source.action_dim, source.chunk_size)
        self.model = FlowTraining(self.vlm.model, expert)
        self.processor = ActionProcessor(self.policy_config, self.vlm.tokenizer, self.vlm.image_processor)
        self.normalizer = ActionNormalizer(self.policy_config)

    def example(self, sample, rng: np.random.Generator) -> tuple[Encoded, np.ndarray, np.ndarray, np.float32, dict]:
        """The prompt (with stage 1's image augmentation), normalised actions, noise and flow time,
        and the expert's extra inputs (raw: the expert normalises them): all drawn from rng, so the
        batch is a pure function of (seed, step) like text training's."""
        prompt = self.processor.encoder.prompt(sample.frames, sample.task, rng)
        actions = self.normalizer.normalize(sample.actions)
        return (prompt, actions, rng.standard_normal(actions.shape).astype(np.float32), sample_time(rng, 1)[0],
                sample.vectors)

    def collate(self, examples: list) -> dict[str, torch.Tensor]:
        batch = collate([e[0] for e in examples], self.processor.pad_id, padding_side="right")
        batch["actions"] = torch.from_numpy(np.stack([e[1] for e in examples]))
        batch["noise"] = torch.from_numpy(np.stack([e[2] for e in examples]))
        batch["time"] = torch.tensor([e[3] for e in examples])
        for k in examples[0][4]:
            batch[INPUT_PREFIX + k] = torch.from_numpy(np.stack([e[4][k] for e in examples]).astype(np.float32))
        return batch
