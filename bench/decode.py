"""Decoding benchmark: HF `generate` + grammar (the baseline) vs vla0.policy.fast_decode.FastDecoder.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/decode.py            # trains once, then benchmarks
    python bench/decode.py --policy RUN_DIR --episodes-from DATASET     # also a real policy + dataset

Setup. The paper's chunk shape (H=8, D=7, B=1000) needs a model trained for it, with real signal in
every dimension, so the script first trains the embedded tiny Qwen2.5-VL (2 layers, hidden 128; plain
AdamW on vla0's ActionProcessor training examples, ~10-25 minutes on 2 CPU cores) on a synthetic
world: a disk moves around a circle with phase theta and the background colour encodes (cos, sin) theta;
action dim j at step k is 0.5 + 0.45 sin(theta + k w + 2 pi j / D). Consecutive frames of an episode
advance theta by w, so consecutive chunks overlap as in closed loop. The model is cached under --work
(--retrain, --train-more SECONDS to continue training it).

Replay: episodes of consecutive frames, replanning at every step; each method drafts from the chunk
it predicted at the previous step (draft_candidates: shifted by 1, 0 and 2 steps). Every method
decodes every observation in turn, so changes in machine load hit all alike. Per chunk: decode wall
time (prompts encoded beforehand; the vision tower is included), model forward passes (a hook on the
first decoder layer, counting generate's passes and ours alike), tokens per pass, and whether the
bins equal the baseline's. Throughput: B episodes decoded together at batch size B.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vla0.config import PolicyConfig  # noqa: E402
from vla0.grammar import GrammarLogitsProcessor  # noqa: E402
from vla0.io import save_folder_atomic, write_json_atomic  # noqa: E402
from vla0.model.tiny import build_model  # noqa: E402
from vla0.model.vlm import load_vlm  # noqa: E402
from vla0.policy.drafts import draft_candidates  # noqa: E402
from vla0.policy.fast_decode import FastDecoder  # noqa: E402
from vla0.policy.policy import VLA0Policy  # noqa: E402
from vla0.processor import ActionProcessor  # noqa: E402
from vla0.prompt import collate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASK = "follow the circle"
OMEGA = 0.12  # phase advance per control step
IMAGE = 84


# -- synthetic world ---------------------------------------------------------------------------
def world_frame(theta: float, size: int = IMAGE) -> np.ndarray:
    """The scene at phase theta: the background colour encodes (cos, sin) of the phase and a
    disk moves around a circle with it."""
    yy, xx = np.mgrid[0:size, 0:size]
    c, r = size / 2, size * 0.33
    cx, cy = c + r * math.cos(theta), c + r * math.sin(theta)
    img = np.empty((size, size, 3), np.uint8)
    img[...] = (int(128 + 110 * math.cos(theta)), int(128 + 110 * math.sin(theta)), 60)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= (size * 0.1) ** 2] = (250, 250, 250)
    return img


def world_chunk(theta: float, H: int, D: int) -> np.ndarray:
    """Ground-truth chunk at phase theta: dim j at step k is 0.5 + 0.45 sin(theta + k w + 2 pi j / D)."""
    k = np.arange(H)[:, None]
    j = np.arange(D)[None, :]
    return 0.5 + 0.45 * np.sin(theta + OMEGA * k + 2 * np.pi * j / D)


def make_config(H: int, D: int, B: int) -> PolicyConfig:
    return PolicyConfig(action_dim=D, cameras=["front"], chunk_size=H, num_bins=B,
                        action_stats={"min": [0.0] * D, "max": [1.0] * D}, image_size=[IMAGE, IMAGE],
                        crop_fraction=1.0, ensemble=1)


def train_policy(folder: Path, H: int, D: int, B: int, seconds: float, seed: int = 0,
                 batch_size: int = 16, lr: float = 3e-3, resume: bool = False) -> Path:
    """Train the tiny model on the synthetic world for `seconds` (from scratch, or on from the
    model already in `folder`); save a policy folder."""
    torch.manual_seed(seed)
    previous = json.loads((folder / "train_log.json").read_text()) if resume else None
    vlm = load_vlm(folder) if resume else build_model("tiny", seed)
    if resume:
        seed += previous["steps"]
    cfg = make_config(H, D, B)
    processor = ActionProcessor(cfg, vlm.tokenizer, vlm.image_processor)  # prompt encoder and action codec
    model = vlm.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    start, step, log = time.time(), 0, []
    while (elapsed := time.time() - start) < seconds:
        frac = elapsed / seconds
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 30) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        examples = []
        for _ in range(batch_size):
            theta = rng.uniform(0, 2 * np.pi)
            examples.append(processor.training_example([world_frame(theta)], TASK, world_chunk(theta, H, D), rng,
                                                       mask_max_frac=0.2, p_no_mask=0.5))
        batch = collate(examples, vlm.tokenizer.pad_token_id, "right")
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        log.append(loss.item())
        if step % 50 == 0:
            print(f"  train step {step} ({elapsed:.0f}s) loss {np.mean(log[-50:]):.4f}", flush=True)
    model.eval()
    if previous:
        step, seconds, log = step + previous["steps"], seconds + previous["seconds"], previous["loss"] + log

    def write(tmp: Path) -> None:
        vlm.save_pretrained(tmp)
        cfg.save(tmp)
        (tmp / "train_log.json").write_text(json.dumps({"steps": step, "seconds": seconds, "loss": log}))

    return save_folder_atomic(folder, write)


# -- observations --------------------------------------------------------------------------------
def synthetic_episodes(n: int, steps: int, seed: int) -> list[list[tuple[list[np.ndarray], str]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        theta = rng.uniform(0, 2 * np.pi)
        out.append([([world_frame(theta + OMEGA * t)], TASK) for t in range(steps)])
    return out


def dataset_episodes(path: str, policy: VLA0Policy, n: int, steps: int) -> list[list[tuple[list[np.ndarray], str]]]:
    """Consecutive frames (from the start) of the first n episodes of a LeRobot dataset."""
    from vla0.data.lerobot_dataset import load_lerobot
    data = load_lerobot(Path(path), cameras=policy.config.image_keys)
    out = []
    for ep in data.episodes[:n]:
        rows = range(ep.start, min(ep.end, ep.start + steps))
        out.append([([data.images[k][r] for k in policy.config.image_keys], ep.task) for r in rows])
    if len(out) < n:  # fewer episodes than asked: repeat them (batches need n)
        out = (out * math.ceil(n / len(out)))[:n]
    return out


def hf_generate(policy: VLA0Policy, prompts) -> list[str]:
    """The baseline: HF greedy `generate` with the grammar logits processor, batched with left
    padding (what ActionDecoder.greedy does with fast=False; inlined so it stays the baseline)."""
    tok, grammar = policy.vlm.tokenizer, policy.processor.grammar
    batch = collate(prompts, tok.pad_token_id, padding_side="left")
    batch = {k: v.to(policy.device) for k, v in batch.items()}
    width = batch["input_ids"].shape[1]
    out = policy.vlm.model.generate(
        **batch, logits_processor=[GrammarLogitsProcessor(grammar, width)],
        max_new_tokens=grammar.max_new_tokens(), do_sample=False, top_k=None, top_p=None,
        eos_token_id=grammar.end_id, pad_token_id=tok.pad_token_id)
    return tok.batch_decode(out[:, width:], skip_special_tokens=True)


def model_accuracy(policy: VLA0Policy, episodes) -> dict:
    """How well the trained model fits the synthetic world (mean |error| in bins)."""
    errs, spread = [], []
    for ep in episodes:
        for frames, task in ep:
            text = hf_generate(policy, [policy.processor.prompt(frames, task)])[0]
            bins = policy.processor.codec.decode(text).bins
            theta = math.atan2(frames[0][0, 0, 1] - 128.0, frames[0][0, 0, 0] - 128.0)
            truth = policy.processor.codec.to_bins(world_chunk(theta, *bins.shape))
            errs.append(np.abs(bins - truth).mean())
            spread.append(bins)
    return {"mean_abs_error_bins": float(np.mean(errs)),
            "bins_std_across_frames": float(np.std(np.stack(spread), axis=0).mean())}


# -- methods ---------------------------------------------------------------------------------------
class PassCounter:
    """Counts forward passes of the language model (a hook on its first decoder layer, which
    generate and FastDecoder both run once per pass; the vision tower is not counted)."""

    def __init__(self, model):
        self.count = 0
        model.model.language_model.layers[0].register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.count += 1


METHODS = {  # FastDecoder options per method; None = HF generate
    "baseline": None,
    "loop_only": dict(prefix_cache=False, forced=False, speculative=False),
    "prefix_cache": dict(prefix_cache=True, forced=False, speculative=False),
    "forced": dict(prefix_cache=False, forced=True, speculative=False),
    "spec_prev_chunk": dict(prefix_cache=False, forced=False, speculative=True, lookup=False),
    "spec_lookup": dict(prefix_cache=False, forced=False, speculative=True, lookup=True, use_prev=False),
    "combined_exact": dict(),
    "combined_exact_no_refine": dict(refine=False),
    "combined_exact_one_draft": dict(candidates=False),
    "combined_relaxed_k3": dict(relaxed_k=3),
}


def make_decoder(policy: VLA0Policy, spec: dict):
    spec = dict(spec)
    use_prev = spec.pop("use_prev", True)
    if spec.pop("candidates", True) and use_prev:
        use_prev = "candidates"
    dec = FastDecoder(policy.vlm.model, policy.processor.grammar, policy.config.action_dim, policy.processor.pad_id,
                      **spec)
    return dec, use_prev


def one_draft(prev_bins) -> list[int]:
    """The previous chunk shifted by one step, flattened (a single draft, no alternatives)."""
    return draft_candidates(prev_bins, 1)[0]


def fast_decode(dec: FastDecoder, tok, prompts, drafts) -> list[str]:
    """The fast decoder's action text per prompt, decoded as the baseline's."""
    return tok.batch_decode(dec.decode_ids(prompts, drafts), skip_special_tokens=True)


def run_methods(policy: VLA0Policy, names: list[str], episodes, batch: int, counter: PassCounter):
    """Replay episodes `batch` at a time, every method on every observation in turn (so a
    change in machine load hits all methods alike). Each method drafts from its own previous
    chunk. Returns {method: (per-chunk records, total decode seconds)}; `identical` compares
    with the first method (the baseline)."""
    decoders = {}
    for name in names:
        spec = METHODS[name]
        decoders[name] = (None, False) if spec is None else make_decoder(policy, spec)
    codec, tok = policy.processor.codec, policy.vlm.tokenizer
    out = {name: ([], 0.0) for name in names}
    for g in range(0, len(episodes), batch):
        group = list(range(g, min(g + batch, len(episodes))))
        prev = {name: {e: None for e in group} for name in names}
        for t in range(min(len(episodes[e]) for e in group)):
            prompts = [policy.processor.prompt(*episodes[e][t]) for e in group]
            reference = None
            for name in names:
                dec, use_prev = decoders[name]
                make = draft_candidates if use_prev == "candidates" else one_draft
                drafts = [make(prev[name][e]) if (use_prev and prev[name][e] is not None) else None for e in group]
                c0 = counter.count
                t0 = time.perf_counter()
                texts = hf_generate(policy, prompts) if dec is None else fast_decode(dec, tok, prompts, drafts)
                dt = time.perf_counter() - t0
                passes = counter.count - c0
                records, total = out[name]
                out[name] = (records, total + dt)
                chunks = [codec.decode(text) for text in texts]
                for j, e in enumerate(group):
                    row_passes = passes if dec is None or len(group) == 1 else dec.last_row_passes[j]
                    records.append({"ms": dt * 1000 / len(group), "passes": row_passes,
                                    "tokens": len(tok.encode(texts[j], add_special_tokens=False)) + 1,
                                    "identical": None if reference is None else
                                    bool(np.array_equal(chunks[j].bins, reference[j].bins)),
                                    "well_formed": chunks[j].well_formed})
                    prev[name][e] = chunks[j].bins
                if reference is None:
                    reference = chunks
    return out


def summarize(records, total_s: float) -> dict:
    ms = np.array([r["ms"] for r in records])
    passes = np.array([r["passes"] for r in records])
    tokens = np.array([r["tokens"] for r in records])
    same = [r["identical"] for r in records if r["identical"] is not None]
    out = {"chunks": len(records), "ms_median": float(np.median(ms)), "ms_p90": float(np.percentile(ms, 90)),
           "forward_passes_median": float(np.median(passes)), "forward_passes_mean": float(passes.mean()),
           "tokens_per_pass": float(tokens.sum() / max(1, passes.sum())),
           "well_formed_fraction": float(np.mean([r["well_formed"] for r in records])),
           "chunks_per_s": len(records) / total_s}
    if same:
        out["identical_fraction"] = float(np.mean(same))
    return out


def bench_policy(policy: VLA0Policy, episodes_for, n_episodes: int, steps: int, batches: list[int],
                 label: str, methods: list[str], chunks_per_batch: int = 48) -> dict:
    """episodes_for(n, steps) -> n replay episodes of `steps` consecutive observations."""
    counter = PassCounter(policy.vlm.model)
    H, D, B = policy.config.chunk_size, policy.config.action_dim, policy.config.num_bins
    episodes = episodes_for(n_episodes, steps)
    result = {"shape": {"H": H, "D": D, "B": B}, "episodes": len(episodes), "steps_per_episode": steps}
    print(f"[{label}] H={H} D={D} B={B}: {len(episodes)} episodes x {steps} steps", flush=True)
    names = ["baseline"] + [m for m in methods if m != "baseline"]
    run_methods(policy, names, [episodes[0][:2]], 1, counter)  # warm-up
    for name, (records, total) in run_methods(policy, names, episodes, 1, counter).items():
        result[name] = summarize(records, total)
        print(f"  {name}: {result[name]}", flush=True)
    base, comb = result["baseline"], result["combined_exact"]
    result["speedup_combined_exact"] = {
        "forward_passes": base["forward_passes_median"] / comb["forward_passes_median"],
        "ms_median": base["ms_median"] / comb["ms_median"]}
    print(f"  speedup: {result['speedup_combined_exact']}", flush=True)
    throughput = {}
    for b in batches:
        eps = episodes_for(b, max(2, chunks_per_batch // b))  # b different episodes, decoded together
        row = {}
        for name, (records, total) in run_methods(policy, ["baseline", "combined_exact"], eps, b, counter).items():
            s = summarize(records, total)
            row[name] = {k: s[k] for k in ("chunks_per_s", "chunks", "identical_fraction", "forward_passes_median")
                         if k in s}
        throughput[str(b)] = row
        print(f"  batch {b}: {row}", flush=True)
    result["throughput"] = throughput
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "tmp" / "bench_decode"), help="where the trained model is cached")
    ap.add_argument("--train-seconds", type=float, default=1200.0)
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--train-more", type=float, default=0.0, help="seconds of further training of the cached model")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--policy", help="also benchmark this policy / run folder (e.g. the quickstart checkpoint)")
    ap.add_argument("--episodes-from", help="LeRobot dataset whose episodes are replayed for --policy")
    ap.add_argument("--only-policy", action="store_true", help="skip the synthetic paper-shape run; the result "
                    "goes to 'quickstart' of the existing --out file")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "decode.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    methods = args.methods.split(",")
    batches = [int(b) for b in args.batches.split(",") if b]
    out = Path(args.out)
    if args.only_policy:
        if not (args.policy and args.episodes_from):
            raise SystemExit("--only-policy needs --policy and --episodes-from")
        result = json.loads(out.read_text()) if out.exists() else {}
        result["quickstart"] = bench_real_policy(args, batches)
        write_json(out, result)
        return
    H, D, B = 8, 7, 1000
    folder = Path(args.work) / f"tiny_circle_H{H}_D{D}_B{B}"
    if args.retrain or not (folder / "vla0_policy.json").exists():
        print(f"training the tiny model for {args.train_seconds:.0f}s -> {folder}", flush=True)
        train_policy(folder, H, D, B, args.train_seconds)
    elif args.train_more > 0:
        print(f"training the cached model {args.train_more:.0f}s more", flush=True)
        train_policy(folder, H, D, B, args.train_more, lr=1.5e-3, resume=True)
    if args.train_only:
        return
    policy = VLA0Policy.from_pretrained(folder)
    result = {"device": "cpu", "torch_threads": torch.get_num_threads(), "model": "embedded tiny Qwen2.5-VL "
              f"(2 layers, hidden 128) trained {json.loads((folder / 'train_log.json').read_text())['steps']} steps"
              " on the synthetic circle world"}
    result["model_accuracy"] = model_accuracy(policy, synthetic_episodes(4, 4, args.seed + 100))

    def synthetic(n, steps, _seed=[args.seed]):
        _seed[0] += 1
        return synthetic_episodes(n, steps, _seed[0])

    result.update(bench_policy(policy, synthetic, args.episodes, args.steps, batches, "paper shape", methods))
    if args.policy:
        result["quickstart"] = bench_real_policy(args, batches)
    write_json(out, result)


def bench_real_policy(args, batches: list[int]) -> dict:
    if not args.episodes_from:
        raise SystemExit("--policy needs --episodes-from DATASET to replay")
    policy = VLA0Policy.from_pretrained(args.policy)
    policy.processor.require_format("text", "bench/decode.py (it compares decoded text)")
    result = bench_policy(policy, lambda n, steps: dataset_episodes(args.episodes_from, policy, n, steps),
                          args.episodes, args.steps, batches, "quickstart", ["baseline", "combined_exact"])
    result["policy"], result["dataset"] = str(args.policy), str(args.episodes_from)
    return result


def write_json(out: Path, result: dict) -> None:
    write_json_atomic(result, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
