"""Learner role and the RL loop (`vla0 rl`).

Learner: trajectories + advantages in, new weights out. It rebuilds each policy call's prompt
from the stored frames, recomputes the log-probs of the sampled action tokens under the current
weights (teacher forcing, same temperature and grammar mask as the rollout: vla0.rl.sampler),
and takes clipped-surrogate steps (vla0.rl.grpo). No KL term, no reference model.

RLTrainer: the loop. Each iteration: send weights to the rollout worker, collect groups with
dynamic sampling (launch groups of n rollouts from fresh seeds, keep those with mixed outcomes,
repeat until the batch is full or the attempt cap is hit), update, log one JSONL row, maybe
evaluate on held-out seeds, maybe checkpoint (atomic, resumable), and at the end export
OUT/policy, a policy folder like the trainer's.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from vla0.config import PolicyConfig
from vla0.prompt import PromptEncoder
from vla0.rl.grpo import clipped_surrogate, dynamic_sampling, group_advantages, trajectory_token_weights
from vla0.rl.rollout import RolloutJob, RolloutSettings, RolloutWorker, Step, Trajectory, env_render_settings
from vla0.rl.sampler import GrammarSampler
from vla0.policy.grammar import ActionGrammar
from vla0.train.checkpoint import TRAINER_STATE, checkpoint_name, latest_checkpoint, mark_latest, save_atomic

LOG_FILE = "rl_log.jsonl"
LOSS_AGGREGATIONS = ("token-mean", "trajectory-mean")
CONFIG_FILE = "rl_config.json"


# ---------------------------------------------------------------------------------------------
# Learner
# ---------------------------------------------------------------------------------------------
def executed_token_mask(tokens: list[int], grammar: ActionGrammar, numbers: int) -> list[bool]:
    """True for the tokens that write the first `numbers` numbers (their digits and the space
    after each); False for later numbers and the closing <|im_end|>."""
    out, done = [], 0
    for t in tokens:
        out.append(done < numbers and t != grammar.end_id)
        if t == grammar.space_id:
            done += 1
    return out


class Learner:
    """Owns the trainable model and its optimizer; `update` is one GRPO step on a batch."""

    def __init__(self, model, tokenizer, image_processor, config: PolicyConfig, *, lr: float = 5e-6,
                 betas=(0.9, 0.999), weight_decay: float = 0.0, clip_low: float = 0.2, clip_high: float = 0.28,
                 temperature: float = 1.6, epochs: int = 1, minibatches: int = 1, micro_batch: int = 16,
                 max_grad_norm: float = 1.0, loss_numbers: int | None = None, loss_agg: str = "token-mean",
                 seed: int = 0, device: str | torch.device = "cpu"):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.device = torch.device(device)
        self.encoder = PromptEncoder(tokenizer, image_processor, config)
        grammar = ActionGrammar(tokenizer, config.horizon * config.action_dim, config.num_bins)
        self.grammar = grammar
        self.sampler = GrammarSampler(model, tokenizer, grammar)
        self.clip_low, self.clip_high = clip_low, clip_high
        self.temperature = temperature
        self.epochs, self.minibatches, self.micro_batch = epochs, minibatches, micro_batch
        self.max_grad_norm = max_grad_norm
        self.loss_numbers = loss_numbers  # None: every action token; else only the first k numbers
        if loss_agg not in LOSS_AGGREGATIONS:
            raise ValueError(f"loss aggregation must be one of {LOSS_AGGREGATIONS}, got {loss_agg!r}")
        self.loss_agg = loss_agg
        self.rng = np.random.default_rng(seed)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the learner's model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
        self.updates = 0

    def weights(self) -> dict[str, torch.Tensor]:
        """The trainable tensors by name (all weights, or only the LoRA adapters): what a
        RolloutWorker's set_weights takes."""
        return {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}

    def _items(self, trajectories: list[Trajectory], advantages) -> list[tuple[Step, float, float]]:
        """(policy call, advantage, token weight) for every policy call of the batch."""
        weights = np.ones(len(trajectories))
        if self.loss_agg == "trajectory-mean":
            weights = trajectory_token_weights([sum(sum(self._loss_mask(s.tokens)) for s in t.steps)
                                                for t in trajectories])
        return [(s, float(a), float(w)) for t, a, w in zip(trajectories, advantages, weights) for s in t.steps]

    def _loss_mask(self, tokens: list[int]) -> list[bool]:
        if self.loss_numbers is None:
            return [True] * len(tokens)
        return executed_token_mask(tokens, self.grammar, self.loss_numbers)

    def update(self, trajectories: list[Trajectory], advantages) -> dict:
        """GRPO update on `trajectories` (each with its advantage); returns token-weighted stats."""
        items = self._items(trajectories, advantages)
        if not items:
            return {}
        self.model.train()
        totals = {"loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0, "ratio_mean": 0.0, "entropy": 0.0}
        stat_tokens, loss_tokens_seen, grad_norms, steps = 0.0, 0, [], 0
        for _ in range(self.epochs):
            order = self.rng.permutation(len(items))
            for mb in np.array_split(order, min(self.minibatches, len(items))):
                mb_items = [items[i] for i in mb]
                n_loss = sum(sum(self._loss_mask(s.tokens)) for s, _, _ in mb_items)
                if n_loss == 0:
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                for start in range(0, len(mb_items), self.micro_batch):
                    micro = mb_items[start:start + self.micro_batch]
                    out = self._micro_step(micro, n_loss)
                    for k in totals:
                        totals[k] += out[k] * (out["stat_tokens"] if k != "loss" else 1.0)
                    stat_tokens += out["stat_tokens"]
                params = [p for p in self.model.parameters() if p.requires_grad]
                norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm or float("inf"))
                grad_norms.append(float(norm))
                self.optimizer.step()
                loss_tokens_seen += n_loss
                steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        denom = max(stat_tokens, 1.0)
        stats = {k: (v / denom if k != "loss" else v / max(steps, 1)) for k, v in totals.items()}
        stats.update(optimizer_steps=steps, grad_norm=float(np.mean(grad_norms)) if grad_norms else 0.0,
                     loss_tokens=int(loss_tokens_seen / max(self.epochs, 1)), decision_tokens=int(stat_tokens / max(self.epochs, 1)),
                     samples=len(items))
        return stats

    def _micro_step(self, micro: list[tuple[Step, float, float]], n_loss: int) -> dict:
        prompts = [self.encoder.prompt(s.frames, s.instruction) for s, _, _ in micro]
        tokens = [s.tokens for s, _, _ in micro]
        scored = self.sampler.score(prompts, tokens, self.temperature)
        dev, dtype = scored.logprobs.device, scored.logprobs.dtype
        old = torch.tensor([lp for s, _, _ in micro for lp in s.logprobs], device=dev, dtype=dtype)
        adv = torch.tensor([a for s, a, _ in micro for _ in s.tokens], device=dev, dtype=dtype)
        weights = torch.tensor([w for s, _, w in micro for _ in s.tokens], device=dev, dtype=dtype)
        loss_mask = torch.tensor([m for s, _, _ in micro for m in self._loss_mask(s.tokens)], device=dev)
        decision = loss_mask & (scored.choices > 1)  # forced tokens: log-prob 0, ratio 1, nothing to report
        loss, st = clipped_surrogate(scored.logprobs, old, adv, loss_mask, self.clip_low, self.clip_high,
                                     num_tokens=n_loss, stats_mask=decision, weights=weights)
        loss.backward()
        n = float(decision.sum())
        ent = float((scored.entropy * decision).sum() / max(n, 1.0))
        return {"loss": float(loss.detach()), "clip_fraction": st["clip_fraction"], "approx_kl": st["approx_kl"],
                "ratio_mean": st["ratio_mean"], "entropy": ent, "stat_tokens": n}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "updates": self.updates, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = state["updates"]
        self.rng.bit_generator.state = state["rng"]


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
@dataclass
class RLConfig:
    policy: str  # supervised policy or run folder to start from
    tasks: list[str]
    out: str
    env: str = "metaworld"
    # GRPO (SimpleVLA-RL defaults)
    group_size: int = 8  # rollouts per group (same task, same seed)
    groups_per_batch: int = 64  # informative groups per update
    max_groups_factor: float = 4.0  # dynamic sampling gives up after trying this many x groups_per_batch
    temperature: float = 1.6
    lr: float = 5e-6
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    clip_low: float = 0.2
    clip_high: float = 0.28
    epochs: int = 1  # passes over each batch
    minibatches: int = 1  # optimizer steps per pass
    micro_batch: int = 16  # policy calls per forward/backward (memory only)
    max_grad_norm: float = 1.0
    loss_tokens: str = "all"  # "all" action tokens, or "executed": only numbers that reach the env
    loss_agg: str = "token-mean"  # or "trajectory-mean": every trajectory weighs the same (vla0.rl.grpo)
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: int = 16
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # rollouts
    action_horizon: int | None = None  # steps executed per chunk; None: the policy's own setting
    ensemble: int = 1  # temporal ensembling during rollouts (1 = off)
    max_steps: int | None = None
    batch_envs: int = 16
    workers: int = 2
    cameras: list[str] | None = None
    image_size: list[int] | None = None
    visible_goal: bool = True
    rollout_seed: int = 100_000  # group g starts from seed rollout_seed + g
    # schedule
    iterations: int | None = None
    minutes: float | None = None  # wall-clock budget for this process's iterations
    eval_every: int = 0  # held-out evaluation every k iterations (0 = never; also at start and end)
    eval_episodes: int = 10
    eval_seed: int = 10_000
    save_every: int = 1
    keep_checkpoints: int = 2
    seed: int = 0
    resume: bool = False
    device: str | None = None
    progress: bool = True


