"""Load an unmodified Qwen2.5-VL-style VLM: the embedded tiny folder, a local checkpoint or a hub id.

No processor class from transformers: Qwen2_5_VLProcessor insists on a video processor,
which needs torchvision. vla0 only needs a tokenizer and the PIL image processor, and
builds the multimodal token layout itself (prompt.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

REQUIRED_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json")


@dataclass
class VLM:
    model: Qwen2_5_VLForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    image_processor: Qwen2VLImageProcessorPil

    def save_pretrained(self, out: Path) -> None:
        self.model.save_pretrained(out)
        self.save_processor(out)

    def save_processor(self, out: Path) -> None:
        self.tokenizer.save_pretrained(out)
        self.image_processor.save_pretrained(out)


def check_model_folder(path: str | os.PathLike) -> None:
    """Fail early, naming the missing file, instead of deep inside transformers."""
    p = Path(path)
    if not p.is_dir():
        if str(path).count("/") == 1 and not str(path).startswith((".", "/")):
            return  # a hub id such as Qwen/Qwen2.5-VL-3B-Instruct: transformers resolves it
        raise FileNotFoundError(f"model folder not found: {p}")
    adapter = (p / "adapter_config.json").exists()  # a LoRA adapter takes config and weights from its base
    missing = [f for f in REQUIRED_FILES if not (p / f).exists() and not (adapter and f == "config.json")]
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        missing.append("model.safetensors (or sharded *.safetensors)")
    if missing:
        raise FileNotFoundError(f"model folder {p} is missing: {', '.join(missing)}")


def load_processor(path: str | os.PathLike) -> tuple[PreTrainedTokenizerBase, Qwen2VLImageProcessorPil]:
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    return tokenizer, image_processor


def load_vlm(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
             quantize: str | None = None, quantize_vision: bool = False,
             attn_implementation: str | None = None) -> VLM:
    """dtype: float32 by default (exact on CPU); load large models in bfloat16 (the 3B shape is 15 GB
    of weights in float32). quantize: a vla0.model.quantize mode (None/"none": full weights); the
    vision tower stays unquantized unless quantize_vision. attn_implementation: transformers'
    (sdpa, eager, flash_attention_2)."""
    from vla0.model.quantize import AO_MODES, BNB_MODES, apply_torchao, bnb_config, check_quantize

    check_model_folder(path)
    quantize = check_quantize(quantize, device)
    tokenizer, image_processor = load_processor(path)
    options = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if quantize in BNB_MODES:  # bitsandbytes quantizes while loading, onto the device
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, dtype=dtype, quantization_config=bnb_config(quantize, dtype, quantize_vision),
            device_map={"": torch.device(device)}, **options)
    else:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype, **options).to(device)
        if quantize in AO_MODES:
            apply_torchao(model, quantize, quantize_vision)
    return VLM(model, tokenizer, image_processor)
