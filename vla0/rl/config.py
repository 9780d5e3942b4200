"""`vla0 rl`'s options (RLConfig, from which the CLI is generated) and the checks that run on
them before any model or env is loaded (check_rl_config). The loop is vla0.rl.trainer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vla0.config import PolicyConfig
from vla0.envs.base import get_env
from vla0.options import option
from vla0.rl.flow import DEFAULT_FLOW_NOISE
from vla0.rl.learner import LOSS_AGGREGATIONS
from vla0.train.checkpoint import latest_checkpoint

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