def check_rl_config(cfg: RLConfig) -> None:
    from vla0.policy.policy import resolve_policy_dir
    from vla0.sim.metaworld_env import check_task
    if cfg.env != "metaworld":
        raise ValueError(f"unknown --env {cfg.env!r}; available: metaworld")
    if not cfg.tasks:
        raise ValueError("give at least one task (--tasks)")
    for t in cfg.tasks:
        check_task(t)
    if cfg.group_size < 2:
        raise ValueError(f"--group-size must be >= 2 (GRPO compares rollouts within a group), got {cfg.group_size}")
    if cfg.groups_per_batch < 1 or cfg.max_groups_factor < 1:
        raise ValueError("--groups-per-batch must be >= 1 and --max-groups-factor >= 1")
    if cfg.temperature <= 0:
        raise ValueError(f"--temperature must be > 0 for sampled rollouts, got {cfg.temperature}")
    if cfg.loss_tokens not in ("all", "executed"):
        raise ValueError(f"--loss-tokens must be 'all' or 'executed', got {cfg.loss_tokens!r}")
    if cfg.loss_agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"--loss-agg must be one of {', '.join(LOSS_AGGREGATIONS)}, got {cfg.loss_agg!r}")
    if not (0 <= cfg.clip_low < 1 and cfg.clip_high >= 0):
        raise ValueError(f"clip bounds must satisfy 0 <= low < 1 and high >= 0, got {cfg.clip_low}, {cfg.clip_high}")
    if cfg.iterations is None and cfg.minutes is None:
        raise ValueError("give --iterations or --minutes (or both)")
    if cfg.eval_seed + cfg.eval_episodes > cfg.rollout_seed:
        raise ValueError(f"held-out evaluation seeds {cfg.eval_seed}..{cfg.eval_seed + cfg.eval_episodes - 1} must lie "
                         f"below the rollout seeds ({cfg.rollout_seed} upward): raise --rollout-seed")
    resolve_policy_dir(cfg.policy)
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
        self.action_horizon = cfg.action_horizon or source_config.action_horizon
        config = copy.deepcopy(source_config)
        config.action_horizon, config.ensemble = self.action_horizon, cfg.ensemble
        config.extra = {**config.extra, "rl": {"source_policy": str(self.source), "config": asdict(cfg),
                                               "source_execution": {"action_horizon": source_config.action_horizon,
                                                                    "ensemble": source_config.ensemble}}}
        self.policy_config = config
        settings = RolloutSettings(temperature=cfg.temperature, action_horizon=self.action_horizon,
                                   ensemble=cfg.ensemble, max_steps=cfg.max_steps, batch_envs=cfg.batch_envs,
                                   cameras=tuple(cfg.cameras) if cfg.cameras else None,
                                   image_size=tuple(cfg.image_size) if cfg.image_size else None,
                                   visible_goal=cfg.visible_goal)
        self.settings = settings
        self.worker = RolloutWorker(model, vlm.tokenizer, vlm.image_processor, config, settings, pool=pool,
                                    num_workers=cfg.workers, device=self.device)
        used_rows = min(config.horizon, cfg.ensemble * self.action_horizon)
        self.learner = Learner(model, vlm.tokenizer, vlm.image_processor, config, lr=cfg.lr, betas=cfg.betas,
                               weight_decay=cfg.weight_decay, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                               temperature=cfg.temperature, epochs=cfg.epochs, minibatches=cfg.minibatches,
                               micro_batch=cfg.micro_batch, max_grad_norm=cfg.max_grad_norm,
                               loss_numbers=used_rows * config.action_dim if cfg.loss_tokens == "executed" else None,
                               loss_agg=cfg.loss_agg,
                               seed=cfg.seed, device=self.device)
        self.iteration = 0
        self.next_group = 0
        self._saved_at = None
        if resume_from:
            state = torch.load(resume_from / TRAINER_STATE, weights_only=False)
            self.learner.load_state_dict(state["learner"])
            self.iteration, self.next_group = state["iteration"], state["next_group"]
            torch.set_rng_state(state["torch_rng"])
        self.cameras, self.image_size = env_render_settings(config, settings)

    def lora_kwargs(self) -> dict:
        cfg = self.cfg
        return dict(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets), lora_dropout=0.0)

    # -- rollouts with dynamic sampling ---------------------------------------------------------
    def collect(self) -> tuple[list[Trajectory], dict]:
        cfg = self.cfg
        cap = math.ceil(cfg.groups_per_batch * cfg.max_groups_factor)
        kept_groups: dict[int, list[Trajectory]] = {}
        tried, rounds, all_trajs = 0, 0, []
        kept_rate = 1.0
        gen = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + self.iteration)
        while len(kept_groups) < cfg.groups_per_batch and tried < cap:
            deficit = cfg.groups_per_batch - len(kept_groups)
            # launch enough groups to fill the deficit at the kept rate seen so far (fills env slots too)
            launch = min(cap - tried, max(deficit, math.ceil(deficit / max(kept_rate, 0.25))))
            jobs = []
            for _ in range(launch):
                g = self.next_group
                self.next_group += 1
                jobs.append(RolloutJob(g, cfg.tasks[g % len(cfg.tasks)], cfg.rollout_seed + g, cfg.group_size))
            trajs = self.worker.run(jobs, gen)
            all_trajs += trajs
            tried += launch
            rounds += 1
            by_group: dict[int, list[Trajectory]] = {}
            for t in trajs:
                by_group.setdefault(t.group, []).append(t)
            kept, _ = dynamic_sampling({g: [t.reward for t in ts] for g, ts in by_group.items()},
                                       target=cfg.groups_per_batch - len(kept_groups))
            for g in kept:
                kept_groups[g] = by_group[g]
            kept_rate = max(len(kept_groups), 1e-9) / tried if kept_groups else 0.0
        kept_trajs = [t for ts in kept_groups.values() for t in ts]
        per_task = {}
        for task in cfg.tasks:
            rs = [t.reward for t in all_trajs if t.task == task]
            if rs:
                per_task[task] = float(np.mean(rs))
        info = {"rollout_success_rate": float(np.mean([t.reward for t in all_trajs])) if all_trajs else 0.0,
                "rollout_success_by_task": per_task,
                "groups_tried": tried, "groups_kept": len(kept_groups),
                "kept_fraction": len(kept_groups) / tried if tried else 0.0, "sampling_rounds": rounds,
                "episodes": len(all_trajs), "env_steps": int(sum(t.length for t in all_trajs)),
                "policy_calls": int(sum(len(t.steps) for t in all_trajs))}
        return kept_trajs, info

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, tag: str) -> dict:
        from vla0.eval.evaluate import evaluate
        from vla0.model.vlm import VLM
        from vla0.policy.policy import VLA0Policy
        cfg = self.cfg
        policy = VLA0Policy(VLM(self.model, self.vlm.tokenizer, self.vlm.image_processor), self.policy_config,
                            self.device, temperature=0.0, name=f"vla0-rl@{tag}")
        res = evaluate(policy, cfg.tasks, cfg.eval_episodes, seed=cfg.eval_seed, out=self.out / "eval" / tag,
                       cameras=self.cameras, image_size=self.image_size, num_workers=cfg.workers,
                       batch_envs=cfg.batch_envs, max_steps=cfg.max_steps, videos=0, progress=False,
                       visible_goal=cfg.visible_goal)
        return {"eval_success_rate": res["mean_success_rate"],
                "eval_success_by_task": {t: r["success_rate"] for t, r in res["tasks"].items()}}

    # -- loop -----------------------------------------------------------------------------------
    def train(self) -> Path:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=2))
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
               "loss_tokens": stats.get("loss_tokens", 0), "lr": cfg.lr,
               "rollout_seconds": t1 - t0, "update_seconds": t2 - t1,
               "model_seconds": self.worker.stats["model_seconds"], "env_seconds": self.worker.stats["env_seconds"]}
        self.worker.stats.update(model_seconds=0.0, env_seconds=0.0)
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
            print(f"[rl] iter {row['iteration']}: " + " ".join(parts), flush=True)

    # -- saving ---------------------------------------------------------------------------------
    def _write_policy(self, folder: Path, merged: bool) -> None:
        config = copy.deepcopy(self.policy_config)
        model = self.model
        if self.cfg.lora_rank and merged:
            model = copy.deepcopy(model).merge_and_unload()
        elif self.cfg.lora_rank:
            config.base_model = str(self.source)  # an adapter loads on top of the policy RL started from
        model.save_pretrained(folder)
        self.vlm.save_processor(folder)
        config.save(folder)

    def save_checkpoint(self) -> Path:
        def write(tmp: Path) -> None:
            self._write_policy(tmp, merged=False)
            torch.save({"learner": self.learner.state_dict(), "iteration": self.iteration,
                        "next_group": self.next_group, "torch_rng": torch.get_rng_state()}, tmp / TRAINER_STATE)
        folder = save_atomic(self.out / "checkpoints" / checkpoint_name(self.iteration), write)
        mark_latest(self.out, folder, self.cfg.keep_checkpoints)
        self._saved_at = self.iteration
        return folder

    def export_policy(self) -> Path:
        """OUT/policy: full (LoRA-merged) weights, tokenizer, image processor, vla0_policy.json."""
        return save_atomic(self.out / "policy", lambda tmp: self._write_policy(tmp, merged=True))


