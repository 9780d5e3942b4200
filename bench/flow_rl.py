"""Flow-head RL, measured like the text head's (bench/rl.py), from the same weak stage 1; and the
flow expert with and without observation.state. Writes bench/results/flow_rl.json and
bench/results/flow_rl_learning_curve.png.

usage: OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 MUJOCO_GL=egl python bench/flow_rl.py [--iterations 15] [--episodes 50]
       python bench/flow_rl.py --smoke --work /tmp/frl     # tiny settings: checks the script

Phases (each skipped when its output exists in --work, so a cut run resumes):
  1. the weak stage-1 text policy of bench/rl.py (build_weak_policy: 8 demos per task of reach,
     button-press-topdown and drawer-open, 800 steps of the "rl-weak" recipe), rebuilt the same way;
  2. stage 2 on it, twice: the expert alone (`vla0 train --head flow --from`) and the expert that
     also reads observation.state (`--expert-inputs observation.state`), same data, steps, seed;
  3. the flow policy on --tasks, --episodes held-out seeds (plain ODE), before and after
     `vla0 rl --policy FLOW_RUN` with bench/rl.py's GRPO settings (groups of 8, 8 groups per
     update, lr 2e-4 with 16 warm-up steps, 2 epochs x 4 mini-batches, trajectory-mean, rollouts
     capped at 100 steps) and noise --flow-noise per Euler step, for --iterations (the text run's
     15) or --minutes, whichever ends first; paired McNemar test on the same seeds;
  4. the weak text policy on --tasks, greedy (bench/rl.py's "before": is it the same stage 1?);
  5. with vs without the state on --state-tasks (the same held-out seeds for both experts).
The text head's RL from the same stage 1 is bench/results/rl.json (read, not re-run): the report
puts it beside the flow run with each head's success gain per rollout episode.
"""
import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from rl import build_weak_policy, names, summary  # noqa: E402  (bench/rl.py)

from vla0.eval.evaluate import EVAL_SEED, evaluate  # noqa: E402
from vla0.eval.report import compare_table, paired_comparison  # noqa: E402
from vla0.io import write_json_atomic  # noqa: E402
from vla0.policy.policy import VLA0Policy  # noqa: E402
from vla0.rl.rollout import render_settings  # noqa: E402
from vla0.rl.trainer import RLConfig, train_rl  # noqa: E402

ENV = "metaworld"
RESULTS = Path(__file__).parent / "results"
STATE = "observation.state"


