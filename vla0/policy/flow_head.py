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

    def __post_init__(self):
        if self.width < 1 or self.depth < 1 or self.heads < 1:
            raise ValueError(f"expert width, depth and heads must be >= 1, got {self.width}, {self.depth}, {self.heads}")
        if self.width % self.heads:
            raise ValueError(f"expert width {self.width} is not divisible by its {self.heads} attention heads")
        if self.num_steps < 1:
            raise ValueError(f"flow steps must be >= 1, got {self.num_steps}")
        if not self.vlm_layers:
            raise ValueError("the expert needs at least one VLM layer to read")

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


def euler_integrate(velocity_fn, noise: torch.Tensor, num_steps: int) -> torch.Tensor:
    """From noise at t = 1 to actions at t = 0 in num_steps equal Euler steps."""
    x, dt = noise, -1.0 / num_steps
    for k in range(num_steps):
        t = torch.full((noise.shape[0],), 1.0 + k * dt, dtype=noise.dtype, device=noise.device)
        x = x + dt * velocity_fn(x, t)
    return x


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

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, states: list[torch.Tensor],
                context_pad: torch.Tensor) -> torch.Tensor:
        """Velocity (B, H, D) of x_t (B, H, D) at times t (B,), given the VLM's states of the
        chosen layers (each (B, T, vlm_width)) and their padding (B, T), True where padded."""
        a = self.action_in(x_t)
        tau = time_embedding(t, a.shape[-1])[:, None].expand_as(a)
        x = self.action_time(torch.cat([a, tau], dim=-1)) + self.position
        contexts = [proj(s) for proj, s in zip(self.context_in, states)]
        for j, block in enumerate(self.blocks):
            x = block(x, contexts[j * len(contexts) // len(self.blocks)], context_pad)
        return self.action_out(self.norm_out(x))


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

    @torch.no_grad()
    def conditioning(self, batch: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The VLM's states the expert reads (once per observation) and their padding mask."""
        states, pad = vlm_states(self.vlm_model, batch, self.expert.cfg.vlm_layers)
        dtype = self.expert.action_in.weight.dtype  # the expert may run at another precision than the VLM
        return [s.to(dtype) for s in states], pad

    def initial_noise(self, n: int, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
        noise = torch.randn((n, *self.chunk_shape), generator=generator, device=generator.device if generator else "cpu")
        return noise.to(like.device, self.expert.action_in.weight.dtype)

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
                num_steps: int | None = None) -> np.ndarray:
        """(B, H, D) actions in the dataset's units (not yet clipped)."""
        states, pad = self.conditioning(batch)
        noise = self.initial_noise(batch["input_ids"].shape[0], generator, states[0])
        x = euler_integrate(lambda x_t, t: self.expert(x_t, t, states, pad), noise,
                            num_steps or self.expert.cfg.num_steps)
        return self.normalizer.unnormalize(x.float().cpu().numpy())
