"""Capability check at the full model shape on this CPU: Qwen2.5-VL-3B's dimensions, random weights.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 python bench/full_size.py     # ~9 GB, minutes of both cores

Three steps, each in a fresh process so that each peak resident memory is its own:
  init     `vla0 init-model qwen2.5-vl-3b-shape` (built in bf16, saved: 7.5 GB on disk)
  train    load_vlm in bf16, LoRA r16 on the language model's attention and MLP projections,
           activation checkpointing, one AdamW step at batch 1 (two 224x224 cameras tiled, the
           VLA-0 prompt, an H=8 D=7 B=1000 action text), after one warm-up step
  decode   one greedy chunk (H=8, D=7, B=1000) with the fast decoder (no previous chunk: prompt
           lookup drafts), counting the model's forward passes
These are capability checks (the code path runs at this size and fits in memory), not speed
claims: the weights are random and 2 CPU cores are not what this model runs on.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def setup(model: Path):
    import numpy as np

    from vla0.config import PolicyConfig
    from vla0.model.vlm import load_vlm
    from vla0.processor import ActionProcessor
    import torch
    t0 = time.perf_counter()
    vlm = load_vlm(model, dtype=torch.bfloat16)
    load_s = time.perf_counter() - t0
    config = PolicyConfig(action_dim=7, cameras=["agentview", "wrist"], chunk_size=8, num_bins=1000,
                          image_size=[224, 224], action_stats={"min": [-1.0] * 7, "max": [1.0] * 7})
    processor = ActionProcessor(config, vlm.tokenizer, vlm.image_processor)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(2)]
    return vlm, config, processor, frames, load_s


def train_step(model: Path) -> dict:
    from types import SimpleNamespace

    import numpy as np
    import torch

    from vla0.prompt import collate
    from vla0.train.model_setup import apply_lora, enable_checkpointing
    vlm, config, processor, frames, load_s = setup(model)
    lora = SimpleNamespace(lora_rank=16, lora_alpha=32, lora_scope="language", model=str(model),
                           lora_targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    net = apply_lora(vlm.model, lora, None)
    enable_checkpointing(net)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-6)
    example = processor.training_example(frames, "put the bowl on the plate", np.zeros((8, 7)),
                                         np.random.default_rng(0))
    batch = collate([example], processor.pad_id)
    times = []
    for _ in range(2):  # the first is a warm-up
        t0 = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16):
            loss = net(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return {"load_s": load_s, "tokens": int(batch["input_ids"].shape[1]), "trainable_params": sum(p.numel() for p in params),
            "first_step_s": times[0], "step_s": times[1], "loss": float(loss), "peak_rss_gb": peak_gb()}


def decode_chunk(model: Path) -> dict:
    import torch

    from vla0.policy.policy import VLA0Policy
    vlm, config, processor, frames, load_s = setup(model)
    policy = VLA0Policy(vlm, config, processor=processor)
    passes = []
    vlm.model.model.language_model.layers[0].register_forward_pre_hook(lambda *a: passes.append(1))
    obs = {"observation.images.agentview": frames[0][None], "observation.images.wrist": frames[1][None],
           "task": ["put the bowl on the plate"]}
    t0 = time.perf_counter()
    with torch.inference_mode():
        chunk = policy.predict_action_chunk(obs)
    return {"load_s": load_s, "chunk_s": time.perf_counter() - t0, "forward_passes": len(passes),
            "chunk_shape": list(chunk.shape), "peak_rss_gb": peak_gb()}


def run(step: str, model: Path) -> dict:
    """One step in a fresh process; its JSON result on the last line of stdout."""
    out = subprocess.run([sys.executable, __file__, "--step", step, str(model)], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if out.returncode:
        raise RuntimeError(f"{step} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--step":
        step, model = sys.argv[2], Path(sys.argv[3])
        if step == "init":
            from vla0.model.tiny import init_model
            t0 = time.perf_counter()
            init_model("qwen2.5-vl-3b-shape", model)
            print(json.dumps({"init_s": time.perf_counter() - t0, "peak_rss_gb": peak_gb()}))
        else:
            print(json.dumps((train_step if step == "train" else decode_chunk)(model)))
        return
    from vla0.io import write_json_atomic
    work = Path(os.environ.get("VLA0_BENCH_WORK", "/tmp/vla0-bench-3b"))
    model = work / "qwen2.5-vl-3b-shape"
    results = {"machine": f"{os.cpu_count()} CPU cores, no GPU, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"}
    if not (model / "config.json").exists():
        results["init"] = run("init", model)
        print("init", results["init"], flush=True)
    for step in ("train", "decode"):
        results[step] = run(step, model)
        print(step, results[step], flush=True)
    write_json_atomic(results, ROOT / "bench/results/full_size.json")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
