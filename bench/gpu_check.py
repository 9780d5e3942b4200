"""One-GPU check at Qwen2.5-VL-3B's shape (random weights built from vla0's shape config, no hub):
what training and inference cost on the card a user would reproduce VLA-0 on. Under 10 minutes
on one H100.

Measured, each with the VLA-0 LIBERO setup (two 224x224 cameras tiled, H=8, D=7, B=1000, the
official prompt with vision ids):
  train_lora     LoRA r16 on the language model's attention and MLP, bf16 base, AdamW, batch 8:
                 seconds per optimizer step, peak GPU memory
  train_full     full fine-tuning with bf16 weights and bf16 AdamW state (no fp32 master copy: the
                 official numerics, --model-dtype bf16), batch 8: seconds per step, peak memory
  decode         chunks/s with the fast (exact) greedy decoder and with plain `generate`, batch 1
                 and 16
  flow           chunks/s of the flow head (one prefill + 10 Euler steps of a 4-block expert),
                 batch 1 and 16
Each measurement is guarded: an out-of-memory or other failure is recorded in its entry and
the rest still run. Writes JSON (default bench/results/gpu_check.json).

    python bench/gpu_check.py                              # on a GPU machine
    python bench/gpu_check.py --tiny --out /tmp/gc.json    # the embedded tiny model on the CPU (seconds)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

TASK = "put the bowl on the plate"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclasses.dataclass
class Shape:
    preset: str
    device: str
    image: int  # px per camera
    train_batch: int
    decode_batches: tuple[int, ...]
    steps: int  # timed optimizer steps (after one warm-up)
    repeats: int  # timed chunks per decode measurement (after one warm-up)


GPU = Shape("qwen2.5-vl-3b-shape", "cuda", 224, 8, (1, 16), 3, 3)
TINY = Shape("tiny", "cpu", 56, 2, (1, 2), 1, 1)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_gb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def build_vlm(shape: Shape):
    """Random weights at the preset's shape, built in bf16 directly on the device (a 3B model
    initialised on the CPU first would take minutes)."""
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vla0.model.tiny import model_config
    from vla0.model.tokenizer import build_tokenizer
    from vla0.model.vlm import VLM
    config, spec = model_config(shape.preset)
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    with torch.device(shape.device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    return VLM(model, tokenizer, Qwen2VLImageProcessorPil(**spec["image_processor"]))


def policy_config(shape: Shape):
    from vla0.config import PolicyConfig
    return PolicyConfig(action_dim=7, cameras=["image", "image2"], chunk_size=8, num_bins=1000,
                        image_size=[shape.image, shape.image], vision_id=True, ensemble=1,
                        action_stats={"min": [-1.0] * 7, "max": [1.0] * 7})


def frames(shape: Shape, n: int) -> dict:
    rng = np.random.default_rng(0)
    size = round(shape.image / 0.875)  # the recorded size the 0.875 centre crop brings back to `image`
    return {"observation.images.image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            "observation.images.image2": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            "task": [TASK] * n}


def train(vlm, shape: Shape, lora: bool) -> dict:
    from types import SimpleNamespace

    from vla0.processor import ActionProcessor
    from vla0.prompt import collate
    from vla0.train.model_setup import apply_lora
    model = vlm.model
    if lora:
        cfg = SimpleNamespace(lora_rank=16, lora_alpha=32, lora_scope="language", model=shape.preset,
                              lora_targets=LORA_TARGETS)
        model = apply_lora(model, cfg, None)
    else:
        model.requires_grad_(True)  # every weight trains (LoRA's unload leaves the base frozen)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-6, weight_decay=1e-10)  # state in each parameter's dtype
    processor = ActionProcessor(policy_config(shape), vlm.tokenizer, vlm.image_processor)
    obs = frames(shape, shape.train_batch)
    rng = np.random.default_rng(0)
    examples = [processor.training_example([obs["observation.images.image"][i], obs["observation.images.image2"][i]],
                                           TASK, rng.uniform(-1, 1, (8, 7)), rng) for i in range(shape.train_batch)]
    batch = {k: v.to(shape.device) for k, v in collate(examples, processor.pad_id).items()}
    reset_peak(shape.device)
    times = []
    for _ in range(1 + shape.steps):  # the first is a warm-up
        sync(shape.device)
        t0 = time.perf_counter()
        with torch.autocast(torch.device(shape.device).type, torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(shape.device)
        times.append(time.perf_counter() - t0)
    state_dtypes = sorted({str(s["exp_avg"].dtype) for s in optimizer.state.values() if s})
    out = {"batch": shape.train_batch, "tokens_per_sample": int(batch["input_ids"].shape[1]),
           "trainable_params": sum(p.numel() for p in params), "param_dtypes": sorted({str(p.dtype) for p in params}),
           "adamw_state_dtypes": state_dtypes, "first_step_s": round(times[0], 3),
           "step_s": round(float(np.median(times[1:])), 3),
           "samples_per_s": round(shape.train_batch / float(np.median(times[1:])), 2),
           "loss": loss.item(), "peak_gpu_gb": peak_gb(shape.device)}
    del optimizer
    if lora:
        model.unload()  # the base model back, without adapters, for the next measurement
    return out


def chunks_per_s(policy, shape: Shape, batch: int) -> float:
    obs = frames(shape, batch)
    with torch.inference_mode():
        policy.predict_action_chunk(obs)  # warm-up
        sync(shape.device)
        t0 = time.perf_counter()
        for _ in range(shape.repeats):
            policy.predict_action_chunk(obs)
        sync(shape.device)
    return round(batch * shape.repeats / (time.perf_counter() - t0), 3)


def decode(vlm, shape: Shape) -> dict:
    from vla0.policy.policy import VLA0Policy
    vlm.model.eval()
    out = {}
    for name, fast in (("fast", True), ("generate", False)):
        policy = VLA0Policy(vlm, policy_config(shape), device=shape.device, fast_decode=fast)
        for b in shape.decode_batches:
            reset_peak(shape.device)
            out[f"{name}_batch{b}_chunks_per_s"] = chunks_per_s(policy, shape, b)
            out[f"{name}_batch{b}_peak_gpu_gb"] = peak_gb(shape.device)
    return out


def flow(vlm, shape: Shape) -> dict:
    from vla0.policy.flow_head import FlowExpert, expert_config_for
    from vla0.policy.policy import VLA0Policy
    expert_cfg = expert_config_for(vlm.model.config, depth=4)
    config = dataclasses.replace(policy_config(shape), head="flow", flow_expert=dataclasses.asdict(expert_cfg))
    torch.manual_seed(0)
    expert = FlowExpert(expert_cfg, 7, 8).to(shape.device).eval()
    generator = torch.Generator(shape.device).manual_seed(0)
    policy = VLA0Policy(vlm, config, device=shape.device, expert=expert, generator=generator)
    out = {"expert_params": sum(p.numel() for p in expert.parameters()), "euler_steps": expert_cfg.num_steps}
    for b in shape.decode_batches:
        out[f"batch{b}_chunks_per_s"] = chunks_per_s(policy, shape, b)
    return out


def guarded(name: str, fn, *args) -> dict:
    t0 = time.perf_counter()
    try:
        result = fn(*args)
    except Exception as e:  # an OOM or a failure at this size is a result too; the rest still run
        result = {"error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-3000:]}
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(name, json.dumps(result), flush=True)
    return result


def run(shape: Shape) -> dict:
    t0 = time.perf_counter()
    if shape.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny on a CPU")
    results = {"shape": dataclasses.asdict(shape), "torch": torch.__version__,
               "device": torch.cuda.get_device_name(0) if shape.device.startswith("cuda") else platform.processor()
               or platform.machine()}
    vlm = build_vlm(shape)
    results["build_s"] = round(time.perf_counter() - t0, 1)
    results["params"] = sum(p.numel() for p in vlm.model.parameters())
    results["train_lora"] = guarded("train_lora", train, vlm, shape, True)
    results["decode"] = guarded("decode", decode, vlm, shape)
    results["flow"] = guarded("flow", flow, vlm, shape)
    results["train_full"] = guarded("train_full", train, vlm, shape, False)  # last: it changes the weights
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the embedded tiny model on the CPU (checks the script)")
    ap.add_argument("--out", default=None, help="JSON to write (default bench/results/gpu_check[_tiny].json)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    results = run(TINY if args.tiny else GPU)
    results["command"] = "python bench/gpu_check.py" + (" --tiny" if args.tiny else "")
    out = Path(args.out or ROOT / "bench/results" / ("gpu_check_tiny.json" if args.tiny else "gpu_check.json"))
    from vla0.io import write_json_atomic
    write_json_atomic(results, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
