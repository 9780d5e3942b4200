"""Text head vs flow head, side by side, on the quickstart's three Meta-World tasks.

Same stage-1 VLM, same demonstrations, same held-out seeds:
  1. stage 1: `vla0 quickstart` into --out (collect, tiny VLM, text-action training, evaluation);
  2. stage 2: `vla0 train --head flow --from OUT/run` (the VLM frozen, only the expert trains), timed;
  3. the flow-head policy evaluated on the same seeds; success with 95% Wilson intervals per head and
     the paired (McNemar) comparison episode by episode;
  4. the frozen VLM checked: its greedy text output for fixed dataset frames, read from the stage-2
     folder, is bit-identical to the stage-1 policy's, and so are its weights;
  5. per-chunk latency, text (greedy, fast decoder) vs flow (one prefill + Euler steps), at the
     quickstart's shape (the trained policies) and at the paper's (H=8, D=7, 1000 bins; untrained
     tiny weights), batch 1 and 16.
Phases already done in --out are reused. Writes bench/results/flow_head.json.

    python bench/flow_head.py --out runs/bench_flow_head          # the full run
    python bench/flow_head.py --out /tmp/fh --smoke               # tiny settings: checks the script
"""

import argparse
import dataclasses
import json
import os
import platform
import shutil
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def latency(policy, obs: dict, repeats: int) -> float:
    """Median seconds per predict_action_chunk call (after one warm-up call)."""
    policy.predict_action_chunk(obs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        policy.predict_action_chunk(obs)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def dataset_obs(data, keys: list[str], rows: np.ndarray) -> dict:
    obs = {k: data.images[k][rows] for k in keys}
    obs["task"] = [data.tasks[int(data.task_index[i])] for i in rows]
    return obs


def paper_shape_policies(model_dir: Path, expert_depth: int):
    """Untrained text and flow policies at H=8, D=7, B=1000 (two 64 px cameras tiled)."""
    from vla0.config import PolicyConfig
    from vla0.model.vlm import load_vlm
    from vla0.policy.flow_head import FlowExpert, expert_config_for
    from vla0.policy.policy import VLA0Policy
    text_cfg = PolicyConfig(action_dim=7, cameras=["a", "b"], chunk_size=8, num_bins=1000, image_size=[64, 64],
                            crop_fraction=1.0, action_stats={"min": [-1.0] * 7, "max": [1.0] * 7}, ensemble=1)
    vlm = load_vlm(model_dir)
    expert_cfg = expert_config_for(vlm.model.config, depth=expert_depth)
    flow_cfg = dataclasses.replace(text_cfg, head="flow", flow_expert=dataclasses.asdict(expert_cfg))
    torch.manual_seed(0)
    return (VLA0Policy(vlm, text_cfg),
            VLA0Policy(vlm, flow_cfg, expert=FlowExpert(expert_cfg, 7, 8), generator=torch.Generator().manual_seed(0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench_flow_head")
    ap.add_argument("--result", default=str(RESULTS / "flow_head.json"))
    ap.add_argument("--stage2-steps", type=int, default=2000)
    ap.add_argument("--stage2-lr", type=float, default=1e-3)
    ap.add_argument("--expert-depth", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=10, help="latency measurements per setting")
    ap.add_argument("--smoke", action="store_true", help="tiny settings (2 demos, 20 steps, 2 episodes)")
    args = ap.parse_args()

    from vla0.data.lerobot_dataset import load_lerobot
    from vla0.eval.evaluate import evaluate
    from vla0.eval.report import compare_table, paired_comparison
    from vla0.io import write_json_atomic
    from vla0.model.vlm import load_vlm
    from vla0.policy.policy import VLA0Policy
    from vla0.quickstart import ENV, QuickstartConfig, run_quickstart
    from vla0.train.recipes import recipe
    from vla0.train.trainer import TrainConfig, Trainer

    out = Path(args.out)
    smoke = dict(demos_per_task=2, steps=20, eval_episodes=2) if args.smoke else {}
    steps2 = 20 if args.smoke else args.stage2_steps
    repeats = 2 if args.smoke else args.repeats
    qs = QuickstartConfig(out=str(out), progress=False, **smoke)
    t0 = time.perf_counter()
    quick = run_quickstart(qs)  # stage 1 and the text head's evaluation (reused when done)
    stage1_seconds = json.loads((out / "timings.json").read_text()).get("train")
    print(f"[flow bench] stage 1 ready ({time.perf_counter() - t0:.0f} s this call)")

    # -- stage 2 -----------------------------------------------------------------------------------
    run2 = out / "flow_run"
    timing_file = out / "stage2_seconds.json"
    if not (run2 / "policy" / "vla0_policy.json").exists():
        shutil.rmtree(run2, ignore_errors=True)
        t0 = time.perf_counter()
        cfg = TrainConfig(dataset=str(out / "data"), out=str(run2), head="flow", from_policy=str(out / "run"),
                          steps=steps2, batch_size=recipe("quickstart")["batch_size"], lr=args.stage2_lr,
                          schedule="cosine", warmup_steps=min(100, steps2 // 10), expert_depth=args.expert_depth,
                          save_every=max(steps2, 1), progress=False)
        Trainer(cfg).train()
        write_json_atomic({"seconds": round(time.perf_counter() - t0, 1), "steps": steps2}, timing_file)
    stage2 = json.loads(timing_file.read_text())
    print(f"[flow bench] stage 2: {stage2}")

    # -- evaluation on the same seeds --------------------------------------------------------------
    cameras = tuple(recipe("quickstart")["cameras"])
    flow_eval = out / "eval" / "flow"
    if not (flow_eval / "results.json").exists():
        policy = VLA0Policy.from_pretrained(run2, generator=torch.Generator().manual_seed(0))
        evaluate(policy, qs.tasks, qs.eval_episodes, qs.eval_seed, flow_eval, env=ENV, cameras=cameras,
                 image_size=tuple(qs.camera_size), num_workers=qs.num_workers, progress=False,
                 batch_envs=qs.eval_episodes)
    flow = json.loads((flow_eval / "results.json").read_text())
    text = quick["vla0"]
    table = compare_table({"text head": text, "flow head": flow, "expert": quick["expert"]})
    print(table)

    # -- the frozen VLM: bit-identical text output --------------------------------------------------
    stage1 = VLA0Policy.from_pretrained(out / "run")
    data = load_lerobot(out / "data", cameras=stage1.config.cameras)
    rows = np.linspace(0, len(data.action) - 1, 32).astype(int)
    obs = dataset_obs(data, stage1.config.image_keys, rows)
    reread = VLA0Policy(load_vlm(run2 / "policy"), stage1.config)  # stage 2's VLM, read as a text policy
    same_output = stage1.predict_action_chunk(obs).tobytes() == reread.predict_action_chunk(obs).tobytes()
    a, b = stage1.vlm.model.state_dict(), reread.vlm.model.state_dict()
    same_weights = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # -- latency -----------------------------------------------------------------------------------
    flow_policy = VLA0Policy.from_pretrained(run2, generator=torch.Generator().manual_seed(0))
    lat = {"quickstart_shape": {}, "paper_shape_H8_D7": {}}
    for n in (1, 16):
        o = dataset_obs(data, stage1.config.image_keys, rows[:n])
        lat["quickstart_shape"][f"batch_{n}"] = {"text_s": latency(stage1, o, repeats),
                                                 "flow_s": latency(flow_policy, o, repeats)}
    text_p, flow_p = paper_shape_policies(out / "model", args.expert_depth)
    rng = np.random.default_rng(0)
    for n in (1, 16):
        o = {k: rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8) for k in text_p.config.image_keys}
        o["task"] = ["pick up the red block"] * n
        lat["paper_shape_H8_D7"][f"batch_{n}"] = {"text_s": latency(text_p, o, repeats),
                                                  "flow_s": latency(flow_p, o, repeats)}

    def summary(r: dict) -> dict:
        return {"mean_success_rate": r["mean_success_rate"],
                "tasks": {t: {k: v[k] for k in ("successes", "episodes", "success_rate", "ci95")}
                          for t, v in r["tasks"].items()}}

    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_end": os.getloadavg()},
        "smoke": args.smoke,
        "setup": {"tasks": qs.tasks, "demos_per_task": qs.demos_per_task, "eval_seed": qs.eval_seed,
                  "eval_episodes": qs.eval_episodes, "stage1_steps": qs.steps or recipe("quickstart")["steps"],
                  "stage2_steps": stage2["steps"], "stage2_lr": args.stage2_lr,
                  "flow_expert": flow_policy.config.flow_expert},
        "stage1_train_seconds": stage1_seconds,
        "stage2_train_seconds": stage2["seconds"],
        "text_head": summary(text), "flow_head": summary(flow), "expert": summary(quick["expert"]),
        "paired_text_vs_flow": paired_comparison(text["episodes"], flow["episodes"]),
        "frozen_vlm": {"observations": len(rows), "text_output_bit_identical": same_output,
                       "weights_identical": same_weights},
        "latency_seconds_per_chunk": lat,
        "table": table,
    }
    write_json_atomic(report, Path(args.result))
    print(json.dumps({k: v for k, v in report.items() if k != "table"}, indent=2))


if __name__ == "__main__":
    main()
