"""Learner role: trajectories + advantages in, new weights out.

It rebuilds each policy call's prompt from the stored frames, recomputes the log-probs of the
sampled action tokens under the current weights (ActionDecoder.score: teacher forcing, same
temperature and grammar mask as the rollout), and takes clipped-surrogate steps (vla0.rl.grpo). No KL
term, no reference model. The loop that feeds it is vla0.rl.trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vla0.grammar import START, ActionGrammar
from vla0.policy.decoder import ActionDecoder
from vla0.processor import ActionProcessor
from vla0.rl.grpo import clipped_surrogate, trajectory_token_weights
from vla0.rl.rollout import Step, Trajectory

LOSS_AGGREGATIONS = ("token-mean", "trajectory-mean")


def executed_token_mask(tokens: list[int], grammar: ActionGrammar, numbers: int) -> list[bool]:
    """True for the tokens that write the first `numbers` numbers (their digits and the space
    after each); False for later numbers and the closing <|im_end|>."""
    out, state = [], START
    for t in tokens:
        out.append(state[0] < numbers and t != grammar.end_id)
        state = grammar.advance(state, t)
    return out


@dataclass
class _Item:
    """One policy call in an update: the call, its trajectory's advantage and token weight, and
    which of its tokens the loss covers."""
    step: Step
    advantage: float
    weight: float
    loss_mask: list[bool]


class Learner:
    """Owns the trainable model and its optimizer; `update` is one GRPO step on a batch."""

    def __init__(self, model, processor: ActionProcessor, *, lr: float = 5e-6,
                 betas=(0.9, 0.999), weight_decay: float = 0.0, clip_low: float = 0.2, clip_high: float = 0.28,
                 temperature: float = 1.6, epochs: int = 1, minibatches: int = 1, micro_batch: int = 16,
                 max_grad_norm: float = 1.0, loss_numbers: int | None = None, loss_agg: str = "token-mean",
                 warmup_steps: int = 0, seed: int = 0, device: str | torch.device = "cpu"):
        self.model = model
        self.config = processor.config
        self.device = torch.device(device)
        self.processor = processor
        self.grammar = self.processor.grammar
        self.decoder = ActionDecoder(model, self.processor, fast=False)
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
        # Adam's first steps move every weight by about lr whatever the gradient's size, before
        # its second-moment estimate has seen the noise: measured on bench/rl.py (T = 0.5, lr 2e-4),
        # the first update moved the rollout policy by 0.13 nats of KL and its success fell 44% -> 14%.
        # A linear warm-up over the first optimizer steps avoids that.
        self.lr, self.warmup_steps = lr, warmup_steps
        self.optimizer_steps = 0
        self.updates = 0

    def weights(self) -> dict[str, torch.Tensor]:
        """The trainable tensors by name (all weights, or only the LoRA adapters): what a
        RolloutWorker's set_weights takes."""
        return {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}

    def current_lr(self) -> float:
        """The learning rate of the next optimizer step: linear warm-up, then constant."""
        if self.optimizer_steps >= self.warmup_steps:
            return self.lr
        return self.lr * (self.optimizer_steps + 1) / (self.warmup_steps + 1)

    def _items(self, trajectories: list[Trajectory], advantages) -> list[_Item]:
        """Every policy call of the batch with its trajectory's advantage and token weight and
        its loss mask (computed once here, reused by every epoch and mini-batch)."""
        masks = [[self._loss_mask(s.tokens) for s in t.steps] for t in trajectories]
        weights = np.ones(len(trajectories))
        if self.loss_agg == "trajectory-mean":
            weights = trajectory_token_weights([sum(map(sum, m)) for m in masks])
        return [_Item(s, float(a), float(w), m) for t, a, w, ms in zip(trajectories, advantages, weights, masks)
                for s, m in zip(t.steps, ms)]

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
        step_lr = self.current_lr()
        for _ in range(self.epochs):
            order = self.rng.permutation(len(items))
            for mb in np.array_split(order, min(self.minibatches, len(items))):
                mb_items = [items[i] for i in mb]
                n_loss = sum(sum(it.loss_mask) for it in mb_items)
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
                step_lr = self.current_lr()
                for group in self.optimizer.param_groups:
                    group["lr"] = step_lr
                self.optimizer.step()
                self.optimizer_steps += 1
                loss_tokens_seen += n_loss
                steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        denom = max(stat_tokens, 1.0)
        stats = {k: (v / denom if k != "loss" else v / max(steps, 1)) for k, v in totals.items()}
        stats.update(optimizer_steps=steps, lr=step_lr, grad_norm=float(np.mean(grad_norms)) if grad_norms else 0.0,
                     loss_tokens=int(loss_tokens_seen / max(self.epochs, 1)), decision_tokens=int(stat_tokens / max(self.epochs, 1)),
                     samples=len(items))
        return stats

    def _micro_step(self, micro: list[_Item], n_loss: int) -> dict:
        prompts = [self.processor.prompt(it.step.frames, it.step.instruction) for it in micro]
        scored = self.decoder.score(prompts, [it.step.tokens for it in micro], self.temperature)
        dev, dtype = scored.logprobs.device, scored.logprobs.dtype
        old = torch.tensor([lp for it in micro for lp in it.step.logprobs], device=dev, dtype=dtype)
        adv = torch.tensor([it.advantage for it in micro for _ in it.step.tokens], device=dev, dtype=dtype)
        weights = torch.tensor([it.weight for it in micro for _ in it.step.tokens], device=dev, dtype=dtype)
        loss_mask = torch.tensor([m for it in micro for m in it.loss_mask], device=dev)
        decision = loss_mask & (scored.choices > 1)  # forced tokens: log-prob 0, ratio 1, nothing to report
        loss, st = clipped_surrogate(scored.logprobs, old, adv, loss_mask, self.clip_low, self.clip_high,
                                     num_tokens=n_loss, stats_mask=decision, weights=weights)
        loss.backward()
        n = float(decision.sum())
        ent = float((scored.entropy * decision).sum() / max(n, 1.0))
        return {"loss": float(loss.detach()), "clip_fraction": st["clip_fraction"], "approx_kl": st["approx_kl"],
                "ratio_mean": st["ratio_mean"], "entropy": ent, "stat_tokens": n}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "updates": self.updates, "optimizer_steps": self.optimizer_steps,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = state["updates"]
        self.optimizer_steps = state.get("optimizer_steps", 0)
        self.rng.bit_generator.state = state["rng"]
