"""The flow head: a small transformer "action expert" that reads a frozen VLM and writes
continuous action chunks by flow matching (pi0 / SmolVLA), the stage-2 policy next to text actions.

    prompt (images + instruction) --frozen VLM, one forward, no grad--> hidden states of chosen layers
    noisy chunk x_t + time embedding --expert blocks: self-attention over the H action tokens,
    cross-attention to the VLM states, MLP--> velocity (H, D)

Flow matching, in the policy's normalised action space ([-1, 1] per dimension from the dataset's
statistics): x_t = t * noise + (1 - t) * actions, the expert regresses the velocity
noise - actions (MSE), t ~ Beta(1.5, 1) scaled into (0.001, 1] (pi0 leans on the noisy end).
Inference starts from noise at t = 1 and takes `num_steps` Euler steps to t = 0.

Block j cross-attends to vlm_layers[j * len(vlm_layers) // depth]: with one layer every block
reads it, with several they interleave from the first to the last, as SmolVLA's expert does.

Expert inputs (`--expert-inputs observation.state,...`): vector features of the dataset that the
expert reads besides the VLM (proprioception, touch, ...). Each is normalised with the dataset's
mean and std, goes through its own small MLP into one token, and joins the H action tokens in the
expert's self-attention; the VLM and its prompt never see them. A `Conditioning` holds what one
observation gives the expert (VLM states, their padding, these inputs): computed once, then read
by every velocity evaluation (Euler steps, RL's stochastic chains, guided sampling).

RL (vla0.rl.flow): `sample_chain` injects Gaussian noise of a fixed standard deviation into each
Euler step (ReinFlow's noisy step with a scheduled, not learned, std), so every step is a Gaussian
transition and a K-step chain has an exact log-probability (`chain_log_probs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vla0.config import NORMALIZATIONS, PolicyConfig

EXPERT_FILE = "flow_expert.safetensors"
BETA = (1.5, 1.0)  # pi0's time distribution
T_MIN = 0.001


@dataclass
class FlowExpertConfig:
    vlm_width: int  # hidden size of the VLM states the expert reads
    width: int
    depth: int = 4
    heads: int = 4
    vlm_layers: list[int] = field(default_factory=lambda: [-1])  # hidden_states indices; -1: the final (normed) one
    num_steps: int = 10  # Euler steps at inference
    mlp_ratio: int = 4
    # extra vector inputs: {dataset key: {"dim": n, "mean": [n], "std": [n]}} (dataset statistics)
    inputs: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self):
        if self.width < 1 or self.depth < 1 or self.heads < 1:
            raise ValueError(f"expert width, depth and heads must be >= 1, got {self.width}, {self.depth}, {self.heads}")
        if self.width % self.heads:
            raise ValueError(f"expert width {self.width} is not divisible by its {self.heads} attention heads")
        if self.num_steps < 1:
            raise ValueError(f"flow steps must be >= 1, got {self.num_steps}")
        if not self.vlm_layers:
            raise ValueError("the expert needs at least one VLM layer to read")
        for key, spec in self.inputs.items():
            if int(spec["dim"]) < 1 or len(spec["mean"]) != int(spec["dim"]) or len(spec["std"]) != int(spec["dim"]):
                raise ValueError(f"expert input {key}: dim, mean and std disagree ({spec})")

    def check_layers(self, num_hidden_states: int) -> None:
        bad = [i for i in self.vlm_layers if not -num_hidden_states <= i < num_hidden_states]
        if bad:
            raise ValueError(f"expert VLM layer(s) {bad} out of range: the VLM has {num_hidden_states} hidden "
                             f"states (embeddings + {num_hidden_states - 1} layers)")


# -- flow matching, written once -------------------------------------------------------------------
def sample_time(rng: np.random.Generator, n: int) -> np.ndarray:
    """n flow times in (0.001, 1]: Beta(1.5, 1) scaled as pi0 does."""
    return (rng.beta(*BETA, size=n) * (1 - T_MIN) + T_MIN).astype(np.float32)


def interpolate(actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target velocity): x_t = t * noise + (1 - t) * actions, u = noise - actions."""
    t = t.view(-1, *([1] * (actions.dim() - 1)))
    return t * noise + (1 - t) * actions, noise - actions


