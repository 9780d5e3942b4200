"""Grammar-constrained sampling with exact log-probs, and the same log-probs recomputed by
teacher forcing: the two halves of the GRPO importance ratio.

The distribution sampled at rollout time, and scored again at update time, is

    pi(token | prefix) = softmax( logits[allowed] / T )      over the grammar-allowed tokens only

where `allowed` is ActionGrammar.allowed(generated so far) and T the rollout temperature. Only
the 12 grammar tokens' logits are ever computed (lm_head rows of the digits, the space and
<|im_end|>), at both times, so the two computations are the same arithmetic on the same
hidden states: with unchanged weights the ratio is 1 up to float rounding (~1e-6 in fp32).
A token the grammar forces (one allowed choice) has log-prob exactly 0 and no gradient.
Unlike HF `generate`, no repetition penalty or other logits processor is applied: the policy
being optimised is exactly the distribution above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vla0.policy.grammar import ActionGrammar
from vla0.prompt import Encoded, collate


def unwrap(model):
    """The Qwen2_5_VLForConditionalGeneration inside a PEFT wrapper (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class GrammarTable:
    """ActionGrammar over its 12 tokens: column indices, allowed masks, incremental states."""

    def __init__(self, grammar: ActionGrammar):
        self.grammar = grammar
        self.ids = list(grammar.digit_ids) + [grammar.space_id, grammar.end_id]
        self.col = {t: i for i, t in enumerate(self.ids)}
        self.num_cols = len(self.ids)
        self._memo: dict[tuple, torch.Tensor] = {}

    def start(self):
        return (0, "", False)

    def allowed_row(self, state) -> torch.Tensor:
        """Boolean (12,) mask of the tokens ActionGrammar.allowed admits in `state`."""
        done, cur, finished = state
        key = (done + 1 >= self.grammar.num_values, cur, finished)
        mask = self._memo.get(key)
        if mask is None:
            # ActionGrammar.allowed only looks at (numbers done, current digits, finished):
            # rebuild a token prefix with that state and ask it, so the rule lives in one place.
            prefix = self._prefix_for(done, cur, finished)
            mask = torch.zeros(self.num_cols, dtype=torch.bool)
            mask[[self.col[t] for t in self.grammar.allowed(prefix)]] = True
            self._memo[key] = mask
        return mask

    def _prefix_for(self, done: int, cur: str, finished: bool) -> list[int]:
        g = self.grammar
        if finished:
            return [g.end_id]
        zero = g.digit_ids[0]
        return [zero, g.space_id] * done + [g.digit_ids[int(c)] for c in cur]

    def advance(self, state, token: int):
        done, cur, finished = state
        g = self.grammar
        if finished:
            return state
        if token == g.end_id:
            return (done + 1, "", True)
        if token == g.space_id:
            return (done + 1, "", False)
        return (done, cur + str(g._digit_of[token]), False)

    def masks(self, tokens: list[int]) -> torch.Tensor:
        """(len(tokens), 12) allowed masks for each position of a generated sequence."""
        state, rows = self.start(), []
        for t in tokens:
            rows.append(self.allowed_row(state))
            state = self.advance(state, t)
        return torch.stack(rows) if rows else torch.zeros(0, self.num_cols, dtype=torch.bool)


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


class GrammarSampler:
    def __init__(self, model, tokenizer, grammar: ActionGrammar):
        self.model = model
        self.tokenizer = tokenizer
        self.table = GrammarTable(grammar)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # -- pieces shared by both computations -----------------------------------------------------
    def _grammar_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = unwrap(self.model).lm_head
        ids = torch.tensor(self.table.ids, device=hidden.device)
        bias = None if head.bias is None else head.bias[ids]
        return F.linear(hidden, head.weight[ids], bias).float()

    @staticmethod
    def _masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
        return torch.log_softmax((logits / temperature).masked_fill(~mask, float("-inf")), dim=-1)

    def _positions(self, batch: dict) -> torch.Tensor:
        core = unwrap(self.model).model
        pos, _ = core.get_rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                     image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"])
        return pos

    def _device(self):
        return unwrap(self.model).lm_head.weight.device

    # -- rollout time ---------------------------------------------------------------------------
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
        batch = {k: v.to(device) for k, v in collate(prompts, self.pad_id, padding_side="left").items()}
        pos = self._positions(batch)
        cache = DynamicCache(config=core.config.get_text_config())
        out = core.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=pos,
                         pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                         mm_token_type_ids=batch["mm_token_type_ids"], past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
        attn = batch["attention_mask"]
        next_pos = pos[:, :, -1] + 1  # (3, B): left padding puts every row's last token last
        B = len(prompts)
        states = [self.table.start() for _ in range(B)]
        samples = [Sample([], []) for _ in range(B)]
        ids = torch.tensor(self.table.ids, device=device)
        for _ in range(self.table.grammar.max_new_tokens()):
            mask = torch.stack([self.table.allowed_row(s) for s in states]).to(device)
            logp = self._masked_log_softmax(self._grammar_logits(hidden), mask, temperature)
            cols = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            forced = mask.sum(-1) == 1  # skip the draw's noise: a forced token is certain
            cols = torch.where(forced, mask.float().argmax(-1), cols)
            chosen = logp.gather(1, cols[:, None]).squeeze(1).tolist()
            cols_l = cols.tolist()
            for i in range(B):
                if states[i][2]:
                    continue
                tok = self.table.ids[cols_l[i]]
                samples[i].tokens.append(tok)
                samples[i].logprobs.append(0.0 if bool(forced[i]) else chosen[i])
                states[i] = self.table.advance(states[i], tok)
            if all(s[2] for s in states):
                break
            feed = ids[cols]  # a finished row keeps getting <|im_end|> (its only allowed token)
            attn = torch.cat([attn, torch.ones(B, 1, dtype=attn.dtype, device=device)], dim=1)
            out = core.model(input_ids=feed[:, None], attention_mask=attn, position_ids=next_pos[:, :, None],
                             past_key_values=cache, use_cache=True)
            hidden = out.last_hidden_state[:, -1]
            next_pos = next_pos + 1
        return samples

    # -- update time ----------------------------------------------------------------------------
    def score(self, prompts: list[Encoded], tokens: list[list[int]], temperature: float) -> Scored:
        """Log-probs of `tokens` after each prompt (teacher forcing), differentiable."""
        device = self._device()
        core = unwrap(self.model)
        seqs = [Encoded(p.input_ids + list(t), p.mm_token_type_ids + [0] * len(t), p.pixel_values, p.image_grid_thw)
                for p, t in zip(prompts, tokens)]
        batch = {k: v.to(device) for k, v in collate(seqs, self.pad_id, padding_side="right").items()}
        pos = self._positions(batch)
        out = core.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=pos,
                         pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                         mm_token_type_ids=batch["mm_token_type_ids"], use_cache=False)
        rows, cols, targets, masks = [], [], [], []
        for i, (p, t) in enumerate(zip(prompts, tokens)):
            n = len(p.input_ids)
            rows += [i] * len(t)
            cols += range(n - 1, n - 1 + len(t))  # position k predicts token k+1
            targets += [self.table.col[x] for x in t]
            masks.append(self.table.masks(list(t)))
        rows_t = torch.tensor(rows, device=device, dtype=torch.long)
        hidden = out.last_hidden_state[rows_t, torch.tensor(cols, device=device, dtype=torch.long)]
        mask = torch.cat(masks).to(device)
        logp_all = self._masked_log_softmax(self._grammar_logits(hidden), mask, temperature)
        logp = logp_all.gather(1, torch.tensor(targets, device=device)[:, None]).squeeze(1)
        with torch.no_grad():
            p_all = logp_all.exp()
            entropy = -(p_all * logp_all.masked_fill(~mask, 0.0)).sum(-1)
        return Scored(logp, entropy, mask.sum(-1), rows_t)