def stage2(args, weak: Path, out: Path, inputs: list[str]) -> dict:
    """The flow expert on the weak stage-1 policy (its demonstrations); timed once, reused after."""
    from vla0.train.recipes import recipe
    from vla0.train.trainer import TrainConfig, Trainer
    timing = out.with_name(out.name + "_seconds.json")
    if not (out / "policy" / "vla0_policy.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        print(f"[bench flow rl] stage 2 {'with ' + ','.join(inputs) if inputs else '(images and text only)'}")
        t0 = time.perf_counter()
        Trainer(TrainConfig(dataset=str(weak.parent / "data"), out=str(out), head="flow", from_policy=str(weak),
                            steps=args.stage2_steps, batch_size=recipe("quickstart")["batch_size"],
                            lr=args.stage2_lr, schedule="cosine", warmup_steps=max(1, args.stage2_steps // 10),
                            save_every=args.stage2_steps, expert_inputs=inputs, progress=False)).train()
        write_json_atomic({"seconds": round(time.perf_counter() - t0, 1), "steps": args.stage2_steps}, timing)
    return json.loads(timing.read_text())


def run_eval(folder: Path, tasks, args, out: Path, name: str) -> dict:
    policy = VLA0Policy.from_pretrained(folder, name=name)
    cameras, size = render_settings(policy.config)
    res = evaluate(policy, tasks, args.episodes, seed=args.eval_seed, out=out, env=ENV, cameras=cameras,
                   image_size=size, num_workers=args.workers, batch_envs=args.batch_envs, videos=0, progress=False)
    return summary(res)  # evaluate resumes: finished episodes in `out` are not run again


def paired(a: dict, b: dict) -> dict:
    return paired_comparison(a.pop("episode_outcomes"), b.pop("episode_outcomes"))


def text_head_beside(path: Path) -> dict | None:
    """The text head's RL run from the same weak stage 1 (bench/rl.py's report), per-rollout gain."""
    if not path.exists():
        return None
    text = json.loads(path.read_text())
    gain = text["after"]["mean_success_rate"] - text["before"]["mean_success_rate"]
    return {"source": os.path.relpath(path), "before": text["before"]["mean_success_rate"],
            "after": text["after"]["mean_success_rate"], "paired_greedy": text["paired"]["greedy"],
            "rl_episodes": text["rl"]["episodes"], "rl_iterations": text["rl"]["iterations"],
            "rl_wall_minutes": text["wall_minutes"], "gain_per_1000_episodes": 1000 * gain / text["rl"]["episodes"],
            "weak_policy": text.get("weak_policy"), "temperature": text["rl"]["config"]["temperature"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demos", type=int, default=8)
    ap.add_argument("--sft-steps", type=int, default=800)
    ap.add_argument("--sft-tasks", type=names, default="reach-v3,button-press-topdown-v3,drawer-open-v3")
    ap.add_argument("--stage2-steps", type=int, default=800)
    ap.add_argument("--stage2-lr", type=float, default=1e-3)
    ap.add_argument("--tasks", type=names, default="button-press-topdown-v3", help="RL tasks")
    ap.add_argument("--state-tasks", type=names, default="reach-v3,button-press-topdown-v3,drawer-open-v3",
                    help="tasks of the with/without observation.state comparison")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--eval-seed", type=int, default=EVAL_SEED)
    ap.add_argument("--iterations", type=int, default=15, help="RL iterations (the text run's 15)")
    ap.add_argument("--minutes", type=float, default=45.0, help="RL wall-clock cap")
    ap.add_argument("--flow-noise", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup-steps", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--groups-per-batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--minibatches", type=int, default=4)
    ap.add_argument("--rollout-max-episode-steps", type=int, default=100)
    ap.add_argument("--batch-envs", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip", type=names, default="", help="phases to leave out: rl, stage1, state")
    ap.add_argument("--work", default="runs/bench_flow_rl")
    ap.add_argument("--out", default=str(RESULTS / "flow_rl.json"))
    ap.add_argument("--text-report", default=str(RESULTS / "rl.json"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, measures nothing")
    args = ap.parse_args()
    if args.smoke:
        args.demos, args.sft_steps, args.stage2_steps, args.episodes, args.iterations = 1, 4, 4, 2, 1
        args.group_size, args.groups_per_batch, args.rollout_max_episode_steps = 2, 1, 5
        args.sft_tasks = args.state_tasks = args.tasks
        if args.out == str(RESULTS / "flow_rl.json"):
            args.out = str(Path(args.work) / "flow_rl.json")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    weak = build_weak_policy(args, work)  # bench/rl.py's, phase by phase
    flow_dir, state_dir = work / "weak" / "flow_run", work / "weak" / "flow_run_state"
    report = {"smoke": args.smoke, "tasks": args.tasks, "episodes_per_task": args.episodes,
              "eval": {"seeds": [args.eval_seed, args.eval_seed + args.episodes - 1], "decoding": "plain ODE"},
              "weak_policy": {"demos_per_task": args.demos, "sft_steps": args.sft_steps, "tasks": args.sft_tasks,
                              "folder": str(weak)},
              "stage2": {"steps": args.stage2_steps, "lr": args.stage2_lr,
                         "seconds": stage2(args, weak, flow_dir, [])["seconds"]}}

    if "rl" not in args.skip:
        before = run_eval(flow_dir, args.tasks, args, work / "eval_before", "flow before")
        cfg = RLConfig(policy=str(flow_dir), tasks=args.tasks, out=str(work / "rl"), group_size=args.group_size,
                       groups_per_batch=args.groups_per_batch, flow_noise=args.flow_noise, lr=args.lr,
                       warmup_steps=args.warmup_steps, epochs=args.epochs, minibatches=args.minibatches,
                       loss_agg="trajectory-mean", max_episode_steps=args.rollout_max_episode_steps,
                       batch_envs=args.batch_envs, workers=args.workers, iterations=args.iterations,
                       minutes=args.minutes, eval_every=0, save_every=1, resume=(work / "rl" / "checkpoints").exists())
        t_rl = time.perf_counter()
        policy_dir = (work / "rl" / "policy") if (work / "rl" / "policy" / "vla0_policy.json").exists() else train_rl(cfg)
        rl_minutes = (time.perf_counter() - t_rl) / 60
        after = run_eval(policy_dir, args.tasks, args, work / "eval_after", "flow after")
        log = [json.loads(x) for x in (work / "rl" / "rl_log.jsonl").read_text().splitlines() if x.strip()]
        iters = [r for r in log if "rollout_success_rate" in r]
        episodes = sum(r["episodes"] for r in iters)
        curve = Path(args.out).with_name(Path(args.out).stem + "_learning_curve.png")
        if (work / "rl" / "learning_curve.png").exists():
            shutil.copyfile(work / "rl" / "learning_curve.png", curve)
        gain = after["mean_success_rate"] - before["mean_success_rate"]
        report["flow_rl"] = {
            "paired": paired(before, after), "before": before, "after": after,
            "wall_minutes_this_call": round(rl_minutes, 2), "iterations": len(iters), "episodes": episodes,
            "env_steps": sum(r["env_steps"] for r in iters),
            "rollout_minutes": round(sum(r["rollout_seconds"] for r in iters) / 60, 2),
            "update_minutes": round(sum(r["update_seconds"] for r in iters) / 60, 2),
            "gain_per_1000_episodes": 1000 * gain / max(episodes, 1),
            "config": {k: getattr(cfg, k) for k in ("flow_noise", "lr", "warmup_steps", "epochs", "minibatches",
                                                    "group_size", "groups_per_batch", "loss_agg", "clip_low",
                                                    "clip_high", "max_episode_steps", "iterations", "minutes")},
            "curve": [{k: r.get(k) for k in ("iteration", "rollout_success_rate", "kept_fraction", "approx_kl",
                                             "clip_fraction", "ratio_mean", "episodes")} for r in iters],
            "learning_curve": os.path.relpath(curve)}
        report["text_rl_same_stage1"] = text_head_beside(Path(args.text_report))
        print(compare_table({"flow before": before, "flow after": after}))

    if "stage1" not in args.skip:  # is this the weak stage 1 bench/rl.py measured? (its "before", greedy)
        policy = VLA0Policy.from_pretrained(weak, name="weak text policy")
        cameras, size = render_settings(policy.config)
        res = evaluate(policy, args.tasks, args.episodes, seed=args.eval_seed, out=work / "eval_text_before", env=ENV,
                       cameras=cameras, image_size=size, num_workers=args.workers, batch_envs=args.batch_envs,
                       videos=0, progress=False)
        report["stage1_text_greedy"] = {t: [r["successes"], r["episodes"]] for t, r in res["tasks"].items()}

    if "state" not in args.skip:
        report["stage2_with_state_seconds"] = stage2(args, weak, state_dir, [STATE])["seconds"]
        without = run_eval(flow_dir, args.state_tasks, args, work / "eval_state_without", "flow, images + text")
        with_ = run_eval(state_dir, args.state_tasks, args, work / "eval_state_with", "flow, + observation.state")
        report["state"] = {"tasks": args.state_tasks, "paired": paired(without, with_), "without": without,
                           "with": with_}
        print(compare_table({"without state": without, "with state": with_}))

    report["total_minutes"] = round((time.perf_counter() - t_all) / 60, 2)
    report["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "load_average_1m_at_start": load_start, "load_average_1m_at_end": round(os.getloadavg()[0], 2)}
    write_json_atomic(report, Path(args.out))
    print(f"[bench flow rl] wrote {args.out}")


if __name__ == "__main__":
    main()
