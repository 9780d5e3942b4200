"""RL demonstration: a weak supervised policy, before and after GRPO (`vla0 rl`) for a wall-clock
budget, on held-out seeds with Wilson intervals and a paired (same seeds) McNemar test. Writes
bench/results/rl.json and bench/results/rl_learning_curve.png.

usage: OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 MUJOCO_GL=egl python bench/rl.py [--minutes 45] [--episodes 50]

Without --policy it first builds the weak policy (SimpleVLA-RL's few-demonstration setting):
--demos expert demonstrations per task (default 8, seeds 0-7) of the three quickstart tasks, the
embedded tiny model, --sft-steps (800) of the quickstart's recipe, chunks executed open loop
(H = 4 steps per policy call, no ensembling). Greedy, 30 held-out seeds: reach-v3 20%,
button-press-topdown-v3 60%, drawer-open-v3 80%. RL then runs on --tasks (default
button-press-topdown-v3). Before and after are evaluated the same way: greedy decoding, and again
sampling at --sampled-eval-temperature (the stochastic policy RL optimises), the same execution,
the same seeds (--eval-seed upward; rollouts use --rollout-seed upward, never the same
positions).

Defaults for 2 CPU cores and the embedded tiny model, against the SimpleVLA-RL recipe, each
measured on this bench:
- temperature 0.5 (recipe 1.6): actions are digits, and one resampled tens digit moves an action
  by 10% of its range. At 0.5 the sampled policy succeeds about as often as greedy decoding
  (button-press 58% vs 60%) and still every one of 8 probe groups had mixed outcomes, so what
  RL improves is what greedy evaluation deploys. At 1.0 on reach-v3, RL raised sampled success
  3% -> 27% while greedy went 20% -> 23%; at 0.7 the sampled-digit entropy drifted up
  0.30 -> 0.63 nats over 16 iterations;
- one task (recipe: a suite): on reach-v3 the tiny model stops just outside the success radius
  and most groups fail entirely, so dynamic sampling spends rollouts on nothing; drawer-open
  starts at 80%; button-press-topdown (60%) leaves room and gives mixed groups. The same
  settings on button-press + drawer-open (45.7 minutes) gave no gain: greedy 68% -> 62%, drawer
  76% -> 60% (bench/results/rl_two_tasks.json);
- groups per batch 8 (recipe 64), group size 8 (recipe): one iteration (64-256 rollouts,
  depending on how many groups dynamic sampling drops) took 1.6-6 minutes here, 15 of them in
  41.5 minutes;
- lr 2e-4 with a 16-step linear warm-up, 2 epochs x 4 mini-batches per batch (recipe 5e-6 constant,
  one step): that rate is for multi-billion-parameter pretrained VLAs; the tiny model is trained
  from scratch at 1e-3. Without the warm-up, Adam's first step (every weight moves by about lr)
  moved the policy by 0.13 nats of KL and rollout success fell 44% -> 14% in one update; with
  it, 0.0025-0.010 nats per iteration and the entropy steady (0.23 -> 0.20 nats);
- rollouts capped at 100 steps (held-out episodes keep the task's 150): held-out button-press
  successes took 67 steps on average (median 64), and failures no longer spend a third of the
  rollout time running out the clock;
- loss on the executed numbers, trajectory-mean aggregation (recipe: all action tokens, token
  mean). Failures run to the step cap while successes stop early, so under the token mean a
  group's negative advantages cover more tokens than its positive ones (measured: entropy
  0.50 -> 0.66 nats in 6 iterations with the token mean, 0.50-0.55 over 15 with trajectory-mean).
All of these are flags; pass the recipe values to reproduce it literally.
"""
import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

from vla0.envs import get_env
from vla0.eval.evaluate import EVAL_SEED, evaluate
from vla0.eval.report import compare_table, paired_comparison
from vla0.io import write_json_atomic
from vla0.policy.policy import VLA0Policy, resolve_policy_dir
from vla0.rl.rollout import render_settings
from vla0.rl.trainer import RLConfig, train_rl

ENV = "metaworld"

RESULTS = Path(__file__).parent / "results"


def names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def summary(res: dict) -> dict:
    return {"mean_success_rate": res["mean_success_rate"], "episode_outcomes": res["episodes"],
            "tasks": {t: {k: r[k] for k in ("success_rate", "successes", "episodes", "ci95", "mean_steps")}
                      for t, r in res["tasks"].items()}}


