"""Rollout role: policy weights + (task, seed) jobs in, trajectories out.

A RolloutWorker owns a policy (sampling at the rollout temperature under the action grammar)
and a pool of environments. `run(jobs)` plays every job's n rollouts (a GRPO group: same task,
same seed, hence the same initial state) through the episode runner (vla0.envs.runner), the
policy executing chunks as at inference (`n_action_steps` of each, or temporal ensembling), and
records for each policy call the camera frames, the instruction, the sampled tokens and their
log-probs. Trajectories hold raw uint8 frames, not pixel tensors (several times smaller to keep
or to ship between machines); the learner rebuilds the identical prompt from them
(inference-time centre crop, deterministic).

Nothing here knows about the learner: weights arrive through `set_weights` (a state dict of the
trainable tensors), so a worker can live in another process or on another machine (see
docs/rl.md for the Ray mapping).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from vla0.config import PolicyConfig
from vla0.envs.base import get_env
from vla0.envs.runner import EpisodeJob, EpisodeResult, EpisodeRunner
from vla0.model.vlm import VLM
from vla0.policy.policy import VLA0Policy
from vla0.processor import ActionProcessor


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
    tokens: list[int]  # the sampled action text, ending with <|im_end|> (flow head: empty)
    logprobs: list[float]  # per token, under the masked tempered rollout distribution (flow head: per Euler step)
    chain: np.ndarray | None = None  # flow head: the sampled noisy Euler chain x_0..x_K, (K+1, H, D) float32
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # flow head: the expert's extra inputs


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
    n_action_steps: int | None = None  # steps executed per chunk; None: the policy's own setting
    ensemble: int = 1  # temporal ensembling during rollouts (1 = off)
    ensemble_decay: float = 0.0
    max_episode_steps: int | None = None  # None: the task's default (EnvFamily.max_episode_steps)
    batch_envs: int = 16  # episodes in lockstep (one batched model call)
    env: str = "metaworld"
    cameras: tuple[str, ...] | None = None  # env cameras to render; None: the policy's
    image_size: tuple[int, int] | None = None  # rendered size; None: what the policy was trained on
    env_options: dict = field(default_factory=dict)  # adapter options (Meta-World: visible_goal)
    flow_noise: float = 0.1  # flow head: noise std per Euler step (normalised action units); text: unused


def render_settings(config: PolicyConfig, cameras=None, image_size=None) -> tuple[tuple[str, ...], tuple[int, int]]:
    """Cameras and frame size to render for a policy: what it was trained on unless told otherwise."""
    cameras = tuple(cameras or config.cameras)
    size = tuple(image_size or next(iter(config.camera_shapes.values()), (64, 64)))
    return cameras, (int(size[0]), int(size[1]))


class RolloutWorker:
    """Plays rollouts with its own policy. In one process the learner's model can be passed in
    directly (then set_weights is a cheap self-copy)."""

    def __init__(self, model, processor: ActionProcessor, settings: RolloutSettings, pool=None,
                 num_workers: int = 2, device: str | torch.device = "cpu", expert=None):
        """expert: a flow-head policy's action expert; then `model` is its frozen VLM, the expert
        is what set_weights loads and the rollouts sample noisy Euler chains (settings.flow_noise)."""
        self.model = expert if expert is not None else model  # the trainable part
        self.settings = settings
        config = dataclasses.replace(processor.config, n_action_steps=settings.n_action_steps or processor.config.n_action_steps,
                                     ensemble=settings.ensemble, ensemble_decay=settings.ensemble_decay)
        self.config = config
        self.policy = VLA0Policy(VLM(model, processor.tokenizer, processor.image_processor), config, device,
                                 temperature=0.0 if expert is not None else settings.temperature, name="rollout",
                                 processor=processor, expert=expert)
        if expert is not None:
            model.eval()
            self.policy.flow_noise = settings.flow_noise
        self.policy.on_chunk = self._record
        self.family = get_env(settings.env)
        self.family.check_action_dim(config.action_dim, "the policy")
        self.cameras, self.image_size = render_settings(config, settings.cameras, settings.image_size)
        missing = [c for c in config.cameras if c not in self.cameras]
        if missing:
            raise ValueError(f"the policy reads camera(s) {missing}, which the rollout envs would not render")
        self._pool = pool
        self._own_pool = pool is None
        self._num_workers = num_workers
        self._steps: dict[int, list[Step]] = {}  # slot -> the running episode's policy calls
        self.stats = {"policy_calls": 0, "model_seconds": 0.0, "env_seconds": 0.0, "episode_retries": 0}

    @classmethod
    def from_policy(cls, path, settings: RolloutSettings, lora: dict | None = None, pool=None, num_workers: int = 2,
                    device: str = "cpu") -> "RolloutWorker":
        """A standalone worker (another process or machine): load the policy folder, wrap it in
        the learner's LoRA layout if any, then receive weights through set_weights."""
        from vla0.policy.policy import load_policy_vlm, resolve_policy_dir, vlm_source
        folder = resolve_policy_dir(path)
        config = PolicyConfig.load(folder)
        vlm = load_policy_vlm(vlm_source(folder, config), torch.float32, device)
        model = vlm.model
        if lora:
            from peft import LoraConfig, get_peft_model
            model = get_peft_model(model, LoraConfig(**lora))
        expert = None
        if config.head == "flow":
            from vla0.policy.flow_head import load_expert
            expert = load_expert(config, folder, device)
        processor = ActionProcessor(config, vlm.tokenizer, vlm.image_processor)
        return cls(model, processor, settings, pool=pool, num_workers=num_workers, device=device, expert=expert)

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
        if self.policy.decoder is not None:
            self.policy.decoder.reset()

    # -- environments ---------------------------------------------------------------------------
    @property
    def pool(self):
        if self._pool is None:
            from vla0.envs.pool import EnvPool
            self._pool = EnvPool(self._num_workers)
        return self._pool

    def close(self) -> None:
        if self._own_pool and self._pool is not None:
            self._pool.close()
            self._pool = None

    # -- rollouts -------------------------------------------------------------------------------
    def run(self, jobs: list[RolloutJob], generator: torch.Generator | None = None) -> list[Trajectory]:
        """All rollouts of all jobs; returned grouped by job, rollouts in index order."""
        self.model.eval()
        s = self.settings
        specs = {t: self.family.spec(t, self.cameras, self.image_size, s.max_episode_steps, **s.env_options)
                 for t in {job.task for job in jobs}}
        episodes = [EpisodeJob(specs[job.task], job.seed, tag=(job, k)) for job in jobs for k in range(job.n)]
        if not episodes:
            return []
        self.policy.generator = generator
        trajectories: list[Trajectory | None] = [None] * len(episodes)

        def on_end(res: EpisodeResult) -> None:
            job, k = res.job.tag
            trajectories[res.index] = Trajectory(job.group, job.task, job.seed, k, res.success, res.steps,
                                                 self._steps.pop(res.slot, []))

        runner = EpisodeRunner(_TimedPool(self.pool, self.stats), s.batch_envs, self.family.action_dim)
        self._steps.clear()
        runner.run(episodes, _Timed(self.policy, self.stats), on_end=on_end, on_retry=self._forget)
        self.stats["episode_retries"] += runner.retries
        return trajectories  # type: ignore[return-value]

    def _forget(self, slot: int, _job) -> None:
        """The episode in `slot` lost its env (worker crash) and starts again: drop its calls."""
        self._steps.pop(slot, None)

    def _record(self, slot: int, frames, task: str, tokens: list[int], logprobs: list[float], chain=None,
                inputs=None) -> None:
        frames = [np.array(f, dtype=np.uint8) for f in frames]
        self._steps.setdefault(slot, []).append(Step(frames, task, tokens, logprobs, chain, dict(inputs or {})))


class _Timed:
    """The rollout policy, its model time and calls counted into stats."""

    def __init__(self, policy: VLA0Policy, stats: dict):
        self.policy, self.stats = policy, stats
        self.name, self.needs_images = policy.name, True

    def reset(self, env_ids=None) -> None:
        self.policy.reset(env_ids)

    def needs_observation(self, env_ids):
        return self.policy.needs_observation(env_ids)

    def select_action(self, obs, env_ids):
        calls = sum(self.policy.needs_observation(env_ids))
        t0 = time.perf_counter()
        actions = self.policy.select_action(obs, env_ids)
        self.stats["model_seconds"] += time.perf_counter() - t0
        self.stats["policy_calls"] += calls
        return actions


class _TimedPool:
    """The env pool, its reset and step time added to stats["env_seconds"]."""

    def __init__(self, pool, stats: dict):
        self.pool, self.stats = pool, stats

    def _timed(self, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.stats["env_seconds"] += time.perf_counter() - t0

    def reset(self, *args, **kwargs):
        return self._timed(self.pool.reset, *args, **kwargs)

    def step(self, *args, **kwargs):
        return self._timed(self.pool.step, *args, **kwargs)
