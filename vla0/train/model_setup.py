"""The model side of a training run at any size: weight dtype, attention kernel, LoRA on the
language model only, activation checkpointing, the optimiser (AdamW, or bitsandbytes' 8-bit
AdamW) and experiment trackers. Each choice checked before anything is loaded.

Memory at the Qwen2.5-VL-3B shape (3.75 B parameters, 0.67 B of them the vision tower):
  weights bf16 7.5 GB (fp32 15 GB); LoRA r16 on the language model's attention and MLP: 30 M
  trainable parameters, kept fp32 by peft, AdamW state 0.24 GB; full fine-tuning with fp32
  weights, gradients and AdamW state: 60 GB before activations (8-bit AdamW: 37.5 GB).
So a 24 GB card takes LoRA on bf16 weights with activation checkpointing; a 48-80 GB card full
fine-tuning (80 GB: fp32 AdamW; 48 GB: 8-bit AdamW and checkpointing). Computed from the
parameter counts, not measured on a GPU here.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import torch

LORA_SCOPES = ("language", "all")
ATTENTION = ("sdpa", "eager", "flash_attention_2")
OPTIMIZERS = ("adamw", "adamw8bit")
TRACKERS = ("auto", "none", "tensorboard", "wandb")
DTYPES = ("auto", "fp32", "bf16")
_NEEDS = {"flash_attention_2": "flash_attn", "adamw8bit": "bitsandbytes", "tensorboard": "tensorboard",
          "wandb": "wandb"}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_model_options(cfg) -> None:
    """Options that need a package: fail now, naming it, rather than after loading a model."""
    for option, value in (("--attn-implementation", cfg.attn_implementation), ("--optimizer", cfg.optimizer),
                          ("--log-with", cfg.log_with)):
        package = _NEEDS.get(value)
        if package and not installed(package):
            raise ValueError(f"{option} {value} needs the {package} package, which is not installed "
                             f"(pip install {package.replace('_', '-')})")


def weights_dtype(choice: str, lora: bool, model: str) -> torch.dtype:
    """auto: full fine-tuning keeps fp32 weights (AdamW updates need them); bf16: bf16 weights and,
    under full fine-tuning, bf16 AdamW state with no fp32 master copy (VLA-0's released numerics,
    bench/numerics.py measures what that does to small updates); LoRA loads the frozen
    base in the dtype its checkpoint was saved in (bf16 for Qwen's and for init-model's 3B shape,
    7.5 GB instead of 15)."""
    if choice == "fp32" or (choice == "auto" and not lora):
        return torch.float32
    if choice == "bf16":
        return torch.bfloat16
    config = Path(model) / "config.json"
    saved = "bfloat16"  # a hub id: Qwen2.5-VL checkpoints are bf16
    if config.is_file():
        raw = json.loads(config.read_text())
        saved = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    return torch.bfloat16 if saved == "bfloat16" else torch.float32


def lora_target(targets: list[str], scope: str) -> str | list[str]:
    """peft target_modules. Names such as gate_proj/up_proj/down_proj also match the vision tower's
    MLPs; scope "language" restricts LoRA to the language model's decoder layers (a regex peft
    matches against full module names)."""
    if scope == "all":
        return list(targets)
    names = "|".join(re.escape(t) for t in targets)
    return rf"(.*\.)?language_model\.layers\.\d+\..*\b({names})"


def apply_lora(model, cfg, resume_from: Path | None):
    from peft import LoraConfig, PeftModel, get_peft_model
    if resume_from:
        return PeftModel.from_pretrained(model, resume_from, is_trainable=True)
    target = lora_target(cfg.lora_targets, cfg.lora_scope)
    model = get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=target,
                                             lora_dropout=0.0))
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"LoRA targets {cfg.lora_targets} (scope {cfg.lora_scope}) match no module of {cfg.model}")
    return model


def enable_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of storing them
    (transformers 5's name; gradient_checkpointing_enable is deprecated)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.activation_checkpointing_enable({"use_reentrant": False})
    base.config.use_cache = False


def make_optimizer(params, cfg, lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW (or 8-bit AdamW) at lr (default cfg.lr). torch's AdamW keeps its state in each
    parameter's dtype: bf16 weights (--model-dtype bf16) get bf16 moments and no fp32 master copy,
    as VLA-0's released training."""
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "adamw8bit":  # bitsandbytes: optimiser state in 8 bits (a quarter of fp32's)
        import bitsandbytes as bnb
        return bnb.optim.AdamW8bit(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def trackers(choice: str) -> list[str]:
    """accelerate tracker names: auto = TensorBoard when it is installed (the JSONL log is always written)."""
    if choice == "auto":
        return ["tensorboard"] if installed("tensorboard") else []
    return [] if choice == "none" else [choice]


def flat_config(cfg) -> dict:
    """A run's config as trackers accept it (scalars and strings only)."""
    from dataclasses import asdict
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in asdict(cfg).items()}
