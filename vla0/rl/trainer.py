"""The RL loop behind `vla0 rl`: RLConfig, RLTrainer, train_rl.

Each iteration: send weights to the rollout worker, collect groups with dynamic sampling per task
(launch groups of n rollouts from fresh seeds, keep those with mixed outcomes, repeat until every
task's equal share of the batch is full or its attempt cap is hit), compute group advantages,
update the learner, log one JSONL
row, maybe evaluate on held-out seeds, maybe checkpoint (atomic, resumable); at the end export
OUT/policy, a policy folder like the supervised trainer's.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vla0.config import PolicyConfig
from vla0.envs.base import get_env
from vla0.io import save_folder_atomic, write_text_atomic
from vla0.options import option
from vla0.processor import ActionProcessor
from vla0.rl.curves import plot_rl_curve
from vla0.rl.flow import DEFAULT_FLOW_NOISE, FlowLearner, load_flow_policy
from vla0.rl.grpo import group_advantages, group_outcome, groups_to_launch, task_quotas
from vla0.rl.learner import LOSS_AGGREGATIONS, Learner
from vla0.rl.rollout import RolloutJob, RolloutSettings, RolloutWorker, Trajectory
from vla0.train.checkpoint import TRAINER_STATE, drop_log_after, latest_checkpoint, save_checkpoint

LOG_FILE = "rl_log.jsonl"
CONFIG_FILE = "rl_config.json"


@dataclass
class RLConfig:
    policy: str = option(help="supervised policy or run folder to start from")
    tasks: list[str] = option(help="comma-separated, e.g. reach-v3,drawer-open-v3")
    out: str = option(help="RL run folder")
    env: str = option("metaworld", "registered environment (vla0.envs)")
    # -- GRPO (SimpleVLA-RL defaults) --
    group_size: int = option(8, "rollouts per group (same task, same seed)", group="GRPO")
    groups_per_batch: int = option(64, "groups with mixed outcomes per update, an equal share per task", group="GRPO")
    max_groups_factor: float = option(4.0, "dynamic sampling gives up on a task after this many x its share "
                                      "of groups", group="GRPO")
    temperature: float | None = option(None, "rollout sampling temperature (text head; default 1.6)", group="GRPO")
    flow_noise: float | None = option(None, "flow head: std of the Gaussian noise added at each Euler step of a rollout, "
                                      "in normalised action units (default 0.1)", group="GRPO")
    lr: float = option(5e-6, group="GRPO")
    warmup_steps: int = option(0, "optimizer steps of linear lr warm-up (0: the recipe's constant lr)", group="GRPO")
    betas: tuple[float, float] = option((0.9, 0.999), group="GRPO")
    weight_decay: float = option(0.0, group="GRPO")
    clip_low: float = option(0.2, group="GRPO")
    clip_high: float = option(0.28, group="GRPO")
    epochs: int = option(1, "passes over each batch", group="GRPO")
    minibatches: int = option(1, "optimizer steps per pass", group="GRPO")
    micro_batch: int = option(16, "policy calls per forward/backward (memory only)", group="GRPO")
    max_grad_norm: float = option(1.0, group="GRPO")
    loss_tokens: str = option("all", "'all' action tokens (recipe) or only the numbers that reach the env "
                              "(first min(H, ensemble x n-action-steps) steps of each chunk)",
                              choices=("all", "executed"), group="GRPO")
    loss_agg: str = option("token-mean", "token-mean (recipe): long trajectories weigh more; trajectory-mean: "
                           "each weighs the same", choices=LOSS_AGGREGATIONS, group="GRPO")
    lora_rank: int = option(0, "0 = full fine-tuning", group="GRPO")
    lora_alpha: int = option(16, group="GRPO")
    lora_targets: list[str] = option(group="GRPO", default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # -- rollouts --
    n_action_steps: int | None = option(None, "steps executed per sampled chunk (default: the policy's own)",
                                        aliases=("--action-horizon",), group="rollouts")
    ensemble: int = option(1, "temporal ensembling during rollouts (1 = off)", group="rollouts")
    max_episode_steps: int | None = option(None, "rollout episode cap (default: the env's per-task cap); a cap "
                                           "near the successes' length saves the time failures spend running "
                                           "out the clock", aliases=("--max-steps",), group="rollouts")
    batch_envs: int = option(16, "episodes in lockstep (one batched model call)", group="rollouts")
    workers: int = option(2, "env worker processes (with --ray: rollout actors, each with its own envs)",
                          group="rollouts")
    ray: str | None = option(None, "Ray cluster address for the rollout workers (--ray [ADDRESS])", cli=False)
    cameras: list[str] | None = option(None, "default: the policy's cameras", group="rollouts")
    image_size: list[int] | None = option(None, "rendered HxW (default: as trained)", group="rollouts")
    visible_goal: bool = option(True, "Meta-World: a larger green goal marker (as the demos were collected)",
                                group="rollouts")
    rollout_seed: int = option(100_000, "group g starts from seed rollout-seed + g", group="rollouts")
    # -- schedule --
    iterations: int | None = option(None, group="schedule")
    minutes: float | None = option(None, "wall-clock budget (checked between iterations)", group="schedule")
    eval_every: int = option(0, "held-out evaluation every k iterations (0 = never; also at start and end)",
                             group="schedule")
    eval_episodes: int = option(10, "per task", group="schedule")
    eval_seed: int | None = option(None, "default: the env's (10000; LIBERO: 0, its official init states)",
                                   group="schedule")
    eval_max_episode_steps: int | None = option(None, "held-out episode cap (default: the env's, as `vla0 eval`)",
                                                aliases=("--eval-max-steps",), group="schedule")
    save_every: int = option(1, "checkpoint every k iterations", group="schedule")
    keep_checkpoints: int = option(2, group="schedule")
    seed: int = option(0, group="schedule")
    resume: bool = option(False, "continue the run in --out from its latest checkpoint", group="schedule")
    device: str | None = option(None, "torch device (default: cuda if available, else cpu)", group="schedule")
    progress: bool = option(True, group="schedule")

    def env_options(self) -> dict:
        """The options of this config that the environment declares (EnvFamily.options)."""
        return {k: getattr(self, k) for k in get_env(self.env).options if hasattr(self, k)}


def check_rl_config(cfg: RLConfig) -> None:
    from vla0.policy.policy import resolve_policy_dir
    family = get_env(cfg.env)
    family.check_tasks(cfg.tasks, cfg.eval_episodes, "vla0 rl")
    if cfg.eval_seed is None:  # resolved here, so rl_config.json records the seeds used
        cfg.eval_seed = 10_000 if family.eval_seed is None else family.eval_seed
    family.check_seeds(cfg.eval_seed, cfg.eval_episodes, cfg.env_options())
    if cfg.group_size < 2:
        raise ValueError(f"--group-size must be >= 2 (GRPO compares rollouts within a group), got {cfg.group_size}")
    if cfg.lr <= 0 or cfg.warmup_steps < 0:
        raise ValueError(f"--lr must be > 0 and --warmup-steps >= 0, got {cfg.lr} and {cfg.warmup_steps}")
    if cfg.groups_per_batch < 1 or cfg.max_groups_factor < 1:
        raise ValueError("--groups-per-batch must be >= 1 and --max-groups-factor >= 1")
    source = PolicyConfig.load(resolve_policy_dir(cfg.policy))
    if source.head == "flow":  # text decoding options mean nothing to the expert's noisy Euler chains
        text_options = [flag for flag, given in (("--temperature", cfg.temperature is not None),
                                                 ("--loss-tokens executed", cfg.loss_tokens != "all"),
                                                 ("--lora-rank", bool(cfg.lora_rank))) if given]
        if text_options:
            raise ValueError(f"--policy {cfg.policy} is a flow-head policy: {', '.join(text_options)} appl"
                             f"{'ies' if len(text_options) == 1 else 'y'} to text decoding; its rollouts explore "
                             "with --flow-noise (the std of each Euler step's noise) and only its expert trains")
        if cfg.flow_noise is not None and cfg.flow_noise <= 0:
            raise ValueError(f"--flow-noise must be > 0 for sampled rollouts, got {cfg.flow_noise}")
    elif cfg.flow_noise is not None:
        raise ValueError(f"--flow-noise applies to flow-head policies; {cfg.policy} is a {source.head}-head policy "
                         "(it samples at --temperature)")
    elif cfg.temperature is not None and cfg.temperature <= 0:
        raise ValueError(f"--temperature must be > 0 for sampled rollouts, got {cfg.temperature}")
    if source.head == "flow":  # defaults resolved here, so rl_config.json records what ran
        cfg.flow_noise = DEFAULT_FLOW_NOISE if cfg.flow_noise is None else cfg.flow_noise
    elif cfg.temperature is None:
        cfg.temperature = 1.6
    if cfg.loss_tokens not in ("all", "executed"):
        raise ValueError(f"--loss-tokens must be 'all' or 'executed', got {cfg.loss_tokens!r}")
    if cfg.loss_agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"--loss-agg must be one of {', '.join(LOSS_AGGREGATIONS)}, got {cfg.loss_agg!r}")
    if not (0 <= cfg.clip_low < 1 and cfg.clip_high >= 0):
        raise ValueError(f"clip bounds must satisfy 0 <= low < 1 and high >= 0, got {cfg.clip_low}, {cfg.clip_high}")
    for name in ("max_episode_steps", "eval_max_episode_steps"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1 (or unset: the per-task table), got {getattr(cfg, name)}")
    if cfg.iterations is None and cfg.minutes is None:
        raise ValueError("give --iterations or --minutes (or both)")
    if cfg.eval_seed + cfg.eval_episodes > cfg.rollout_seed:
        raise ValueError(f"held-out evaluation seeds {cfg.eval_seed}..{cfg.eval_seed + cfg.eval_episodes - 1} must lie "
                         f"below the rollout seeds ({cfg.rollout_seed} upward): raise --rollout-seed")
    out = Path(cfg.out)
    if cfg.resume and latest_checkpoint(out) is None:
        raise FileNotFoundError(f"--resume: no complete checkpoint under {out}/checkpoints")
    if not cfg.resume and (out / "checkpoints").exists():
        raise FileExistsError(f"{out} already holds an RL run; pass --resume to continue it or choose another --out")


class RLTrainer:
    def __init__(self, cfg: RLConfig, pool=None):
        from vla0.policy.policy import load_policy_vlm, resolve_policy_dir
        check_rl_config(cfg)
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.source = resolve_policy_dir(cfg.policy).resolve()
        source_config = PolicyConfig.load(self.source)
        resume_from = latest_checkpoint(self.out) if cfg.resume else None
        full_resume = resume_from is not None and not cfg.lora_rank
        self.flow = source_config.head == "flow"
        if self.flow:  # the frozen VLM and the expert, which is all that trains (vla0.rl.flow)
            vlm, model = load_flow_policy(self.source, source_config, resume_from, self.device)
        else:
            vlm = load_policy_vlm(resume_from if full_resume else self.source, torch.float32, self.device)
            model = vlm.model
        if cfg.lora_rank:
            from peft import LoraConfig, PeftModel, get_peft_model
            if resume_from:
                model = PeftModel.from_pretrained(model, resume_from, is_trainable=True)
            else:
                model = get_peft_model(model, LoraConfig(**self.lora_kwargs()))
        self.vlm = vlm
        self.model = model
        # Execution settings the policy is optimised (and exported) with.
        n_action_steps = cfg.n_action_steps or source_config.n_action_steps
        rl_record = {"source_policy": str(self.source), "config": asdict(cfg),
                     "source_execution": {"n_action_steps": source_config.n_action_steps,
                                          "ensemble": source_config.ensemble}}
        config = dataclasses.replace(source_config, n_action_steps=n_action_steps, ensemble=cfg.ensemble,
                                     training={**source_config.training, "rl": rl_record})
        self.policy_config = config
        self.processor = ActionProcessor(config, vlm.tokenizer, vlm.image_processor)
        settings = RolloutSettings(temperature=cfg.temperature or 0.0, n_action_steps=n_action_steps,
                                   ensemble=cfg.ensemble, max_episode_steps=cfg.max_episode_steps,
                                   batch_envs=cfg.batch_envs, env=cfg.env,
                                   cameras=tuple(cfg.cameras) if cfg.cameras else None,
                                   image_size=tuple(cfg.image_size) if cfg.image_size else None,
                                   env_options={**get_env(cfg.env).training_options, **cfg.env_options()},
                                   flow_noise=cfg.flow_noise or 0.0)
        self.settings = settings
        if cfg.ray is not None:  # rollout workers on Ray actors; they start from the source policy
            from vla0.rl.ray_rollout import RayRolloutWorkers
            self.worker = RayRolloutWorkers(self.source, settings, self.lora_kwargs() if cfg.lora_rank else None,
                                            num_actors=cfg.workers, address=cfg.ray)
        else:
            self.worker = RolloutWorker(vlm.model if self.flow else model, self.processor, settings, pool=pool,
                                        num_workers=cfg.workers, device=self.device,
                                        expert=model if self.flow else None)
        used_rows = min(config.chunk_size, cfg.ensemble * n_action_steps)
        options = dict(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, clip_low=cfg.clip_low,
                       clip_high=cfg.clip_high, epochs=cfg.epochs, minibatches=cfg.minibatches,
                       micro_batch=cfg.micro_batch, max_grad_norm=cfg.max_grad_norm, loss_agg=cfg.loss_agg,
                       warmup_steps=cfg.warmup_steps, seed=cfg.seed, device=self.device)
        if self.flow:
            self.learner = FlowLearner(vlm.model, model, self.processor, cfg.flow_noise, **options)
        else:
            self.learner = Learner(model, self.processor, temperature=cfg.temperature, loss_numbers=(
                used_rows * config.action_dim if cfg.loss_tokens == "executed" else None), **options)
        self.iteration = 0
        self.next_group = 0
        self._saved_at = None
        if resume_from:
            state = torch.load(resume_from / TRAINER_STATE, weights_only=False)
            self.learner.load_state_dict(state["learner"])
            self.iteration, self.next_group = state["iteration"], state["next_group"]
            torch.set_rng_state(state["torch_rng"])
            drop_log_after(self.out / LOG_FILE, "iteration", self.iteration)  # later ones run again
        self.cameras, self.image_size = self.worker.cameras, self.worker.image_size

    def lora_kwargs(self) -> dict:
        cfg = self.cfg
        return dict(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets), lora_dropout=0.0)

    # -- rollouts with dynamic sampling ---------------------------------------------------------
    def collect(self) -> tuple[list[Trajectory], dict]:
        """Dynamic sampling per task: each task fills its own quota of mixed groups (task_quotas),
        launching groups from fresh seeds until it does or its attempt cap (quota x
        --max-groups-factor) is spent. A task that stays short (its groups all succeed or all
        fail) leaves its share empty rather than handing it to another task; every drop is
        counted per task in the log row."""
        cfg = self.cfg
        quotas = task_quotas(cfg.groups_per_batch, cfg.tasks, offset=self.iteration)
        caps = {t: math.ceil(q * cfg.max_groups_factor) for t, q in quotas.items()}
        stats = {t: {"quota": q, "groups_tried": 0, "groups_kept": 0, "all_success": 0, "all_failure": 0,
                     "surplus": 0, "episodes": 0, "successes": 0, "env_steps": 0} for t, q in quotas.items()}
        kept_groups: dict[int, list[Trajectory]] = {}
        rounds, all_trajs = 0, []
        gen = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + self.iteration)
        while True:
            jobs = []
            for task in cfg.tasks:  # one worker call for all tasks: the env slots stay full
                st = stats[task]
                for _ in range(groups_to_launch(st["quota"] - st["groups_kept"], st["groups_kept"],
                                                st["groups_tried"], caps[task])):
                    g = self.next_group
                    self.next_group += 1
                    jobs.append(RolloutJob(g, task, cfg.rollout_seed + g, cfg.group_size))
                    st["groups_tried"] += 1
            if not jobs:
                break
            trajs = self.worker.run(jobs, gen)
            all_trajs += trajs
            rounds += 1
            by_group: dict[int, list[Trajectory]] = {}
            for t in trajs:
                by_group.setdefault(t.group, []).append(t)
            for job in jobs:
                st, rewards = stats[job.task], [t.reward for t in by_group[job.group]]
                outcome = group_outcome(rewards)
                if outcome == "mixed" and st["groups_kept"] < st["quota"]:
                    kept_groups[job.group] = by_group[job.group]
                    st["groups_kept"] += 1
                else:
                    st["surplus" if outcome == "mixed" else outcome] += 1
                st["episodes"] += len(rewards)
                st["successes"] += int(sum(rewards))
                st["env_steps"] += sum(t.length for t in by_group[job.group])
        kept_trajs = [t for ts in kept_groups.values() for t in ts]
        for task, st in stats.items():
            st["success_rate"] = st["successes"] / st["episodes"] if st["episodes"] else None
            # A rollout cap below what successes take turns them into failures (the reward then
            # disagrees with evaluation's longer cap): successes ending in the cap's last tenth say so.
            cap = self.settings.max_episode_steps or get_env(cfg.env).max_episode_steps(task)
            lengths = [t.length for t in all_trajs if t.task == task and t.success]
            st["success_steps_mean"] = float(np.mean(lengths)) if lengths else None
            st["successes_near_cap"] = sum(n > 0.9 * cap for n in lengths) / len(lengths) if lengths else None
        tried = sum(st["groups_tried"] for st in stats.values())
        info = {"rollout_success_rate": float(np.mean([t.reward for t in all_trajs])) if all_trajs else 0.0,
                "rollout_success_by_task": {t: st["success_rate"] for t, st in stats.items() if st["episodes"]},
                "groups_tried": tried, "groups_kept": len(kept_groups),
                "kept_fraction": len(kept_groups) / tried if tried else 0.0, "sampling_rounds": rounds,
                "episodes": len(all_trajs), "env_steps": int(sum(t.length for t in all_trajs)),
                "policy_calls": int(sum(len(t.steps) for t in all_trajs)),
                "by_task": stats,
                # tasks that got no mixed group within their cap: no gradient for them this iteration
                "starved_tasks": [t for t, st in stats.items() if st["groups_kept"] == 0]}
        return kept_trajs, info

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, tag: str) -> dict:
        from vla0.eval.evaluate import evaluate
        from vla0.model.vlm import VLM
        from vla0.policy.policy import VLA0Policy
        cfg = self.cfg
        model, expert = (self.vlm.model, self.model) if self.flow else (self.model, None)
        policy = VLA0Policy(VLM(model, self.vlm.tokenizer, self.vlm.image_processor), self.policy_config,
                            self.device, temperature=0.0, name=f"vla0-rl@{tag}", processor=self.processor,
                            expert=expert)  # a flow head evaluates the plain ODE
        res = evaluate(policy, cfg.tasks, cfg.eval_episodes, seed=cfg.eval_seed, out=self.out / "eval" / tag,
                       env=cfg.env, cameras=self.cameras, image_size=self.image_size, num_workers=cfg.workers,
                       batch_envs=cfg.batch_envs, max_episode_steps=cfg.eval_max_episode_steps, videos=0,
                       progress=False, **cfg.env_options())
        return {"eval_success_rate": res["mean_success_rate"],
                "eval_success_by_task": {t: r["success_rate"] for t, r in res["tasks"].items()}}

    # -- loop -----------------------------------------------------------------------------------
    def train(self) -> Path:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.out / CONFIG_FILE, json.dumps(asdict(cfg), indent=2))
        log_path = self.out / LOG_FILE
        t_start = time.perf_counter()
        last_iter = 0.0
        try:
            if cfg.eval_every and self.iteration == 0:
                t0 = time.perf_counter()
                row = {"iteration": 0, **self.evaluate("iter-0000"), "eval_seconds": time.perf_counter() - t0}
                self._log(log_path, row)
            while True:
                if cfg.iterations is not None and self.iteration >= cfg.iterations:
                    break
                elapsed = time.perf_counter() - t_start
                if cfg.minutes is not None and self.iteration > 0 and elapsed + last_iter > cfg.minutes * 60:
                    break  # the next iteration would overrun the budget
                t_iter = time.perf_counter()
                row = self.step()
                last_iter = time.perf_counter() - t_iter
                row["wall_minutes"] = (time.perf_counter() - t_start) / 60
                self._log(log_path, row)
                if cfg.save_every and self.iteration % cfg.save_every == 0:
                    self.save_checkpoint()
            if cfg.eval_every and self.iteration % cfg.eval_every != 0:
                t0 = time.perf_counter()
                self._log(log_path, {"iteration": self.iteration, **self.evaluate(f"iter-{self.iteration:04d}"),
                                     "eval_seconds": time.perf_counter() - t0})
        finally:
            self.worker.close()
        if self._saved_at != self.iteration:
            self.save_checkpoint()
        try:
            plot_rl_curve(log_path, self.out / "learning_curve.png")
        except Exception as e:  # a plot must never lose a finished run
            print(f"vla0 rl: learning curve not drawn: {e}")
        return self.export_policy()

    def step(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        self.worker.set_weights(self.learner.weights())
        weights_seconds = time.perf_counter() - t0  # to Ray actors through the object store, or a self-copy
        trajs, info = self.collect()
        t1 = time.perf_counter()
        rewards = [t.reward for t in trajs]
        adv = group_advantages(rewards, [t.group for t in trajs]) if trajs else np.zeros(0)
        stats = self.learner.update(trajs, adv) if trajs else {}
        t2 = time.perf_counter()
        self.iteration += 1
        row = {"iteration": self.iteration, **info,
               "mean_abs_advantage": float(np.mean(np.abs(adv))) if len(adv) else 0.0,
               "clip_fraction": stats.get("clip_fraction"), "entropy": stats.get("entropy"),
               "approx_kl": stats.get("approx_kl"), "ratio_mean": stats.get("ratio_mean"),
               "loss": stats.get("loss"), "grad_norm": stats.get("grad_norm"),
               "optimizer_steps": stats.get("optimizer_steps", 0), "update_samples": stats.get("samples", 0),
               "loss_tokens": stats.get("loss_tokens", 0), "lr": stats.get("lr", cfg.lr),
               "rollout_seconds": t1 - t0, "update_seconds": t2 - t1, "weights_seconds": weights_seconds,
               "model_seconds": self.worker.stats["model_seconds"], "env_seconds": self.worker.stats["env_seconds"]}
        row["episode_retries"] = self.worker.stats.get("episode_retries", 0)  # env worker crashes survived
        self.worker.stats.update(model_seconds=0.0, env_seconds=0.0, episode_retries=0)
        if not trajs:
            row["skipped_update"] = "no group with mixed outcomes within the attempt cap"
        if cfg.eval_every and self.iteration % cfg.eval_every == 0:
            t3 = time.perf_counter()
            row.update(self.evaluate(f"iter-{self.iteration:04d}"))
            row["eval_seconds"] = time.perf_counter() - t3
        return row

    def _log(self, path: Path, row: dict) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.cfg.progress:
            keys = ("rollout_success_rate", "kept_fraction", "mean_abs_advantage", "clip_fraction", "entropy",
                    "approx_kl", "rollout_seconds", "update_seconds", "eval_success_rate")
            parts = [f"{k}={row[k]:.3g}" for k in keys if isinstance(row.get(k), (int, float))]
            if len(row.get("by_task", {})) > 1:
                parts += [f"{t}: {st['groups_kept']}/{st['quota']} kept, success {st['success_rate']:.2f}"
                          for t, st in row["by_task"].items() if st["episodes"]]
            near = [t for t, st in row.get("by_task", {}).items() if (st.get("successes_near_cap") or 0) > 0.25]
            if near:
                parts.append(f"WARNING: over a quarter of the successes of {', '.join(near)} end near the rollout cap; "
                             "raise --max-episode-steps or the reward counts slow successes as failures")
            if row.get("starved_tasks"):
                parts.append(f"no mixed group for {', '.join(row['starved_tasks'])}")
            print(f"[rl] iter {row['iteration']}: " + " ".join(parts), flush=True)

    # -- saving ---------------------------------------------------------------------------------
    def _write_policy(self, folder: Path, merged: bool) -> None:
        config = self.policy_config
        model = self.model
        if self.flow:  # checkpoints: the expert, its VLM named by base_model; the export: both, self-contained
            from vla0.policy.flow_head import save_expert
            from vla0.policy.policy import vlm_source
            save_expert(model, folder)
            config = dataclasses.replace(config, base_model=str(vlm_source(self.source, config).resolve()))
            if merged:
                self.vlm.model.save_pretrained(folder)
            self.vlm.save_processor(folder)
            config.save(folder)
            return
        if self.cfg.lora_rank and merged:
            model = copy.deepcopy(model).merge_and_unload()
        elif self.cfg.lora_rank:
            # an adapter loads on top of the policy RL started from
            config = dataclasses.replace(config, base_model=str(self.source))
        model.save_pretrained(folder)
        self.vlm.save_processor(folder)
        config.save(folder)

    def save_checkpoint(self) -> Path:
        def write(tmp: Path) -> None:
            self._write_policy(tmp, merged=False)
            torch.save({"learner": self.learner.state_dict(), "iteration": self.iteration,
                        "next_group": self.next_group, "torch_rng": torch.get_rng_state()}, tmp / TRAINER_STATE)
        folder = save_checkpoint(self.out, self.iteration, write, self.cfg.keep_checkpoints)
        self._saved_at = self.iteration
        return folder

    def export_policy(self) -> Path:
        """OUT/policy: full (LoRA-merged) weights, tokenizer, image processor, vla0_policy.json."""
        return save_folder_atomic(self.out / "policy", lambda tmp: self._write_policy(tmp, merged=True))


def train_rl(cfg: RLConfig, pool=None) -> Path:
    return RLTrainer(cfg, pool=pool).train()
