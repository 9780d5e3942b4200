"""Quantized weights for inference (and QLoRA's frozen base): `--quantize MODE`.

    int8            bitsandbytes LLM.int8 (OpenVLA's 8-bit)           applied while loading
    nf4             bitsandbytes 4-bit NormalFloat (OpenVLA's 4-bit)  applied while loading
    ao-int8         torchao int8 dynamic activations x int8 weights   applied after loading
    ao-int8-weight  torchao int8 weight-only                          applied after loading
    ao-int4         torchao int4 weight-only (its prototype CPU kernel; CPU only)

Never quantized: `lm_head`, whose rows for the grammar's tokens the decoders read directly (in the
embedded model it is the embedding table), and, unless `quantize_vision`, the vision tower.

bitsandbytes runs on CUDA and (0.50, checked here) on CPU; torchao's int8 kernels run on CPU and CUDA. On
this project's CPUs quantization saves memory, not time (bench/quantization.py measures both):
the fast int8 matmul needs AVX-512, and bitsandbytes' fast 4-bit CPU kernel is fetched from the
hub at run time, so offline it dequantises before each matmul. Both packages are optional
(`pip install 'vla0[quantize]'`); a missing one is named in the error.
"""

from __future__ import annotations

import logging

BNB_MODES = ("int8", "nf4")
AO_MODES = ("ao-int8", "ao-int8-weight", "ao-int4")
QUANTIZE_MODES = ("none", *BNB_MODES, *AO_MODES)
SKIP = ("lm_head",)
VISION = "model.visual"


def check_quantize(mode: str | None, device="cpu") -> str:
    """The mode, checked against what is installed and the device, before any weights load."""
    mode = mode or "none"
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"--quantize must be one of {list(QUANTIZE_MODES)}, got {mode!r}")
    if mode == "none":
        return mode
    package = "bitsandbytes" if mode in BNB_MODES else "torchao"
    try:
        __import__(package)
    except ImportError as e:
        raise ValueError(f"--quantize {mode} needs the {package} package ({e}); install it with "
                         "pip install 'vla0[quantize]'") from None
    import torch

    kind = torch.device(device).type
    supported = ("cpu",) if mode == "ao-int4" else ("cpu", "cuda")
    if kind not in supported:
        raise ValueError(f"--quantize {mode} runs on {' or '.join(supported)}, not on {device!r}")
    return mode


def bnb_config(mode: str, dtype=None, quantize_vision: bool = False):
    """transformers' BitsAndBytesConfig for a bitsandbytes mode (dtype: nf4's compute dtype)."""
    import torch
    from transformers import BitsAndBytesConfig

    skip = list(SKIP) + ([] if quantize_vision else [VISION])
    if mode == "int8":
        # LLM.int8 casts float32 inputs to float16 and logs a warning saying so on every call
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=dtype or torch.float32, llm_int8_skip_modules=skip)


def apply_torchao(model, mode: str, quantize_vision: bool = False):
    """Quantize the model's linear layers in place with torchao."""
    import torch
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    if mode == "ao-int4":
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
        config = PrototypeInt4WeightOnlyConfig()
    else:
        config = Int8DynamicActivationInt8WeightConfig() if mode == "ao-int8" else Int8WeightOnlyConfig()

    def wanted(module, name: str) -> bool:
        return (isinstance(module, torch.nn.Linear) and not name.endswith(SKIP)
                and (quantize_vision or not name.startswith(VISION)))

    quantize_(model, config, filter_fn=wanted)
    return model


def tensor_bytes(t) -> int:
    """Bytes a (possibly torchao tensor-subclass) weight holds: its inner tensors, not its shape."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def weight_bytes(model) -> int:
    """Parameters and buffers, tied weights counted once (bitsandbytes' 4-bit scales excluded: a
    few per cent)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = id(t)
        if key not in seen:
            seen.add(key)
            total += tensor_bytes(t)
    return total
