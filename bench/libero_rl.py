"""SimpleVLA-RL's headline on LIBERO, on a CPU: a weak policy from a few demonstrations per task,
lifted by GRPO on perturbed layouts of several LIBERO-Object tasks trained together in one run,
then evaluated against itself on the same official init states (paired, McNemar), with the scripted
expert and a random policy beside it. Writes bench/results/libero_rl.json and
bench/results/libero_rl_learning_curve.png.

usage: OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 MUJOCO_GL=egl python bench/libero_rl.py
       [--tasks 0,1,2] [--demos 10] [--sft-steps 1000] [--rl-minutes 60] [--trials 20]
smoke (a few minutes, writes nothing under bench/results): python bench/libero_rl.py --smoke

Phases (each skips itself when its output exists in --work, so an interrupted bench resumes; the
RL run resumes from its last checkpoint with --resume semantics; every evaluation resumes
episode by episode):
1. expert on official init states 0..--baseline-trials-1 (refuses a task below --min-expert);
2. --demos scripted demonstrations per task from perturbed layouts (official init state e mod 50,
   every free object moved 2-4 cm): evaluation's layouts are never trained on;
3. SFT: the embedded tiny model, the "rl-weak" recipe (the quickstart's: H = 4, 100 bins, masked
   action augmentation; chunks executed open loop, no ensembling) on both cameras at
   --camera-size px, --sft-steps steps. Pick --demos so that SFT lands at roughly 10-40%: GRPO
   learns only from groups with some successes;
4. SFT evaluated greedily on official init states 0..--trials-1 (never used for training);
5. GRPO (`vla0 rl`) on all tasks in one run: per-task dynamic sampling (equal shares of the batch),
   perturbed layouts (rollout seeds 100000 upward), rollouts executing 4-step chunks open loop,
   a learning-curve evaluation every --eval-every iterations on official init states
   --trials..--trials+--curve-trials-1 (not the final evaluation's);
6. the RL policy evaluated like SFT (same init states, same execution);
7. a random policy on the expert's init states.
Execution: SFT and RL policies are evaluated the way RL trains them (4-step chunks open loop,
greedy), not the published protocol (replan every step, temporal ensembling), which stays the
default of `vla0 eval --env libero`; results.json says so under "execution".
Time on 2 cores is the budget; "phase_seconds" records how it split.
"""
import argparse
import json
import os
import shutil
import time
from pathlib import Path

from libero_cpu import require_expert  # noqa: I001 (bench/, on the path when run as a script)
from libero_rollouts import machine, save_report
from vla0.envs import get_env
from vla0.envs.collect import collect
from vla0.eval.baselines import ExpertPolicy, RandomPolicy
from vla0.eval.evaluate import evaluate
from vla0.eval.report import compare_table, paired_comparison
from vla0.io import write_json_atomic
from vla0.model.tiny import init_model
from vla0.policy.policy import VLA0Policy
from vla0.rl.trainer import RLConfig, train_rl
from vla0.train.recipes import recipe
from vla0.train.trainer import TrainConfig, train

ENV, SUITE = "libero", "libero_object"
CAMERAS = ["image", "image2"]
RESULTS = Path(__file__).parent / "results"
SMOKE = dict(tasks="0", demos=1, sft_steps=2, rl_minutes=None, iterations=1, group_size=2, groups_per_batch=1,
             trials=1, baseline_trials=1, curve_trials=1, eval_every=1, rollout_max_episode_steps=5,
             eval_max_episode_steps=5, batch_envs=2, camera_size=32, work="runs/bench_libero_rl_smoke", save=False)


