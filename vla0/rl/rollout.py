"""Rollout role: policy weights + (task, seed) jobs in, trajectories out.

A RolloutWorker owns a copy of the policy model and a pool of environments. `run(jobs)` plays
every job's n rollouts (a GRPO group: same task, same seed, hence the same initial state) in
lockstep over the pool's slots, sampling one action chunk per policy call at the rollout
temperature under the digit grammar (vla0.rl.sampler), executing `action_horizon` of its steps
(or, if ensemble > 1, temporal ensembling as at inference), and recording for each call the
camera frames, the instruction, the sampled tokens and their log-probs. Trajectories hold raw
uint8 frames, not pixel tensors (several times smaller to keep or to ship between machines);
the learner rebuilds the identical prompt from them (inference-time centre crop, deterministic).

Nothing here knows about the learner: weights arrive through `set_weights` (a state dict of
the trainable tensors), so a worker can live in another process or on another machine (see
docs/rl.md for the Ray mapping).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from vla0.codec import ActionCodec
from vla0.config import PolicyConfig
from vla0.ensemble import TemporalEnsembler, check_execution
from vla0.eval.evaluate import batch_obs
from vla0.policy.grammar import ActionGrammar
from vla0.prompt import PromptEncoder
from vla0.rl.sampler import GrammarSampler


@dataclass
class RolloutJob:
    """One GRPO group: `n` rollouts of `task` from the initial state drawn by `seed`."""
    group: int
    task: str
    seed: int
    n: int


@dataclass
class Step:
    """One policy call: what the model saw, what it wrote, and the log-probs it wrote it with."""
    frames: list[np.ndarray]  # uint8 (h, w, 3), one per policy camera, in config.cameras order
    instruction: str
    tokens: list[int]  # the sampled action text, ending with <|im_end|>
    logprobs: list[float]  # per token, under the masked tempered rollout distribution


@dataclass
class Trajectory:
    group: int
    task: str
    seed: int
    index: int  # rollout number within the group
    success: bool
    length: int  # env steps
    steps: list[Step] = field(default_factory=list)

    @property
    def reward(self) -> float:
        return 1.0 if self.success else 0.0

    @property
    def num_tokens(self) -> int:
        return sum(len(s.tokens) for s in self.steps)


@dataclass
class RolloutSettings:
    temperature: float = 1.6
    action_horizon: int | None = None  # steps executed per chunk; None: the whole chunk (H)
    ensemble: int = 1  # temporal ensembling during rollouts (1 = off)
    ensemble_decay: float = 0.0
    max_steps: int | None = None  # episode cap; None: the task's default (vla0.sim.metaworld_env)
    batch_envs: int = 16  # episodes in lockstep (one batched model call)
    cameras: tuple[str, ...] | None = None  # env cameras to render; None: the policy's
    image_size: tuple[int, int] | None = None  # rendered size; None: what the policy was trained on
    visible_goal: bool = True


def env_render_settings(config: PolicyConfig, settings: RolloutSettings) -> tuple[tuple[str, ...], tuple[int, int]]:
    """Cameras and frame size to render, as `vla0 eval` picks them for a policy."""
    shapes = config.extra.get("camera_shapes", {})
    cameras = tuple(settings.cameras or config.cameras)
    size = tuple(settings.image_size or next(iter(shapes.values()), (64, 64)))
    return cameras, (int(size[0]), int(size[1]))


class RolloutWorker:
    """Plays rollouts with its own copy of the policy. In one process the learner's model can
    be passed in directly (then set_weights is a cheap self-copy)."""

    def __init__(self, model, tokenizer, image_processor, config: PolicyConfig, settings: RolloutSettings,
                 pool=None, num_workers: int = 2, device: str | torch.device = "cpu"):
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.config = config
        self.settings = settings
        self.device = torch.device(device)
        self.encoder = PromptEncoder(tokenizer, image_processor, config)
        self.codec = ActionCodec.from_stats(config.action_stats, config.horizon, config.num_bins, config.normalization)
        self.grammar = ActionGrammar(tokenizer, self.codec.num_values, config.num_bins)
        self.sampler = GrammarSampler(model, tokenizer, self.grammar)
        self.bounds = (np.asarray(config.action_stats["min"], np.float32), np.asarray(config.action_stats["max"], np.float32))
        self.action_horizon = settings.action_horizon or config.horizon
        check_execution(self.action_horizon, settings.ensemble, config.horizon)
        self.cameras, self.image_size = env_render_settings(config, settings)
        missing = [c for c in config.cameras if c not in self.cameras]
        if missing:
            raise ValueError(f"the policy reads camera(s) {missing}, which the rollout envs would not render")
        self._pool = pool
        self._own_pool = pool is None
        self._num_workers = num_workers
        self.stats = {"policy_calls": 0, "model_seconds": 0.0, "env_seconds": 0.0}

    @classmethod
    def from_policy(cls, path, settings: RolloutSettings, lora: dict | None = None, pool=None, num_workers: int = 2,
                    device: str = "cpu") -> "RolloutWorker":
        """A standalone worker (another process or machine): load the policy folder, wrap it in
        the learner's LoRA layout if any, then receive weights through set_weights."""
        from vla0.policy.policy import load_policy_vlm, resolve_policy_dir
        folder = resolve_policy_dir(path)
        config = PolicyConfig.load(folder)
        vlm = load_policy_vlm(folder, torch.float32, device)
        model = vlm.model
        if lora:
            from peft import LoraConfig, get_peft_model
            model = get_peft_model(model, LoraConfig(**lora))
        return cls(model, vlm.tokenizer, vlm.image_processor, config, settings, pool=pool, num_workers=num_workers,
                   device=device)

    # -- weights --------------------------------------------------------------------------------
    @torch.no_grad()
    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load the learner's trainable tensors (names as in model.named_parameters())."""
        params = dict(self.model.named_parameters())
        unknown = [k for k in weights if k not in params]
        if unknown:
            raise KeyError(f"set_weights: {len(unknown)} unknown tensor(s), e.g. {unknown[:3]}")
        for name, value in weights.items():
            if params[name].data_ptr() != value.data_ptr():
                params[name].copy_(value.to(params[name].device, params[name].dtype))

    # -- environments ---------------------------------------------------------------------------
    @property
    def pool(self):
        if self._pool is None:
            from vla0.sim.parallel import EnvPool
            self._pool = EnvPool(self._num_workers)
        return self._pool

    def close(self) -> None:
        if self._own_pool and self._pool is not None:
            self._pool.close()
            self._pool = None

    def _spec(self, task: str):
        from vla0.sim.metaworld_env import EnvSpec
        return EnvSpec(task, self.cameras, self.image_size, self.settings.max_steps, self.settings.visible_goal)

    # -- rollouts -------------------------------------------------------------------------------
    def run(self, jobs: list[RolloutJob], generator: torch.Generator | None = None) -> list[Trajectory]:
        """All rollouts of all jobs; returned grouped by job, rollouts in index order."""
        self.model.eval()
        episodes = [(job, k) for job in jobs for k in range(job.n)]
        if not episodes:
            return []
        results: list[Trajectory | None] = [None] * len(episodes)
        ensembler = TemporalEnsembler(self.settings.ensemble, self.settings.ensemble_decay, self.action_horizon)
        keys = self.config.image_keys
        active: dict[int, dict] = {}  # slot -> {"ep", "obs", "traj"}
        pending = list(range(len(episodes)))
        slot_task: dict[int, str] = {}
        pool = self.pool

        def start(slot: int) -> None:
            # a slot keeps its env while the task stays the same (building one costs ~1 s)
            e = next((i for i in pending if episodes[i][0].task == slot_task.get(slot)), pending[0])
            pending.remove(e)
            job, k = episodes[e]
            slot_task[slot] = job.task
            ensembler.reset([slot])
            t0 = time.perf_counter()
            obs = pool.reset([self._spec(job.task)], [job.seed], ids=[slot])[0]
            self.stats["env_seconds"] += time.perf_counter() - t0
            active[slot] = {"ep": e, "obs": obs, "traj": Trajectory(job.group, job.task, job.seed, k, False, 0)}

        for slot in range(min(self.settings.batch_envs, len(episodes))):
            start(slot)
        while active:
            ids = sorted(active)
            stale = [s for s in ids if ensembler.needs_chunk(s)]
            if stale:
                self._act(stale, active, ensembler, keys, generator)
            actions = [np.clip(ensembler.pop(s), *self.bounds) for s in ids]
            # Render only the frames a policy call will read: with chunks executed open loop
            # most steps need none (rendering is most of an env step).
            render = [ensembler.needs_chunk(s) for s in ids]
            t0 = time.perf_counter()
            out = pool.step(actions, ids=ids, render=render)
            self.stats["env_seconds"] += time.perf_counter() - t0
            for slot, (obs, _, term, trunc, info) in zip(ids, out):
                ep = active[slot]
                ep["obs"] = obs
                ep["traj"].length += 1
                if not (term or trunc):
                    continue
                ep["traj"].success = bool(info["success"])
                results[ep["ep"]] = ep["traj"]
                del active[slot]
                if pending:
                    start(slot)
        return results  # type: ignore[return-value]

    def _act(self, slots: list[int], active: dict, ensembler: TemporalEnsembler, keys: list[str], generator) -> None:
        obs = batch_obs([active[s]["obs"] for s in slots], [active[s]["traj"].task for s in slots])
        frames = [[np.array(obs[k][j], dtype=np.uint8) for k in keys] for j in range(len(slots))]
        prompts = [self.encoder.prompt(f, obs["task"][j]) for j, f in enumerate(frames)]
        t0 = time.perf_counter()
        samples = self.sampler.sample(prompts, self.settings.temperature, generator)
        self.stats["model_seconds"] += time.perf_counter() - t0
        self.stats["policy_calls"] += len(slots)
        texts = self.tokenizer.batch_decode([s.tokens for s in samples], skip_special_tokens=True)
        for j, (slot, sample, text) in enumerate(zip(slots, samples, texts)):
            chunk = np.clip(self.codec.decode(text).actions, *self.bounds)
            ep = active[slot]
            ep["traj"].steps.append(Step(frames[j], obs["task"][j], sample.tokens, sample.logprobs))
            ensembler.add(slot, chunk)