def flow_loss(velocity_fn, actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """MSE between velocity_fn(x_t, t) and noise - actions."""
    x_t, target = interpolate(actions, noise, t)
    return torch.nn.functional.mse_loss(velocity_fn(x_t, t), target)


def euler_times(num_steps: int, n: int, like: torch.Tensor) -> list[torch.Tensor]:
    """The flow times t_k = 1 - k / num_steps (k = 0..num_steps-1) at which the Euler steps evaluate."""
    dt = -1.0 / num_steps
    return [torch.full((n,), 1.0 + k * dt, dtype=like.dtype, device=like.device) for k in range(num_steps)]


def euler_integrate(velocity_fn, noise: torch.Tensor, num_steps: int) -> torch.Tensor:
    """From noise at t = 1 to actions at t = 0 in num_steps equal Euler steps."""
    x, dt = noise, -1.0 / num_steps
    for t in euler_times(num_steps, noise.shape[0], noise):
        x = x + dt * velocity_fn(x, t)
    return x


def sample_chain(velocity_fn, noise: torch.Tensor, num_steps: int, std: float,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The stochastic sampler RL rolls out: x_{k+1} = x_k + dt * v(x_k, t_k) + std * eps_k, eps_k ~ N(0, I).

    Returns (chain (B, K+1, H, D): x_0 = noise ... x_K = the action chunk, log-probs (B, K): log N(x_{k+1};
    x_k + dt v(x_k, t_k), std^2 I) of each step, summed over the chunk's H x D numbers). x_0 is drawn
    independently of the weights, so the sum over k is the chain's exact log-probability up to a constant."""
    x, dt = noise, -1.0 / num_steps
    chain, means = [x], []
    for t in euler_times(num_steps, noise.shape[0], noise):
        eps = torch.randn(x.shape, generator=generator, device=generator.device if generator else "cpu")
        means.append(x + dt * velocity_fn(x, t))
        x = means[-1] + std * eps.to(x.device, x.dtype)
        chain.append(x)
    chain = torch.stack(chain, dim=1)
    return chain, gaussian_step_log_probs(chain, torch.stack(means, dim=1), std)


def _means(velocity_fn, chain: torch.Tensor, num_steps: int) -> torch.Tensor:
    """(B, K, H, D): the Gaussian means x_k + dt v(x_k, t_k) of each step of a given chain."""
    dt = -1.0 / num_steps
    times = euler_times(num_steps, chain.shape[0], chain)
    return torch.stack([chain[:, k] + dt * velocity_fn(chain[:, k], times[k]) for k in range(num_steps)], dim=1)


def gaussian_step_log_probs(chain: torch.Tensor, means: torch.Tensor, std: float) -> torch.Tensor:
    """(B, K): log N(chain[:, k+1]; means[:, k], std^2 I), summed over the chunk."""
    z = (chain[:, 1:] - means) / std
    per_number = -0.5 * z.square() - math.log(std) - 0.5 * math.log(2 * math.pi)
    return per_number.flatten(2).sum(-1)


def chain_log_probs(velocity_fn, chain: torch.Tensor, std: float) -> torch.Tensor:
    """(B, K) log-probs of the steps of recorded chains under velocity_fn (differentiable: the learner's path)."""
    return gaussian_step_log_probs(chain, _means(velocity_fn, chain, chain.shape[1] - 1), std)


def gaussian_entropy(std: float, numbers: int) -> float:
    """Entropy in nats of one noisy Euler step over `numbers` action numbers (fixed std: a constant)."""
    return numbers * (0.5 * math.log(2 * math.pi * math.e) + math.log(std))


class ActionNormalizer:
    """Actions <-> [-1, 1] per dimension with the policy's statistics (min/max or q01/q99)."""

    def __init__(self, config: PolicyConfig):
        lo, hi = NORMALIZATIONS[config.normalization]
        self.low = np.asarray(config.action_stats[lo], np.float32)
        self.scale = np.maximum(np.asarray(config.action_stats[hi], np.float32) - self.low, 1e-8)

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        return (2 * (np.asarray(actions, np.float32) - self.low) / self.scale - 1).astype(np.float32)

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float32) + 1) / 2 * self.scale + self.low).astype(np.float32)


# -- the expert ------------------------------------------------------------------------------------
def time_embedding(t: torch.Tensor, width: int) -> torch.Tensor:
    """Sinusoids of t with periods from 4e-3 to 4 (pi0's range for t in [0, 1])."""
    half = width // 2
    periods = 4e-3 * (4.0 / 4e-3) ** torch.linspace(0, 1, half, device=t.device, dtype=torch.float32)
    angles = t.float()[:, None] * (2 * math.pi / periods)[None]
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return nn.functional.pad(emb, (0, width - 2 * half)).to(t.dtype)


class ExpertBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_mlp = (nn.LayerNorm(width) for _ in range(3))
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_pad: torch.Tensor) -> torch.Tensor:
        h = self.norm_self(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        h = self.norm_cross(x)
        x = x + self.cross_attn(h, context, context, key_padding_mask=context_pad, need_weights=False)[0]
        return x + self.mlp(self.norm_mlp(x))


class FlowExpert(nn.Module):
    def __init__(self, cfg: FlowExpertConfig, action_dim: int, chunk_size: int):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.action_in = nn.Linear(action_dim, w)
        self.action_time = nn.Sequential(nn.Linear(2 * w, w), nn.SiLU(), nn.Linear(w, w))  # pi0's action-time MLP
        self.position = nn.Parameter(0.02 * torch.randn(chunk_size, w))
        # The VLM's hidden states differ in scale by orders of magnitude between layers: normalise, then project.
        self.context_in = nn.ModuleList(nn.Sequential(nn.LayerNorm(cfg.vlm_width), nn.Linear(cfg.vlm_width, w))
                                        for _ in cfg.vlm_layers)
        self.blocks = nn.ModuleList(ExpertBlock(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(w)
        self.action_out = nn.Linear(w, action_dim)
        # One small encoder per extra input (module names cannot hold dots), and the dataset's
        # statistics as buffers that are rebuilt from the config, not stored with the weights.
        self.input_in = nn.ModuleDict({input_module_name(k): nn.Sequential(nn.Linear(int(s["dim"]), w), nn.SiLU(),
                                                                          nn.Linear(w, w))
                                       for k, s in cfg.inputs.items()})
        for k, s in cfg.inputs.items():
            self.register_buffer(f"{input_module_name(k)}_mean", torch.tensor(s["mean"], dtype=torch.float32), False)
            self.register_buffer(f"{input_module_name(k)}_std", torch.tensor(s["std"], dtype=torch.float32).clamp(min=1e-6),
                                 False)

    def input_tokens(self, inputs: dict[str, torch.Tensor] | None) -> torch.Tensor | None:
        """(B, len(cfg.inputs), width): each extra input normalised and encoded into one token."""
        if not self.cfg.inputs:
            return None
        missing = [k for k in self.cfg.inputs if inputs is None or k not in inputs]
        if missing:
            raise ValueError(f"this flow expert reads {missing} besides the images; the observation lacks them")
        tokens = []
        for k in self.cfg.inputs:
            name = input_module_name(k)
            mean, std = getattr(self, f"{name}_mean"), getattr(self, f"{name}_std")
            v = inputs[k].to(mean.device, mean.dtype)
            tokens.append(self.input_in[name](((v - mean) / std).to(self.action_in.weight.dtype)))
        return torch.stack(tokens, dim=1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, states: list[torch.Tensor],
                context_pad: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity (B, H, D) of x_t (B, H, D) at times t (B,), given the VLM's states of the
        chosen layers (each (B, T, vlm_width)), their padding (B, T), True where padded, and the
        extra inputs' tokens (input_tokens), which join the action tokens' self-attention."""
        a = self.action_in(x_t)
        tau = time_embedding(t, a.shape[-1])[:, None].expand_as(a)
        x = self.action_time(torch.cat([a, tau], dim=-1)) + self.position
        if inputs is not None:
            x = torch.cat([inputs, x], dim=1)
        contexts = [proj(s) for proj, s in zip(self.context_in, states)]
        for j, block in enumerate(self.blocks):
            x = block(x, contexts[j * len(contexts) // len(self.blocks)], context_pad)
        return self.action_out(self.norm_out(x[:, -x_t.shape[1]:]))


def input_module_name(key: str) -> str:
    return key.replace(".", "_")


@dataclass
class Conditioning:
    """What one batch of observations gives the expert, computed once per observation: the VLM's
    states of the chosen layers, their padding (True on padding) and the extra inputs' tokens."""
    states: list[torch.Tensor]
    pad: torch.Tensor
    inputs: torch.Tensor | None = None

    def velocity(self, expert: "FlowExpert"):
        """v(x_t, t) under this conditioning: the function Euler steps and samplers call."""
        return lambda x_t, t: expert(x_t, t, self.states, self.pad, self.inputs)


@torch.no_grad()
def vlm_states(vlm_model, batch: dict[str, torch.Tensor], layers: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One forward of the (frozen) VLM over the prompts: the chosen layers' hidden states and the
    key padding mask (True on padding). No cache and no LM head: nothing is decoded."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")}
    out = vlm_model.model(**inputs, output_hidden_states=True, use_cache=False)
    return [out.hidden_states[i] for i in layers], batch["attention_mask"] == 0


def expert_config_for(vlm_config, width: int | None = None, depth: int = 4, heads: int | None = None,
                      vlm_layers: list[int] | None = None, num_steps: int = 10) -> FlowExpertConfig:
    """Defaults from the VLM: half its width (pi0's expert is about half of Gemma's), its head count."""
    text = getattr(vlm_config, "text_config", vlm_config)
    cfg = FlowExpertConfig(vlm_width=text.hidden_size, width=width or text.hidden_size // 2, depth=depth,
                           heads=heads or text.num_attention_heads, vlm_layers=list(vlm_layers or [-1]),
                           num_steps=num_steps)
    cfg.check_layers(text.num_hidden_layers + 1)
    return cfg


def save_expert(expert: FlowExpert, folder: str | Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in expert.state_dict().items()}, str(Path(folder, EXPERT_FILE)))


def load_expert(config: PolicyConfig, folder: str | Path, device="cpu") -> FlowExpert:
    path = Path(folder, EXPERT_FILE)
    if not path.exists():
        raise FileNotFoundError(f"{folder} is a flow-head policy but {EXPERT_FILE} is missing")
    expert = FlowExpert(FlowExpertConfig(**config.flow_expert), config.action_dim, config.chunk_size)
    expert.load_state_dict(load_file(str(path)))
    return expert.to(device).eval()


class FlowHead:
    """Inference: one VLM prefill per observation, then num_steps expert evaluations."""

    def __init__(self, vlm_model, expert: FlowExpert, config: PolicyConfig):
        self.vlm_model, self.expert = vlm_model, expert
        self.normalizer = ActionNormalizer(config)
        self.chunk_shape = (config.chunk_size, config.action_dim)

    @property
    def input_keys(self) -> list[str]:
        """The observation keys the expert reads besides the images (its extra inputs)."""
        return list(self.expert.cfg.inputs)

    def observation_inputs(self, obs: dict) -> dict[str, torch.Tensor] | None:
        """The extra inputs of a batched observation dict, as (B, dim) tensors; a missing one is
        an error naming it."""
        if not self.input_keys:
            return None
        missing = [k for k in self.input_keys if obs.get(k) is None]
        if missing:
            raise ValueError(f"the observation lacks {missing}: this flow-head policy's expert was trained to read "
                             f"{self.input_keys} (--expert-inputs)")
        return {k: torch.as_tensor(np.asarray(obs[k], np.float32)).reshape(len(obs[k]), -1) for k in self.input_keys}

    @torch.no_grad()
    def condition(self, batch: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor] | None = None) -> Conditioning:
        """One VLM forward over the prompts and the extra inputs encoded: the expert's conditioning."""
        states, pad = vlm_states(self.vlm_model, batch, self.expert.cfg.vlm_layers)
        dtype = self.expert.action_in.weight.dtype  # the expert may run at another precision than the VLM
        return Conditioning([s.to(dtype) for s in states], pad, self.expert.input_tokens(inputs))

    def initial_noise(self, n: int, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn((n, *self.chunk_shape), generator=generator, device=generator.device if generator else "cpu")
        return noise.to(like.device, like.dtype)

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
                num_steps: int | None = None, inputs: dict[str, torch.Tensor] | None = None) -> np.ndarray:
        """(B, H, D) actions in the dataset's units (not yet clipped): the deterministic ODE from noise."""
        cond = self.condition(batch, inputs)
        noise = self.initial_noise(batch["input_ids"].shape[0], cond.states[0], generator)
        x = euler_integrate(cond.velocity(self.expert), noise, num_steps or self.expert.cfg.num_steps)
        return self.normalizer.unnormalize(x.float().cpu().numpy())

    @torch.no_grad()
    def sample(self, batch: dict[str, torch.Tensor], std: float, generator: torch.Generator | None = None,
               inputs: dict[str, torch.Tensor] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RL rollouts: (actions (B, H, D) in the dataset's units, chains (B, K+1, H, D), step
        log-probs (B, K)) from the noisy sampler (sample_chain)."""
        cond = self.condition(batch, inputs)
        noise = self.initial_noise(batch["input_ids"].shape[0], cond.states[0], generator)
        chain, logp = sample_chain(cond.velocity(self.expert), noise, self.expert.cfg.num_steps, std, generator)
        chain = chain.float().cpu().numpy()
        return self.normalizer.unnormalize(chain[:, -1]), chain, logp.float().cpu().numpy()