def summary(res: dict) -> dict:
    return {t: {"successes": r["successes"], "episodes": r["episodes"], "success_rate": r["success_rate"],
                "mean_steps": r["mean_steps"]} for t, r in res["tasks"].items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="0,1,2", help="LIBERO-Object task ids, trained together in one RL run")
    # Not calibrated yet: bench/libero_cpu.py's 40 demos and 3000 steps (replanning every step)
    # gave 38%; fewer demos and open-loop chunks should land lower. Check SFT alone first
    # (stop the bench after its "eval sft" phase) and adjust to 10-40%.
    p.add_argument("--demos", type=int, default=10, help="scripted demonstrations per task for the weak SFT policy")
    p.add_argument("--sft-steps", type=int, default=1000)
    p.add_argument("--camera-size", type=int, default=64)
    p.add_argument("--rl-minutes", type=float, default=60.0, help="RL wall-clock budget")
    p.add_argument("--iterations", type=int, default=None, help="RL iterations (with or instead of --rl-minutes)")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--groups-per-batch", type=int, default=6,
                   help="mixed groups per update, shared equally by the tasks")
    p.add_argument("--max-groups-factor", type=float, default=3.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup-steps", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--rollout-max-episode-steps", type=int, default=220,
                   help="RL rollout cap: above the successes' length (the expert needs 103-128 steps; a cap "
                        "below what a success takes turns successes into failures, see docs/rl.md)")
    p.add_argument("--eval-max-episode-steps", type=int, default=None, help="default: the protocol's 280")
    p.add_argument("--trials", type=int, default=20, help="official init states 0..N-1 per task for SFT and RL")
    p.add_argument("--baseline-trials", type=int, default=10, help="official init states for expert and random")
    p.add_argument("--curve-trials", type=int, default=5, help="learning-curve evaluations: init states after --trials")
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--min-expert", type=float, default=0.8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-envs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="runs/bench_libero_rl")
    p.add_argument("--save", action=argparse.BooleanOptionalAction, default=True,
                   help="write bench/results/libero_rl.json and the learning curve")
    p.add_argument("--smoke", action="store_true", help="tiny sizes to check the pipeline end to end (minutes)")
    args = p.parse_args()
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)

    family = get_env(ENV)
    tasks = family.select_tasks([t.strip() for t in args.tasks.split(",")], SUITE)
    family.check_tasks(tasks, args.trials, "bench libero_rl")
    family.check_seeds(0, max(args.trials + args.curve_trials, args.baseline_trials), {})
    family.check_expert(tasks, "bench libero_rl")
    if args.rl_minutes is None and args.iterations is None:
        raise SystemExit("give --rl-minutes or --iterations")
    work = Path(args.work)
    size = (args.camera_size, args.camera_size)
    # phase timings survive an interrupted bench: a resumed run adds to them
    timings_file = work / "phase_seconds.json"
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    ev = dict(env=ENV, image_size=size, num_workers=args.workers, batch_envs=args.batch_envs, progress=True, videos=0)

    def timed(name, fn):
        t0 = time.perf_counter()
        result = fn()
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t0, 1)
        write_json_atomic(timings, timings_file)
        return result

    load_start = os.getloadavg()[0]
    expert = timed("eval_expert", lambda: evaluate(ExpertPolicy(), tasks, args.baseline_trials, seed=0,
                                                   out=work / "eval" / "expert", **{**ev, "cameras": ()}))
    require_expert(expert, args.min_expert)

    data, model, sft = work / "data", work / "model", work / "sft"
    if not (data / "meta" / "info.json").exists():
        timed("collect", lambda: collect(tasks, args.demos, 0, data, env=ENV, cameras=tuple(CAMERAS),
                                         image_size=size, num_workers=args.workers, overwrite=True))
    if not (model / "config.json").exists():
        init_model("tiny", model, seed=args.seed)
    training = recipe("rl-weak", cameras=CAMERAS, steps=args.sft_steps, save_every=max(1, min(500, args.sft_steps)))
    if not (sft / "policy" / "vla0_policy.json").exists():
        timed("sft_train", lambda: train(TrainConfig(model=str(model), dataset=str(data), out=str(sft), **training,
                                                     resume=(sft / "checkpoints" / "latest").exists())))

    def eval_policy(folder: Path, tag: str) -> dict:
        policy = VLA0Policy.from_pretrained(folder, temperature=0.0, name=tag)
        return timed(f"eval_{tag}", lambda: evaluate(policy, tasks, args.trials, seed=0, out=work / "eval" / tag,
                                                     cameras=tuple(CAMERAS), policy_id=str(folder),
                                                     max_episode_steps=args.eval_max_episode_steps, **ev))

    results = {"expert": expert, "sft": eval_policy(sft, "sft")}

    rl = work / "rl"
    if not (rl / "policy" / "vla0_policy.json").exists():
        cfg = RLConfig(policy=str(sft), tasks=tasks, out=str(rl), env=ENV, group_size=args.group_size,
                       groups_per_batch=args.groups_per_batch, max_groups_factor=args.max_groups_factor,
                       temperature=args.temperature, lr=args.lr, warmup_steps=args.warmup_steps, epochs=args.epochs,
                       minibatches=args.minibatches, loss_tokens="executed", loss_agg="trajectory-mean",
                       max_episode_steps=args.rollout_max_episode_steps,
                       eval_max_episode_steps=args.eval_max_episode_steps, batch_envs=args.batch_envs,
                       workers=args.workers, minutes=args.rl_minutes, iterations=args.iterations,
                       eval_every=args.eval_every, eval_episodes=args.curve_trials, eval_seed=args.trials,
                       seed=args.seed, resume=(rl / "checkpoints" / "latest").exists())
        timed("rl", lambda: train_rl(cfg))
    results["rl"] = eval_policy(rl, "rl")
    results["random"] = timed("eval_random", lambda: evaluate(
        RandomPolicy.for_env(family, seed=0), tasks, args.baseline_trials, seed=0, out=work / "eval" / "random",
        **{**ev, "cameras": ()}))

    table = compare_table(results)
    print(table)
    sft_s, rl_s = summary(results["sft"]), summary(results["rl"])
    per_task = {}
    for t in tasks:
        pick = lambda res: [e for e in res["episodes"] if e["task"] == t]  # noqa: E731
        per_task[t] = {"instruction": family.instruction(t), "sft": sft_s[t], "rl": rl_s[t],
                       "expert": summary(expert)[t], "random": summary(results["random"])[t],
                       "paired": paired_comparison(pick(results["sft"]), pick(results["rl"]))}
    log = [json.loads(line) for line in (rl / "rl_log.jsonl").read_text().splitlines() if line.strip()]
    iters = [r for r in log if "rollout_success_rate" in r]
    demos = json.loads((data / "meta" / "vla0.json").read_text())
    curve = RESULTS / "libero_rl_learning_curve.png" if args.save else work / "libero_rl_learning_curve.png"
    if (rl / "learning_curve.png").exists():
        shutil.copyfile(rl / "learning_curve.png", curve)
    rl_cfg = json.loads((rl / "rl_config.json").read_text())
    report = {
        "bench": "libero_rl",
        "command": "python bench/libero_rl.py " + ("--smoke" if args.smoke else " ".join(
            f"--{k.replace('_', '-')} {getattr(args, k)}" for k in
            ("tasks", "demos", "sft_steps", "rl_minutes", "iterations", "trials", "camera_size")
            if getattr(args, k) is not None)),
        "tasks": per_task,
        "paired": paired_comparison(results["sft"]["episodes"], results["rl"]["episodes"]),
        "mean_success_rate": {name: r["mean_success_rate"] for name, r in results.items()},
        "protocol": results["sft"]["env_options"]["protocol"],
        "eval_init_states": [0, args.trials - 1],
        "baseline_init_states": [0, args.baseline_trials - 1],
        "execution": {"n_action_steps": training["n_action_steps"], "ensemble": training["ensemble"],
                      "decoding": "greedy",
                      "note": "SFT and RL are evaluated the way RL trains: 4-step chunks executed open loop; "
                              "`vla0 eval --env libero` keeps the published protocol (replan every step, "
                              "temporal ensembling) as its default"},
        "demonstrations": {"per_task": args.demos, "layout": demos["layout"], "kept": demos["kept_episodes"]},
        "sft_training": training,
        "camera_size": list(size),
        "rl": {"config": {k: rl_cfg[k] for k in ("group_size", "groups_per_batch", "max_groups_factor", "temperature",
                                                  "lr", "warmup_steps", "epochs", "minibatches", "loss_tokens",
                                                  "loss_agg", "max_episode_steps", "rollout_seed")},
               "iterations": len(iters), "episodes": sum(r["episodes"] for r in iters),
               "env_steps": sum(r["env_steps"] for r in iters),
               "rollout_minutes": round(sum(r["rollout_seconds"] for r in iters) / 60, 2),
               "update_minutes": round(sum(r["update_seconds"] for r in iters) / 60, 2),
               "curve": [{k: r.get(k) for k in ("iteration", "rollout_success_rate", "rollout_success_by_task",
                                                "groups_kept", "starved_tasks", "eval_success_rate",
                                                "eval_success_by_task")} for r in log],
               "learning_curve": str(curve)},
        "table": table,
        "phase_seconds": timings,
        "machine": machine(load_start),
    }
    print(f"paired SFT -> RL (all tasks): {report['paired']}")
    save_report(report, work, "libero_rl.json", args.save)


if __name__ == "__main__":
    main()
