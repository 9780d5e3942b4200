"""The RL loop behind `vla0 rl`: RLTrainer, train_rl (options and checks: vla0.rl.config).

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
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from vla0.config import PolicyConfig
from vla0.envs.base import get_env
from vla0.io import save_folder_atomic, write_text_atomic
from vla0.processor import ActionProcessor
from vla0.rl.config import CONFIG_FILE, LOG_FILE, RLConfig, check_rl_config  # noqa: F401 (re-exported)
from vla0.rl.curves import plot_rl_curve
from vla0.rl.flow import FlowLearner, load_flow_policy
from vla0.rl.grpo import group_advantages, group_outcome, groups_to_launch, task_quotas
from vla0.rl.learner import Learner
from vla0.rl.rollout import RolloutJob, RolloutSettings, RolloutWorker, Trajectory
from vla0.train.checkpoint import TRAINER_STATE, drop_log_after, latest_checkpoint, save_checkpoint

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
        if "actor_restarts" in self.worker.stats:  # Ray rollout actors that died and played their share again
            row["actor_restarts"] = self.worker.stats["actor_restarts"]
            self.worker.stats["actor_restarts"] = 0
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
