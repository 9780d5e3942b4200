"""Real-time chunking for the flow head (RTC, Black et al. 2025, arXiv 2506.07339): the new chunk
is inpainted so that it agrees with what the robot executes while it is being computed.

The request carries the robot's current plan from the observation's step on (the rest of the
chunk it is executing, k rows), of which the first d are committed: they run while this chunk is
computed. Sampling is guided towards that plan with the paper's soft mask over the rows:

    W_i = 1                                   i < d      (frozen: executed for certain)
    W_i = c_i (e^{c_i} - 1) / (e - 1),  c_i = (k - i) / (k - d + 1)    d <= i < k   (decaying)
    W_i = 0                                   i >= k     (nothing planned there: free)

(k plays the paper's H - s: the overlap of the old chunk with the new one). At every Euler step
the clean chunk is estimated from the velocity, A1 = x - t v (x_t = t noise + (1 - t) A in this
code's convention: t = 1 noise, t = 0 data), and the update gets the pseudo-inverse guidance term
(PiGDM) g = (Y - A1)^T diag(W) dA1/dx (one vector-Jacobian product through the expert), weighted
by min(beta, (1 - tau) / (tau r^2)), r^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2), tau = 1 - t, with
the paper's beta = 5. Where W is zero (no plan: an episode's first chunk) the guidance term is
exactly 0; a batch with no plan at all is sampled by the plain integrator, bit for bit (with
gradients on, attention takes other kernels: a zero-weight row beside guided rows agrees to ~1e-7).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vla0.policy.flow_head import euler_integrate

MAX_GUIDANCE = 5.0  # the paper's beta


def soft_mask(chunk_size: int, committed: int, planned: int) -> np.ndarray:
    """(H,) guidance weights over the new chunk's rows: 1 for the `committed` rows, exponentially
    decaying over the rest of the `planned` rows, 0 after them."""
    if not 0 <= committed <= planned <= chunk_size:
        raise ValueError(f"need 0 <= committed ({committed}) <= planned ({planned}) <= chunk size ({chunk_size})")
    w = np.zeros(chunk_size, np.float32)
    w[:committed] = 1.0
    for i in range(committed, planned):
        c = (planned - i) / (planned - committed + 1)
        w[i] = c * math.expm1(c) / (math.e - 1)
    return w


def guided_integrate(velocity_fn, noise: torch.Tensor, num_steps: int, target: torch.Tensor,
                     weights: torch.Tensor, max_guidance: float = MAX_GUIDANCE) -> torch.Tensor:
    """Euler from noise (t = 1) to actions (t = 0), guided towards `target` (B, H, D) with
    per-row weights (B, H). With all weights 0 it is vla0.policy.flow_head.euler_integrate."""
    if not bool(weights.any()):  # nothing to agree with: the plain sampler (no-grad kernels, bit for bit)
        return euler_integrate(velocity_fn, noise, num_steps)
    x, dt = noise, -1.0 / num_steps
    w = weights.to(noise.dtype)[..., None]
    for k in range(num_steps):
        t_val = 1.0 + k * dt
        t = torch.full((noise.shape[0],), t_val, dtype=noise.dtype, device=noise.device)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            v = velocity_fn(x_in, t)
            clean = x_in - t_val * v
            g, = torch.autograd.grad(clean, x_in, (target - clean).detach() * w)
        tau = 1.0 - t_val
        r2 = (1 - tau) ** 2 / (tau ** 2 + (1 - tau) ** 2)
        scale = max_guidance if tau == 0 else min(max_guidance, (1 - tau) / (tau * r2))
        x = x + dt * v.detach() + (scale / num_steps) * g
    return x


@torch.no_grad()
def predict_rtc(head, batch: dict[str, torch.Tensor], prefix: list[np.ndarray], committed_steps: list[int],
                generator: torch.Generator | None = None, num_steps: int | None = None,
                max_guidance: float = MAX_GUIDANCE, inputs: dict[str, torch.Tensor] | None = None) -> np.ndarray:
    """(B, H, D) actions in the dataset's units: head (a FlowHead) sampled with RTC guidance.
    prefix[i]: (k_i, D) the robot's plan from the observation's step on (dataset units);
    committed_steps[i]: how many of its rows run while this chunk is computed; inputs: the
    expert's extra inputs (--expert-inputs), as FlowHead.predict takes them."""
    H, D = head.chunk_shape
    cond = head.condition(batch, inputs)
    n = batch["input_ids"].shape[0]
    noise = head.initial_noise(n, cond.states[0], generator)
    target = np.zeros((n, H, D), np.float32)
    weights = np.zeros((n, H), np.float32)
    for i, (p, d) in enumerate(zip(prefix, committed_steps)):
        p = np.asarray(p, np.float32).reshape(-1, D) if np.size(p) else np.zeros((0, D), np.float32)
        k = min(len(p), H)
        target[i, :k] = head.normalizer.normalize(p[:k])
        weights[i] = soft_mask(H, min(int(d), k), k)
    x = guided_integrate(cond.velocity(head.expert), noise,
                         num_steps or head.expert.cfg.num_steps,
                         torch.from_numpy(target).to(noise), torch.from_numpy(weights).to(noise), max_guidance)
    return head.normalizer.unnormalize(x.float().cpu().numpy())
