"""torch.compile for inference (`--compile MODE` on eval and serve).

Only the position-wise parts are compiled: the MLP of every text layer and vision block (most of
the FLOPs), and a flow head's expert blocks. The attention and its KV cache stay eager on purpose:
the fast decoder feeds a different number of tokens and cache columns on almost every pass, and a
compiled attention would recompile for each (and for each layer index), while an MLP sees only
(rows, width), which one dynamic graph covers. Light to import: torch loads only when compiling.
"""

from __future__ import annotations

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


def check_compile_mode(mode: str | None) -> str:
    """The mode, "none" for None; an unknown one is an error before any model loads."""
    mode = mode or "none"
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    return mode


def compile_for_inference(modules, mode: str | None = "default") -> int:
    """torch.compile each module in place (dynamic shapes); returns how many were compiled.
    Compilation happens on the first call of each shape family (seconds on the tiny model, minutes
    at full size), so warm a served policy up before its first real request."""
    if check_compile_mode(mode) == "none":
        return 0
    modules = list(modules)
    for module in modules:
        module.compile(dynamic=True, mode=None if mode == "default" else mode)
    return len(modules)


def position_wise_modules(model) -> list:
    """The MLP of every text decoder layer and every vision block of a Qwen2.5-VL (also inside a
    PEFT wrapper): most of the model's FLOPs, and shape-stable within a call."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = getattr(inner.model.language_model, "layers", [])
    vision = getattr(inner.model.visual, "blocks", [])
    return [layer.mlp for layer in list(text) + list(vision) if hasattr(layer, "mlp")]
