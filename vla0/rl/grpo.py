"""GRPO pieces (SimpleVLA-RL recipe): group-normalised advantages, dynamic sampling, and the
clipped surrogate with asymmetric ("clip higher") bounds, averaged over action tokens.

Pure functions on plain numbers and tensors, so each can be checked by hand (tests/test_rl.py).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

EPS = 1e-6


def group_advantages(rewards, groups, eps: float = EPS) -> np.ndarray:
    """advantage_i = (r_i - mean_g) / (std_g + eps) over the rollouts of i's group g.

    std is the population standard deviation (ddof=0), as in SimpleVLA-RL / veRL's GRPO;
    a group whose rewards are all equal gets advantage 0 for every member."""
    rewards = np.asarray(rewards, dtype=np.float64)
    groups = list(groups)
    if len(groups) != len(rewards):
        raise ValueError(f"{len(rewards)} rewards for {len(groups)} group labels")
    members: dict = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    adv = np.zeros_like(rewards)
    for idx in members.values():
        r = rewards[idx]
        adv[idx] = (r - r.mean()) / (r.std() + eps)
    return adv


def is_informative(rewards, tol: float = 0.0) -> bool:
    """Dynamic sampling's test: a group is kept only if its rewards are not all equal
    (all succeeded or all failed means zero advantage, hence zero gradient)."""
    r = np.asarray(rewards, dtype=np.float64)
    return r.size > 1 and float(r.max() - r.min()) > tol


def dynamic_sampling(groups: dict, target: int | None = None) -> tuple[list, list]:
    """Split {group_id: rewards} into (kept ids, dropped ids), in insertion order; at most
    `target` groups are kept (the rest of the informative ones are dropped too)."""
    kept, dropped = [], []
    for gid, rewards in groups.items():
        if is_informative(rewards) and (target is None or len(kept) < target):
            kept.append(gid)
        else:
            dropped.append(gid)
    return kept, dropped


def group_outcome(rewards) -> str:
    """What dynamic sampling does with a group: "mixed" (kept), or dropped as "all_success" /
    "all_failure" (every advantage would be 0)."""
    if is_informative(rewards):
        return "mixed"
    return "all_success" if float(np.max(rewards)) > 0 else "all_failure"


def task_quotas(groups_per_batch: int, tasks: list, offset: int = 0) -> dict:
    """Mixed groups each task contributes to a batch: an equal share, the remainder going to
    the tasks after `offset` in turn (the trainer passes its iteration, so no task is always
    short). Filling a batch with whichever groups turn out mixed first lets the task nearest 50%
    crowd out the others; fixed shares give every task the same weight in every update."""
    if not tasks:
        raise ValueError("task_quotas: no tasks")
    base, extra = divmod(groups_per_batch, len(tasks))
    n = len(tasks)
    return {t: base + (1 if (i - offset) % n < extra else 0) for i, t in enumerate(tasks)}


def groups_to_launch(deficit: int, kept: int, tried: int, cap: int) -> int:
    """Groups to start for a task short of `deficit` mixed groups: enough to fill it at the kept
    rate seen so far (at least a quarter, so one unlucky round does not launch the whole cap),
    never beyond the task's attempt cap."""
    if deficit <= 0 or tried >= cap:
        return 0
    rate = kept / tried if tried else 1.0
    return min(cap - tried, max(deficit, math.ceil(deficit / max(rate, 0.25))))


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor | None = None, clip_low: float = 0.2, clip_high: float = 0.28,
                      num_tokens: float | None = None, stats_mask: torch.Tensor | None = None,
                      weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """PPO clipped objective, asymmetric bounds [1 - clip_low, 1 + clip_high], token-level mean.

    logp, old_logp, advantages, mask: same shape, one entry per action token (the advantage is
    the trajectory's, repeated over its tokens). Loss = sum(mask * -min(r A, clip(r) A)) / N with
    N = num_tokens if given (the token count of the whole mini-batch, when it is split into
    micro-batches), else mask.sum(). Returns (loss, stats): clip_fraction (tokens whose clipped
    term is the active one, i.e. gets no gradient), approx_kl (k3 estimator of
    KL(pi_old || pi), mean over tokens), ratio_mean and the token count, all over `stats_mask`
    (default: mask; e.g. only the tokens where the grammar left a choice). `weights` (per token)
    scale each token's term: see trajectory_token_weights."""
    if mask is None:
        mask = torch.ones_like(logp, dtype=torch.bool)
    mask = mask.to(logp.dtype)
    n = float(num_tokens) if num_tokens is not None else float(mask.sum().clamp(min=1.0))
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    if weights is not None:
        per_token = per_token * weights
    loss = (per_token * mask).sum() / n
    with torch.no_grad():
        if stats_mask is not None:
            mask = stats_mask.to(logp.dtype)
        count = float(mask.sum())
        active = (clipped < unclipped).to(logp.dtype)  # min picked the clipped term strictly
        lr = log_ratio.detach()
        k3 = torch.exp(lr) - 1.0 - lr
        denom = max(count, 1.0)
        stats = {"clip_fraction": float((active * mask).sum() / denom),
                 "approx_kl": float((k3 * mask).sum() / denom),
                 "ratio_mean": float((ratio.detach() * mask).sum() / denom),
                 "tokens": count}
    return loss, stats


def trajectory_token_weights(loss_tokens_per_trajectory) -> np.ndarray:
    """Per-trajectory token weights for the "trajectory-mean" loss aggregation.

    With the token-level mean (the recipe's), a trajectory weighs in proportion to its length.
    In episodic tasks failures run to the step cap and successes stop early, so within a group
    the negative advantages cover more tokens than the positive ones and the net update pushes
    probability away from what was sampled: entropy drifts up. Weighting trajectory i's tokens
    by w_i = (T / N) / L_i (L_i its loss tokens, T their total, N the trajectories) makes each
    trajectory count equally while keeping the token-mean's scale (the weights average 1 per
    token), so a group's zero-sum advantages give a zero-sum push."""
    lengths = np.asarray(loss_tokens_per_trajectory, dtype=np.float64)
    if lengths.size == 0:
        return lengths
    safe = np.maximum(lengths, 1.0)
    return (lengths.sum() / len(lengths)) / safe
