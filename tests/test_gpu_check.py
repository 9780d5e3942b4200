"""bench/gpu_check.py's --tiny mode: the GPU check's every measurement runs (embedded tiny model,
CPU), so the script is ready for a GPU machine."""

import importlib.util
import sys
from pathlib import Path

import torch


def test_gpu_check_tiny_runs_every_measurement():
    path = Path(__file__).parents[1] / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check  # its dataclass looks its module up while being defined
    spec.loader.exec_module(gpu_check)
    shape = gpu_check.TINY
    results = gpu_check.run(shape)
    for name in ("train_lora", "decode", "flow", "train_full"):
        assert "error" not in results[name], results[name].get("traceback")
    full = results["train_full"]
    assert full["param_dtypes"] == full["adamw_state_dtypes"] == [str(torch.bfloat16)]  # no fp32 master copy
    assert full["trainable_params"] == results["params"]
    assert results["train_lora"]["trainable_params"] < results["params"] / 4  # adapters only
    for b in shape.decode_batches:
        assert results["decode"][f"fast_batch{b}_chunks_per_s"] > 0 and results["flow"][f"batch{b}_chunks_per_s"] > 0