def build_weak_policy(args, work: Path) -> Path:
    """The few-demonstration supervised policy RL starts from: `--demos` expert episodes per task
    (seeds 0 upward), the embedded tiny model, `--sft-steps` of the "rl-weak" training recipe
    (the quickstart's, chunks executed open loop: n_action_steps = H, no ensembling, as RL rolls
    them out). Each phase is skipped when its output exists (a resumed bench reuses it)."""
    from vla0.envs.collect import collect
    from vla0.model.tiny import init_model
    from vla0.quickstart import QuickstartConfig
    from vla0.train.recipes import recipe
    from vla0.train.trainer import TrainConfig, train
    qs = QuickstartConfig()
    weak = recipe("rl-weak")
    data, model, run = work / "weak" / "data", work / "weak" / "model", work / "weak" / "run"
    if not (data / "meta" / "info.json").exists():
        print(f"[bench rl] collecting {args.demos} demonstrations per task")
        collect(args.sft_tasks, args.demos, qs.collect_seed, data, env=ENV, cameras=tuple(weak["cameras"]),
                image_size=tuple(qs.camera_size), num_workers=args.workers, progress=False)
    if not (model / "config.json").exists():
        init_model("tiny", model)
    if not (run / "policy" / "vla0_policy.json").exists():
        print(f"[bench rl] training the weak policy: {args.sft_steps} steps")
        train(TrainConfig(model=str(model), dataset=str(data), out=str(run), progress=False,
                          **recipe("rl-weak", steps=args.sft_steps, save_every=args.sft_steps)))
    return run


def sampled_evals(args, source: Path, policy_dir: Path, work: Path, cameras, size) -> dict:
    """Before and after as stochastic policies: sampling at --sampled-eval-temperature (what RL
    optimises), same seeds, the torch RNG seeded identically for both."""
    import torch
    t = args.sampled_eval_temperature
    out = {}
    for tag, folder in (("before", source), ("after", policy_dir)):
        policy = VLA0Policy.from_pretrained(folder, n_action_steps=args.n_action_steps, ensemble=args.ensemble,
                                            temperature=t, name=f"{tag} (sampled, T={t:g})")
        torch.manual_seed(args.seed)
        print(f"[bench rl] {tag}, sampled at temperature {t:g}")
        out[f"{tag}_sampled"] = {**run_eval(policy, args, work / f"eval_{tag}_sampled", cameras, size), "temperature": t}
    return out


def pair_outcomes(results: dict) -> dict:
    """Before vs after on the same seeds, episode by episode (McNemar); drops the per-episode
    outcomes from `results` once used."""
    paired = {name: paired_comparison(results[f"before{k}"]["episode_outcomes"], results[f"after{k}"]["episode_outcomes"])
              for name, k in (("greedy", ""), ("sampled", "_sampled")) if f"after{k}" in results}
    for r in results.values():
        r.pop("episode_outcomes", None)
    return paired