def train_rl(cfg: RLConfig, pool=None) -> Path:
    return RLTrainer(cfg, pool=pool).train()


# ---------------------------------------------------------------------------------------------
# Learning curve
# ---------------------------------------------------------------------------------------------
def plot_rl_curve(log: Path, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    train = [r for r in rows if "rollout_success_rate" in r]
    evals = [r for r in rows if "eval_success_rate" in r]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    ax = axes[0, 0]
    if train:
        ax.plot([r["iteration"] for r in train], [r["rollout_success_rate"] for r in train], "o-", label="rollouts (sampled)")
    if evals:
        ax.plot([r["iteration"] for r in evals], [r["eval_success_rate"] for r in evals], "s-", label="held-out (greedy)")
    ax.set(xlabel="iteration", ylabel="success rate", ylim=(-0.02, 1.02), title="success")
    ax.legend()
    ax = axes[0, 1]
    if train:
        it = [r["iteration"] for r in train]
        ax.plot(it, [r["kept_fraction"] for r in train], "o-", label="groups kept")
        ax.plot(it, [r["mean_abs_advantage"] for r in train], "^-", label="mean |advantage|")
    ax.set(xlabel="iteration", title="dynamic sampling")
    ax.legend()
    ax = axes[1, 0]
    upd = [r for r in train if r.get("entropy") is not None]
    if upd:
        it = [r["iteration"] for r in upd]
        ax.plot(it, [r["entropy"] for r in upd], "o-", label="entropy (nats)")
        ax.plot(it, [r["clip_fraction"] for r in upd], "^-", label="clip fraction")
        ax.plot(it, [r["approx_kl"] for r in upd], "s-", label="approx KL to rollout policy")
    ax.set(xlabel="iteration", title="update")
    ax.legend()
    ax = axes[1, 1]
    if train:
        it = np.array([r["iteration"] for r in train])
        ro = np.array([r["rollout_seconds"] for r in train])
        up = np.array([r["update_seconds"] for r in train])
        ax.bar(it, ro, label="rollout")
        ax.bar(it, up, bottom=ro, label="update")
    ax.set(xlabel="iteration", ylabel="seconds", title="wall time per iteration")
    ax.legend()
    fig.suptitle("vla0 rl (GRPO)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
