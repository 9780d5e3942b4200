"""ActionDecoder: the one way vla0 turns prompts into action tokens, under the action grammar.

    greedy(prompts, drafts)          -> token ids    (evaluation, serving; the default)
    sample(prompts, T, generator)    -> token ids + log-probs   (evaluation with a temperature,
                                                                  RL rollouts)
    score(prompts, tokens, T)        -> log-probs of given tokens, differentiable (the RL ratio)

Greedy decoding is the exact fast decoder (vla0.policy.fast_decode: the same tokens as
`generate`, in far fewer forward passes) unless `fast=False` asks for plain `generate`.

The distribution sampled, and scored again at update time, is

    pi(token | prefix) = softmax( logits[allowed] / T )      over the grammar-allowed tokens only

Only the grammar tokens' logits are computed (lm_head rows of the digits, the space and
<|im_end|>), at both times, so the two computations are the same arithmetic on the same hidden
states: with unchanged weights the ratio is 1 up to float rounding (~1e-6 in fp32). A token the
grammar forces (one allowed choice) has log-prob exactly 0 and no gradient. Unlike `generate`,
no repetition penalty or other logits processor is applied when sampling: what RL optimises is
exactly the distribution above, and `vla0 eval --temperature T` samples that same distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vla0.grammar import START, GrammarLogitsProcessor
from vla0.processor import ActionProcessor
from vla0.prompt import Encoded, collate


def unwrap(model):
    """The Qwen2_5_VLForConditionalGeneration inside a PEFT wrapper (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@dataclass
class Sample:
    tokens: list[int]  # generated ids, ending with <|im_end|>
    logprobs: list[float]  # log pi(token) under the masked, tempered distribution


@dataclass
class Scored:
    """Teacher-forced scores of a batch, flattened over all action tokens (row-major)."""
    logprobs: torch.Tensor  # (M,) differentiable
    entropy: torch.Tensor  # (M,) of the masked tempered distribution, detached
    choices: torch.Tensor  # (M,) number of allowed tokens at each position (1 = forced)
    row: torch.Tensor  # (M,) which sequence each token belongs to


class ActionDecoder:
    def __init__(self, model, processor: ActionProcessor, fast: bool = True, **fast_options):
        """fast_options: FastDecoder's (relaxed_k, speculative, ...); fast=False: greedy by `generate`."""
        self.model = model
        self.processor = processor
        self.grammar = processor.grammar
        self.fast = None
        if fast:
            from vla0.policy.fast_decode import FastDecoder
            self.fast = FastDecoder(unwrap(model), self.grammar, processor.config.action_dim, processor.pad_id,
                                    **fast_options)
        elif fast_options:
            raise ValueError(f"fast decoder options {sorted(fast_options)} given with the fast decoder off")

    def reset(self) -> None:
        """Forget what depends on the weights (the fast decoder's prefix cache): call after they change."""
        if self.fast is not None:
            self.fast.reset()

    def _device(self):
        return unwrap(self.model).lm_head.weight.device

    # -- greedy ---------------------------------------------------------------------------------
    @torch.no_grad()
    def greedy(self, prompts: list[Encoded], drafts=None, forced=None) -> list[list[int]]:
        """Greedy token ids per prompt (ending with <|im_end|>). drafts[i]: guessed numbers for the
        fast decoder (see draft_candidates); ignored by `generate`. forced[i]: tokens the output
        must begin with (real-time chunking; the fast decoder's `forced`), included in the result."""
        if self.fast is not None:
            return self.fast.decode_ids(prompts, drafts, forced)
        if forced is not None and any(forced):
            raise ValueError("forced prefixes (real-time chunking) need the fast decoder (--decoder fast)")
        device = self._device()
        batch = {k: v.to(device) for k, v in collate(prompts, self.processor.pad_id, padding_side="left").items()}
        width = batch["input_ids"].shape[1]
        out = unwrap(self.model).generate(
            **batch, logits_processor=[GrammarLogitsProcessor(self.grammar, width)],
            max_new_tokens=self.grammar.max_new_tokens(), do_sample=False, top_k=None, top_p=None,
            eos_token_id=self.grammar.end_id, pad_token_id=self.processor.pad_id)
        # rows that finished early are padded after their <|im_end|>
        return [self._trim(row) for row in out[:, width:].tolist()]

    def _trim(self, tokens: list[int]) -> list[int]:
        end = self.grammar.end_id
        return tokens[:tokens.index(end) + 1] if end in tokens else tokens

    # -- shared by sample and score -------------------------------------------------------------
    def _grammar_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = unwrap(self.model).lm_head
        ids = torch.tensor(self.grammar.ids, device=hidden.device)
        bias = None if head.bias is None else head.bias[ids]
        return F.linear(hidden, head.weight[ids], bias).float()

    @staticmethod
    def _masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
        return torch.log_softmax((logits / temperature).masked_fill(~mask, float("-inf")), dim=-1)

    def _positions(self, batch: dict) -> torch.Tensor:
        pos, _ = unwrap(self.model).model.get_rope_index(
            batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"])
        return pos

    def _mask(self, state, device) -> torch.Tensor:
        return torch.from_numpy(self.grammar.mask(state)).to(device)

    # -- sample ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, prompts: list[Encoded], temperature: float, generator: torch.Generator | None = None) -> list[Sample]:
        """One action text per prompt, sampled token by token with a KV cache."""
        from transformers import DynamicCache

        if temperature <= 0:
            raise ValueError(f"sampling temperature must be > 0, got {temperature}")
        if not prompts:
            return []
        device = self._device()
        core = unwrap(self.model)
        batch = {k: v.to(device) for k, v in collate(prompts, self.processor.pad_id, padding_side="left").items()}
        pos = self._positions(batch)
        cache = DynamicCache(config=core.config.get_text_config())
        out = core.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=pos,
                         pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                         mm_token_type_ids=batch["mm_token_type_ids"], past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
        attn = batch["attention_mask"]
        next_pos = pos[:, :, -1] + 1  # (3, B): left padding puts every row's last token last
        B = len(prompts)
        states = [START] * B
        samples = [Sample([], []) for _ in range(B)]
        ids = torch.tensor(self.grammar.ids, device=device)
        for _ in range(self.grammar.max_new_tokens()):
            mask = torch.stack([self._mask(s, device) for s in states])
            logp = self._masked_log_softmax(self._grammar_logits(hidden), mask, temperature)
            cols = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            forced = mask.sum(-1) == 1  # skip the draw's noise: a forced token is certain
            cols = torch.where(forced, mask.float().argmax(-1), cols)
            chosen = logp.gather(1, cols[:, None]).squeeze(1).tolist()
            cols_l = cols.tolist()
            for i in range(B):
                if states[i][2]:
                    continue
                tok = self.grammar.ids[cols_l[i]]
                samples[i].tokens.append(tok)
                samples[i].logprobs.append(0.0 if bool(forced[i]) else chosen[i])
                states[i] = self.grammar.advance(states[i], tok)
            if all(s[2] for s in states):
                break
            feed = ids[cols]  # a finished row keeps getting <|im_end|> (its only allowed token)
            attn = torch.cat([attn, torch.ones(B, 1, dtype=attn.dtype, device=device)], dim=1)
            out = core.model(input_ids=feed[:, None], attention_mask=attn, position_ids=next_pos[:, :, None],
                             past_key_values=cache, use_cache=True)
            hidden = out.last_hidden_state[:, -1]
            next_pos = next_pos + 1
        return samples

    # -- score ----------------------------------------------------------------------------------
    def score(self, prompts: list[Encoded], tokens: list[list[int]], temperature: float) -> Scored:
        """Log-probs of `tokens` after each prompt (teacher forcing), differentiable."""
        device = self._device()
        core = unwrap(self.model)
        seqs = [Encoded(p.input_ids + list(t), p.mm_token_type_ids + [0] * len(t), p.pixel_values, p.image_grid_thw)
                for p, t in zip(prompts, tokens)]
        batch = {k: v.to(device) for k, v in collate(seqs, self.processor.pad_id, padding_side="right").items()}
        pos = self._positions(batch)
        out = core.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=pos,
                         pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                         mm_token_type_ids=batch["mm_token_type_ids"], use_cache=False)
        rows, cols, targets, masks = [], [], [], []
        for i, (p, t) in enumerate(zip(prompts, tokens)):
            n = len(p.input_ids)
            rows += [i] * len(t)
            cols += range(n - 1, n - 1 + len(t))  # position k predicts token k+1
            targets += [self.grammar.col[x] for x in t]
            masks.append(torch.from_numpy(self.grammar.masks(list(t))))
        rows_t = torch.tensor(rows, device=device, dtype=torch.long)
        hidden = out.last_hidden_state[rows_t, torch.tensor(cols, device=device, dtype=torch.long)]
        mask = torch.cat(masks).to(device)
        logp_all = self._masked_log_softmax(self._grammar_logits(hidden), mask, temperature)
        logp = logp_all.gather(1, torch.tensor(targets, device=device)[:, None]).squeeze(1)
        with torch.no_grad():
            p_all = logp_all.exp()
            entropy = -(p_all * logp_all.masked_fill(~mask, 0.0)).sum(-1)
        return Scored(logp, entropy, mask.sum(-1), rows_t)