def run_eval(policy, args, out: Path, cameras, size) -> dict:
    res = evaluate(policy, args.tasks, args.episodes, seed=args.eval_seed, out=out, env=ENV, cameras=cameras,
                   image_size=size, num_workers=args.workers, batch_envs=args.batch_envs,
                   max_episode_steps=args.max_episode_steps, videos=args.videos, progress=True)
    return summary(res)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default=None,
                    help="weak supervised policy or run folder (default: build one from --demos demonstrations)")
    ap.add_argument("--demos", type=int, default=8, help="demonstrations per task for the built weak policy")
    ap.add_argument("--sft-steps", type=int, default=800, help="training steps of the built weak policy")
    ap.add_argument("--sft-tasks", type=names, default="reach-v3,button-press-topdown-v3,drawer-open-v3",
                    help="tasks the built weak policy is trained on (RL may use a subset: --tasks)")
    ap.add_argument("--tasks", type=names, default="button-press-topdown-v3",
                    help="comma-separated Meta-World tasks RL trains and is evaluated on")
    ap.add_argument("--minutes", type=float, default=45.0, help="RL wall-clock budget")
    ap.add_argument("--episodes", type=int, default=50, help="held-out episodes per task, before and after")
    ap.add_argument("--eval-seed", type=int, default=EVAL_SEED)
    ap.add_argument("--rollout-seed", type=int, default=100_000)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--groups-per-batch", type=int, default=8)
    ap.add_argument("--max-groups-factor", type=float, default=4.0)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup-steps", type=int, default=16, help="optimizer steps of linear lr warm-up")
    ap.add_argument("--minibatches", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--loss-tokens", choices=["all", "executed"], default="executed")
    ap.add_argument("--loss-agg", choices=["token-mean", "trajectory-mean"], default="trajectory-mean")
    ap.add_argument("--lora-rank", type=int, default=0)
    ap.add_argument("--n-action-steps", "--action-horizon", type=int, default=None,
                    help="steps executed per chunk (default: the policy's own; old name --action-horizon)")
    ap.add_argument("--ensemble", type=int, default=1)
    ap.add_argument("--max-episode-steps", "--max-steps", type=int, default=None,
                    help="held-out episode cap (default: per-task table; old name --max-steps)")
    ap.add_argument("--rollout-max-episode-steps", "--rollout-max-steps", type=int, default=100,
                    help="RL rollout episode cap (0: the per-task table; old name --rollout-max-steps)")
    ap.add_argument("--batch-envs", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=5, help="learning-curve evaluations (iterations)")
    ap.add_argument("--curve-episodes", type=int, default=20, help="episodes per task in those")
    ap.add_argument("--videos", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/bench_rl", help="RL run and evaluation folders")
    ap.add_argument("--out", default=str(RESULTS / "rl.json"))
    ap.add_argument("--resume", action="store_true", help="continue the RL run in --work")
    ap.add_argument("--sampled-eval-temperature", type=float, default=None,
                    help="also evaluate before/after sampling at this temperature (default: --temperature; 0: greedy only)")
    ap.add_argument("--sampled-eval-only", action="store_true",
                    help="no RL: add the sampled evaluations of the finished run in --work to --out")
    args = ap.parse_args()
    if args.sampled_eval_temperature is None:
        args.sampled_eval_temperature = args.temperature
    # bad names or counts fail here, not after minutes of building the weak policy
    family = get_env(ENV)
    family.check_tasks(args.tasks, args.episodes, "bench rl")
    family.check_tasks(args.sft_tasks, args.demos, "bench rl (--sft-tasks, --demos)")
    work = Path(args.work)
    if args.sampled_eval_only:
        report = json.loads(Path(args.out).read_text())
        native = VLA0Policy.from_pretrained(report["policy"])
        cameras, size = render_settings(native.config)
        sampled = sampled_evals(args, Path(report["policy"]), work / "run" / "policy", work, cameras, size)
        report["paired"] = {**report.get("paired", {}), **pair_outcomes(sampled)}
        report.update(sampled)
        write_json_atomic(report, Path(args.out))
        print(compare_table({k: report[k] for k in ("before", "after", "before_sampled", "after_sampled")}))
        return
    if (work / "run").exists() and not args.resume:
        shutil.rmtree(work / "run")  # a fresh RL run; a built weak policy is kept and reused
    for old in ("eval_before", "eval_before_native", "eval_after", "eval_before_sampled", "eval_after_sampled"):
        shutil.rmtree(work / old, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    load_1m = round(os.getloadavg()[0], 2)

    source = resolve_policy_dir(args.policy or build_weak_policy(args, work))
    before = VLA0Policy.from_pretrained(source, n_action_steps=args.n_action_steps, ensemble=args.ensemble,
                                        temperature=0.0, name="before")
    native = VLA0Policy.from_pretrained(source, name="before (policy settings)")
    cameras, size = render_settings(native.config)
    exec_settings = {"n_action_steps": args.n_action_steps or native.config.n_action_steps, "ensemble": args.ensemble}
    native_settings = {"n_action_steps": native.config.n_action_steps, "ensemble": native.config.ensemble}

    results = {}
    print(f"[bench rl] before: {args.episodes} episodes/task, execution {exec_settings}")
    results["before"] = run_eval(before, args, work / "eval_before", cameras, size)
    if native_settings != exec_settings:
        print(f"[bench rl] before with the policy's own settings {native_settings}")
        results["before_policy_settings"] = {**run_eval(native, args, work / "eval_before_native", cameras, size),
                                             "execution": native_settings}
    del before, native

    cfg = RLConfig(policy=str(source), tasks=args.tasks, out=str(work / "run"), group_size=args.group_size,
                   groups_per_batch=args.groups_per_batch, max_groups_factor=args.max_groups_factor,
                   temperature=args.temperature, lr=args.lr, warmup_steps=args.warmup_steps, epochs=args.epochs, minibatches=args.minibatches,
                   loss_tokens=args.loss_tokens, loss_agg=args.loss_agg, lora_rank=args.lora_rank,
                   n_action_steps=args.n_action_steps, ensemble=args.ensemble,
                   max_episode_steps=args.rollout_max_episode_steps or None,
                   eval_max_episode_steps=args.max_episode_steps, env=ENV, batch_envs=args.batch_envs, workers=args.workers,
                   rollout_seed=args.rollout_seed, minutes=args.minutes, eval_every=args.eval_every,
                   eval_episodes=args.curve_episodes, eval_seed=args.eval_seed, seed=args.seed, resume=args.resume)
    print(f"[bench rl] RL for {args.minutes} min")
    t_rl = time.perf_counter()
    policy_dir = train_rl(cfg)
    rl_minutes = (time.perf_counter() - t_rl) / 60

    after = VLA0Policy.from_pretrained(policy_dir, temperature=0.0, name="after")
    print("[bench rl] after")
    results["after"] = run_eval(after, args, work / "eval_after", cameras, size)
    if args.sampled_eval_temperature > 0:
        results.update(sampled_evals(args, source, policy_dir, work, cameras, size))

    log = [json.loads(line) for line in (work / "run" / "rl_log.jsonl").read_text().splitlines() if line.strip()]
    iters = [r for r in log if "rollout_success_rate" in r]
    curve = Path(args.out).with_name(f"{Path(args.out).stem}_learning_curve.png")
    curve.parent.mkdir(parents=True, exist_ok=True)
    if (work / "run" / "learning_curve.png").exists():
        shutil.copyfile(work / "run" / "learning_curve.png", curve)
    paired = pair_outcomes(results)
    report = {
        "before": results["before"],
        "after": results["after"],
        **{k: results[k] for k in ("before_policy_settings", "before_sampled", "after_sampled") if k in results},
        "paired": paired,
        "episodes_per_task": args.episodes,
        "wall_minutes": round(rl_minutes, 2),
        "total_minutes": round((time.perf_counter() - t_all) / 60, 2),
        "tasks": args.tasks,
        "eval": {"seeds": [args.eval_seed, args.eval_seed + args.episodes - 1], "decoding": "greedy",
                 "execution": exec_settings, "cameras": list(cameras), "image_size": list(size)},
        "rl": {"iterations": len(iters), "updates": sum(1 for r in iters if r.get("optimizer_steps")),
               "episodes": sum(r["episodes"] for r in iters), "env_steps": sum(r["env_steps"] for r in iters),
               "rollout_minutes": round(sum(r["rollout_seconds"] for r in iters) / 60, 2),
               "update_minutes": round(sum(r["update_seconds"] for r in iters) / 60, 2),
               "rollout_success_first": iters[0]["rollout_success_rate"] if iters else None,
               "rollout_success_last": iters[-1]["rollout_success_rate"] if iters else None,
               "curve": [{k: r.get(k) for k in ("iteration", "rollout_success_rate", "kept_fraction", "approx_kl",
                                                "clip_fraction", "entropy", "eval_success_rate")} for r in log],
               "config": {k: getattr(cfg, k) for k in ("group_size", "groups_per_batch", "max_groups_factor",
                                                       "temperature", "lr", "warmup_steps", "epochs", "minibatches", "loss_tokens", "loss_agg",
                                                       "lora_rank", "clip_low", "clip_high", "rollout_seed",
                                                       "max_episode_steps")},
               "run": str(work / "run"), "learning_curve": str(curve)},
        "policy": str(source),
        **({} if args.policy else {"weak_policy": {"demos_per_task": args.demos, "sft_steps": args.sft_steps,
                                                   "collect_seeds": [0, args.demos - 1],
                                                   "tasks": args.sft_tasks}}),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m_at_start": load_1m, "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
    }
    write_json_atomic(report, Path(args.out))
    print(compare_table({k: results[k] for k in ("before", "after", "before_sampled", "after_sampled") if k in results}))
    print(f"[bench rl] paired (same seeds): {report['paired']}")
    print(f"[bench rl] wrote {args.out} ({len(iters)} iterations, {rl_minutes:.1f} min of RL)")


if __name__ == "__main__":
    main()
