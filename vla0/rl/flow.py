"""GRPO for a flow-head policy (stage 2): the frozen VLM reads the observation once, the action
expert's noisy Euler chain is the "text" whose log-probability the clipped surrogate optimises.

Rollouts (vla0.rl.rollout with an expert) sample x_{k+1} = x_k + dt v(x_k, t_k) + sigma eps_k
(vla0.policy.flow_head.sample_chain): each of the K steps is a Gaussian transition with an exact
log-density, recorded per step. The learner recomputes those log-densities under the current
expert for the recorded chains and treats each Euler step as one "token" of the text path:
ratio, clip-higher bounds, token- or trajectory-mean aggregation and dynamic sampling are the
text learner's, unchanged (vla0.rl.grpo). Only the expert trains; the VLM's states of each stored
observation are computed once per update, without gradient, and reused by every epoch and
mini-batch.

The noise: a fixed standard deviation `--flow-noise` (normalised action units, the same at every
step), not ReinFlow's learned noise network. Why: (1) the log-ratio then depends on the expert's
mean alone, so clipping bounds and KL read as they do for text; (2) a learned std lets GRPO buy
likelihood by shrinking or widening the noise, which ReinFlow has to bound by hand anyway; (3)
nothing beyond the expert is trained or exported, and evaluation runs the plain ODE (no noise);
(4) one knob, like the text head's sampling temperature.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vla0.config import PolicyConfig
from vla0.policy.flow_head import Conditioning, FlowExpert, chain_log_probs, gaussian_entropy, load_expert, vlm_states
from vla0.processor import ActionProcessor
from vla0.prompt import collate
from vla0.rl.grpo import clipped_surrogate, trajectory_token_weights
from vla0.rl.learner import Learner, _Item
from vla0.rl.rollout import Trajectory

DEFAULT_FLOW_NOISE = 0.1


def load_flow_policy(source: Path, config: PolicyConfig, resume_from: Path | None, device: torch.device):
    """(VLM, expert): the frozen VLM from the flow policy RL starts from, the expert from it or
    from the checkpoint being resumed (checkpoints hold the expert only)."""
    from vla0.policy.policy import load_policy_vlm, vlm_source
    vlm = load_policy_vlm(vlm_source(source, config), torch.float32, device)
    vlm.model.requires_grad_(False).eval()
    expert = load_expert(config, resume_from or source, device).float().train()
    return vlm, expert


def merge_conditions(conds: list[Conditioning]) -> Conditioning:
    """One batch from per-observation conditionings: states right-padded to the longest prompt."""
    length = max(c.pad.shape[1] for c in conds)
    states = [torch.cat([F.pad(c.states[j], (0, 0, 0, length - c.pad.shape[1])) for c in conds])
              for j in range(len(conds[0].states))]
    pad = torch.cat([F.pad(c.pad, (0, length - c.pad.shape[1]), value=True) for c in conds])
    return Conditioning(states, pad)


class FlowLearner(Learner):
    """Learner for a flow-head policy: `model` is the expert (the only trainable module)."""

    def __init__(self, vlm_model, expert: FlowExpert, processor: ActionProcessor, flow_noise: float, **options):
        super().__init__(expert, processor, loss_numbers=None, **options)
        self.decoder = None  # nothing is decoded: the chains carry their own log-probs
        self.vlm_model = vlm_model
        self.flow_noise = float(flow_noise)
        self.entropy = gaussian_entropy(self.flow_noise, processor.config.chunk_size * processor.config.action_dim)
        self._conditions: dict[int, Conditioning] = {}

    def _items(self, trajectories: list[Trajectory], advantages) -> list[_Item]:
        """As the text learner's, with each policy call's K Euler steps as its loss "tokens"."""
        masks = [[[True] * len(s.logprobs) for s in t.steps] for t in trajectories]
        weights = np.ones(len(trajectories))
        if self.loss_agg == "trajectory-mean":
            weights = trajectory_token_weights([sum(map(len, m)) for m in masks])
        items = [_Item(s, float(a), float(w), m) for t, a, w, ms in zip(trajectories, advantages, weights, masks)
                 for s, m in zip(t.steps, ms)]
        self._condition(items)
        return items

    @torch.no_grad()
    def _condition(self, items: list[_Item]) -> None:
        """The frozen VLM's states for every stored observation, once per update."""
        self._conditions = {}
        for start in range(0, len(items), self.micro_batch):
            part = items[start:start + self.micro_batch]
            prompts = [self.processor.prompt(it.step.frames, it.step.instruction) for it in part]
            batch = {k: v.to(self.device) for k, v in collate(prompts, self.processor.pad_id, "right").items()}
            states, pad = vlm_states(self.vlm_model, batch, self.model.cfg.vlm_layers)
            for j, it in enumerate(part):  # the extra inputs' tokens are the expert's: computed with gradient later
                self._conditions[id(it)] = Conditioning([s[j:j + 1].float() for s in states], pad[j:j + 1])

    def _micro_step(self, micro: list[_Item], n_loss: int) -> dict:
        cond = merge_conditions([self._conditions[id(it)] for it in micro])
        keys = list(self.model.cfg.inputs)
        if keys:
            cond.inputs = self.model.input_tokens({k: torch.from_numpy(np.stack([it.step.inputs[k] for it in micro]))
                                                   for k in keys})
        chain = torch.from_numpy(np.stack([it.step.chain for it in micro])).to(self.device)
        logp = chain_log_probs(cond.velocity(self.model), chain, self.flow_noise)  # (B, K)
        old = torch.tensor(np.array([it.step.logprobs for it in micro]), device=self.device, dtype=logp.dtype)
        adv = torch.tensor([it.advantage for it in micro], device=self.device, dtype=logp.dtype)[:, None].expand_as(logp)
        weights = torch.tensor([it.weight for it in micro], device=self.device, dtype=logp.dtype)[:, None].expand_as(logp)
        loss, st = clipped_surrogate(logp.flatten(), old.flatten(), adv.flatten(), None, self.clip_low,
                                     self.clip_high, num_tokens=n_loss, weights=weights.flatten())
        loss.backward()
        return {"loss": float(loss.detach()), "clip_fraction": st["clip_fraction"], "approx_kl": st["approx_kl"],
                "ratio_mean": st["ratio_mean"], "entropy": self.entropy, "stat_tokens": st["tokens"]}

