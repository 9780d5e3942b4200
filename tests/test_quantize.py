"""Quantized inference (bitsandbytes, torchao), QLoRA training, and training the bins format, on
the embedded model."""

import builtins

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from synthetic import write_synthetic_dataset
from vla0.config import PolicyConfig
from vla0.model.quantize import check_quantize, weight_bytes
from vla0.policy.decoder import ActionDecoder
from vla0.policy.policy import VLA0Policy
from vla0.train.trainer import TrainConfig, check_config, train

pytest.importorskip("bitsandbytes")
pytest.importorskip("torchao")


def obs(n=2):
    rng = np.random.default_rng(0)
    return {"observation.images.front": rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
            "observation.images.wrist": rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
            "task": ["open the drawer", "reach"][:n]}


@pytest.mark.parametrize("mode", ["int8", "nf4", "ao-int8", "ao-int8-weight", "ao-int4"])
def test_quantized_policy_decodes_exactly_and_is_smaller(tiny_policy_dir, mode):
    full = VLA0Policy.from_pretrained(tiny_policy_dir)
    q = VLA0Policy.from_pretrained(tiny_policy_dir, quantize=mode)
    layer = q.vlm.model.model.language_model.layers[0].self_attn.q_proj
    assert type(layer).__name__ != "Linear" or type(layer.weight).__name__ != "Parameter"  # quantized
    assert type(q.vlm.model.model.visual.blocks[0].attn.qkv.weight).__name__ == "Parameter"  # vision kept
    assert weight_bytes(q.vlm.model) < weight_bytes(full.vlm.model)
    prompts = q.processor.prompts(obs())
    fast = q.decoder.greedy(prompts)
    assert fast == ActionDecoder(q.vlm.model, q.processor, fast=False).greedy(prompts)  # the fast decoder stays exact
    assert q.predict_action_chunk(obs()).shape == (2, 2, 4) and q.malformed_outputs == 0


def test_quantize_vision_too(tiny_policy_dir):
    q = VLA0Policy.from_pretrained(tiny_policy_dir, quantize="nf4", quantize_vision=True)
    assert type(q.vlm.model.model.visual.blocks[0].attn.qkv).__name__ == "Linear4bit"


def test_bad_quantize_settings_are_named(monkeypatch):
    with pytest.raises(ValueError, match="must be one of"):
        check_quantize("int3")
    with pytest.raises(ValueError, match="ao-int4 runs on cpu, not on 'cuda'"):
        check_quantize("ao-int4", "cuda")
    real = builtins.__import__

    def no_bnb(name, *a, **kw):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(ValueError, match=r"needs the bitsandbytes package .*vla0\[quantize\]"):
        check_quantize("nf4")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic")


def config(model, dataset, out, **kw):
    return TrainConfig(**{**dict(model=str(model), dataset=str(dataset), out=str(out), chunk_size=2, lr=3e-3,
                                 batch_size=6, steps=4, crop_fraction=1.0, ensemble=1, progress=False,
                                 save_every=100), **kw})


def test_qlora_trains_on_nf4_and_its_adapter_loads_on_either_base(tiny_model_dir, dataset, tmp_path):
    with pytest.raises(ValueError, match="give --lora-rank"):
        check_config(config(tiny_model_dir, dataset, tmp_path / "x", quantize="nf4"))
    folder = train(config(tiny_model_dir, dataset, tmp_path / "run", quantize="nf4", lora_rank=4, lr=1e-2))
    assert (folder / "adapter_config.json").exists() and not (folder / "model.safetensors").exists()
    full = VLA0Policy.from_pretrained(folder)  # merged into the unquantized base
    assert type(full.vlm.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    quant = VLA0Policy.from_pretrained(folder, quantize="nf4")  # LoRA kept beside the 4-bit base, as trained
    assert type(quant.vlm.model).__name__ == "PeftModel"
    a, b = full.predict_action_chunk(obs()), quant.predict_action_chunk(obs())
    assert a.shape == b.shape == (2, 2, 4)
    adapter = load_file(folder / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.dtype == torch.float32 for v in lora_b) and max(v.abs().max() for v in lora_b) > 0


def test_bins_format_trains_and_loads_without_a_flag(tiny_model_dir, dataset, tmp_path):
    folder = train(config(tiny_model_dir, dataset, tmp_path / "run", action_format="bins", steps=3))
    cfg = PolicyConfig.load(folder)
    assert (cfg.action_format, cfg.num_bins, cfg.normalization) == ("bins", 256, "quantile")
    policy = VLA0Policy.from_pretrained(folder)
    assert policy.processor.action_format == "bins"
    tokens = policy.decoder.greedy(policy.processor.prompts(obs()))
    assert all(len(t) == 2 * policy.config.action_dim + 1 for t in tokens)
