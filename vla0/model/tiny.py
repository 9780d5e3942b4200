"""`vla0 init-model PRESET OUT`: a randomly initialised Qwen2.5-VL with a generated tokenizer.

Presets: `tiny` (0.6 M parameters, the quickstart's) and `qwen2.5-vl-3b-shape` (Qwen2.5-VL-3B's
published dimensions, 3.75 B parameters, built directly in bf16: no float32 copy is ever made,
about 8 GB peak), which exercises the real shape with no hub access. Everything comes from files
the package ships (*.json here) or generates (tokenizer.py), and the result is a standard Hugging
Face folder that load_vlm() reads exactly like Qwen/Qwen2.5-VL-3B-Instruct.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vla0.io import save_folder_atomic
from vla0.model.tokenizer import build_tokenizer
from vla0.model.vlm import VLM

PRESETS = {"tiny": Path(__file__).with_name("tiny.json"),
           "qwen2.5-vl-3b-shape": Path(__file__).with_name("qwen2.5-vl-3b-shape.json")}


def model_config(preset: str, overrides: dict | None = None) -> tuple[Qwen2_5_VLConfig, dict]:
    """The preset's transformers config (with the generated tokenizer's special-token ids) and its spec."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; available: {', '.join(PRESETS)}")
    spec = json.loads(PRESETS[preset].read_text())
    for section, values in (overrides or {}).items():
        spec[section].update(values)
    tokenizer = build_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    text = dict(spec["text_config"], bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    text.setdefault("vocab_size", len(tokenizer))
    config = Qwen2_5_VLConfig(text_config=text, vision_config=spec["vision_config"],
                              tie_word_embeddings=spec["tie_word_embeddings"], bos_token_id=None, **ids)
    return config, spec


def build_model(preset: str = "tiny", seed: int = 0, overrides: dict | None = None) -> VLM:
    config, spec = model_config(preset, overrides)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    # _from_config builds in the target dtype directly: constructing in float32 and casting would
    # hold both copies (22 GB at the 3B shape instead of 7.5).
    dtype = getattr(torch, spec.get("dtype", "float32"))
    model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False)
    image_processor = Qwen2VLImageProcessorPil(**spec["image_processor"])
    return VLM(model, tokenizer, image_processor)


def init_model(preset: str, out: Path, seed: int = 0) -> Path:
    return save_folder_atomic(out, build_model(preset, seed).save_pretrained)
