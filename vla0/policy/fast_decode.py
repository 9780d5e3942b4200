"""Fast exact decoding of action chunks: the same tokens as greedy `generate` under the action
grammar (vla0.grammar), in far fewer model forward passes. Written for VLA-0's text; the bins
format (one token per number) goes through the same code, where a number is a single token.

Techniques, each switchable (bench/decode.py measures them one by one):

* prefix cache: the KV of what precedes the first image (system prompt, "<|im_start|>user\n
  <|vision_start|>") is computed once, kept (LRU by token ids) and copied into every batch.
  `reset()` drops it: call it after the weights change.
* forced tokens: a token the grammar forces (the space after a number that cannot grow without
  exceeding B or that is "0", the <|im_end|> after the N-th number) is appended without asking
  the model and fed with the next pass. The count of numbers is the grammar's.
* speculative decoding: a draft of what follows is verified in the same forward pass that feeds
  the pending tokens (the first pass carries the prompt too); the longest prefix equal to the
  model's greedy grammar-constrained choices is accepted, plus the model's own next token.
  Drafts are built per *number*, so after a mismatch they re-align at the next number:
    - the caller's draft: the previous chunk shifted by the executed steps
      (`draft_candidates(prev_bins, shift)`: shifted by the executed steps, and by one step
      less and more), of which the one that matches the numbers written so far is followed;
    - prompt lookup: number m guessed as number m-D (the same dimension one step earlier),
      for the last step and when there is no previous chunk;
    - re-drafting (Jacobi style): past a rejected token, the model's own choices from that pass
      replace the drafted digits, so scattered wrong last digits are fixed in one more pass.
* relaxed acceptance (`relaxed_k > 0`, off by default, NOT exact): a drafted digit is kept when
  the model's digit at that place changes the number by at most k bins.

Batching: all rows' pending + draft tokens go through one padded forward pass with per-row rope
positions. The KV columns of a row's rejected draft tokens stay in the shared cache, masked for
that row; after each pass finished rows leave the batch and every row's valid columns are packed
to the left (order is irrelevant once rope is applied), so the cache never carries garbage for
long. Only the grammar tokens' logits are computed (the matching lm_head rows: 12 for text).

Exactness: greedy choices equal `generate`'s up to floating-point rounding (a different batch
layout and kernel shapes change logits in the last bits, so an exact tie between two digits can
break differently; trained models are never that close). The generation config's
repetition_penalty, which `generate` applies, is applied the same way here. Greedy only:
sampling and scoring are vla0.policy.decoder's. Files: drafts.py (draft building),
kv_cache.py (the cache and the forward passes).
"""

from __future__ import annotations

import numpy as np
import torch

from vla0.grammar import START, ActionGrammar
from vla0.policy.drafts import Drafter
from vla0.policy.kv_cache import CachedForward, KVCache


class _Row:
    __slots__ = ("tokens", "numbers", "state", "pending", "pos", "draft", "seen", "passes", "window", "refined")

    def __init__(self, draft, seen, window):
        self.tokens: list[int] = []  # committed generated tokens
        self.numbers: list[int] = []  # completed numbers
        self.state = START
        self.pending: list[int] = []  # committed tokens whose KV is not cached yet
        self.pos = 0  # rope position of the first pending token
        self.draft = draft  # alternative lists of guessed numbers, or None
        self.seen = seen  # grammar-token columns present in prompt+output (repetition penalty)
        self.passes = 0
        self.window = window  # draft tokens verified per pass (adapted to how much gets accepted)
        self.refined: dict[int, int] = {}  # number index -> the model's own guess from the last pass


class FastDecoder(Drafter, CachedForward):
    """Exact, batched, speculative decoder for VLA-0 action text.

        decoder = FastDecoder(model, processor.grammar, config.action_dim, pad_id)
        tokens = decoder.decode_ids(prompts, drafts)  # as greedy `generate` under the grammar

    prompts: ActionProcessor.prompt(...) results. drafts[i]: None, a flat list of guessed
    numbers, or a list of alternatives (draft_candidates(prev_bins, shift)).
    Options: prefix_cache, forced, speculative (drafting at all), lookup (number m-D drafts),
    refine (re-drafting from the model's choices), relaxed_k (inexact; 0 = off), max_draft /
    first_draft (draft tokens per row per pass, in later passes / in the first one),
    batch_draft_tokens (cap per pass shared by the rows; None = no cap), adaptive (grow/shrink
    the window with acceptance). `stats` accumulates counts over calls, `last_stats` holds the
    last call's, `last_row_passes` the passes each row of the last call took part in.
    """

    STAT_KEYS = ("chunks", "forward_passes", "prefix_passes", "tokens", "forced_tokens",
                 "model_tokens", "draft_tokens", "accepted_tokens", "row_passes")

    def __init__(self, model, grammar: ActionGrammar, action_dim: int, pad_id: int = 0, *,
                 prefix_cache: bool = True, forced: bool = True, speculative: bool = True, lookup: bool = True,
                 relaxed_k: int = 0, refine: bool = True, max_draft: int = 64, first_draft: int = 256,
                 min_draft: int = 8, alt_draft: int = 32, adaptive: bool = False,
                 batch_draft_tokens: int | None = 256, repetition_penalty: float | None = None,
                 max_prefixes: int = 8):
        self.model = model  # a Qwen2_5_VLForConditionalGeneration (not a PEFT wrapper)
        self.fsm = grammar
        self.D = action_dim  # numbers per step: prompt lookup guesses number m as number m - D
        self.pad_id = pad_id
        self.prefix_cache = prefix_cache
        self.forced = forced
        self.speculative = speculative
        self.lookup = lookup
        self.relaxed_k = int(relaxed_k)
        self.max_draft = max_draft
        self.first_draft = first_draft
        self.min_draft = min(min_draft, max_draft)
        self.adaptive = adaptive
        self.refine = refine
        self.batch_draft_tokens = batch_draft_tokens
        self.alt_draft = alt_draft
        self.pack_min = 32  # masked cache columns tolerated before packing (tests set 0)
        if repetition_penalty is None:
            repetition_penalty = getattr(getattr(model, "generation_config", None), "repetition_penalty", None)
        self.repetition_penalty = float(repetition_penalty or 1.0)
        self.max_prefixes = max_prefixes
        self.stats = dict.fromkeys(self.STAT_KEYS, 0)
        self.last_stats = dict.fromkeys(self.STAT_KEYS, 0)
        self._init_forward()

    # -- public API ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget cached prefixes (call after the weights change) and zero the statistics."""
        self._prefixes.clear()
        self._head_cache = None
        self.stats = dict.fromkeys(self.STAT_KEYS, 0)

    @torch.no_grad()
    def decode_ids(self, prompts, drafts=None, forced=None) -> list[list[int]]:
        """Generated token ids per prompt, ending with <|im_end|>. drafts[i]: None, a list of
        guessed numbers for the new chunk (any length; e.g. the previous chunk's bins[1:]
        flattened), or a list of such lists (alternatives, the first preferred).
        forced[i]: tokens the output must start with (real-time chunking: the actions committed
        while this chunk was computed). They are fed with the prompt in the prefill, as if the
        model had written them, and the grammar continues from there: what follows is exactly
        the greedy continuation of that prefix. Returned tokens include them."""
        if not prompts:
            return []
        drafts = list(drafts) if drafts is not None else [None] * len(prompts)
        if len(drafts) != len(prompts):
            raise ValueError(f"{len(drafts)} drafts for {len(prompts)} prompts")
        forced = [list(f or []) for f in forced] if forced is not None else [[] for _ in prompts]
        if len(forced) != len(prompts):
            raise ValueError(f"{len(forced)} forced prefixes for {len(prompts)} prompts")
        call = dict.fromkeys(self.STAT_KEYS, 0)
        call["chunks"] = len(prompts)
        lm = self.model.model.language_model
        device = lm.embed_tokens.weight.device
        weight, bias = self._head()

        prefix_len, prefix_kv = self._prefix(prompts, call)
        penal = self.repetition_penalty != 1.0
        rows = []
        for p, d in zip(prompts, drafts):
            d = self._candidates(d)
            seen = {self.fsm.col[t] for t in set(p.input_ids) if t in self.fsm.col} if penal else set()
            rows.append(_Row(d, seen, self.first_draft))

        # --- prefill: the prompt after the cached prefix, plus each row's draft ---------------
        B = len(prompts)
        ctx_ids, ctx_pos = [], []
        for row, p, f in zip(rows, prompts, forced):
            pos = self._rope_positions(p, device)  # (3, len)
            row.pos = int(pos.max()) + 1
            # a forced prefix continues the text positions after the prompt, as generated tokens do
            ctx_ids.append(list(p.input_ids[prefix_len:]) + f)
            ctx_pos.append(np.concatenate([pos[:, prefix_len:].cpu().numpy(),
                                           np.broadcast_to(np.arange(row.pos, row.pos + len(f)), (3, len(f)))], axis=1))
            for t in f:
                if row.state[2] or t not in self.fsm.allowed(row.state):
                    raise ValueError(f"forced prefix token {t} is not allowed by the action grammar after "
                                     f"{len(row.tokens)} tokens (state {row.state})")
                self._commit(row, t, cached=True)
            row.pos += len(f)
        if prefix_kv is not None:
            cache = KVCache([(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in prefix_kv])
            valid = torch.ones(B, prefix_len, dtype=torch.bool, device=device)
        else:
            empty = torch.zeros(B, lm.config.num_key_value_heads, 0, self._head_dim(),
                                dtype=weight.dtype, device=device)
            cache = KVCache([(empty, empty) for _ in range(lm.config.num_hidden_layers)])
            valid = torch.zeros(B, 0, dtype=torch.bool, device=device)
        budget = self._budget(B, first=True)
        drafted = [self._branches(r, budget) for r in rows]
        images = (torch.cat([p.pixel_values for p in prompts]).to(device),
                  torch.cat([p.image_grid_thw for p in prompts]).to(device))
        active = list(range(B))
        first = True
        while active:
            # each row feeds its context (the prompt, then its pending tokens) and its draft
            # branches side by side; a branch sees the context and itself only
            feeds, positions, segments, n_ctx = [], [], [], []
            for j, i in enumerate(active):
                row = rows[i]
                ctx = ctx_ids[i] if first else row.pending
                start = row.pos if first else row.pos + len(ctx)
                toks, seg = list(ctx), [0] * len(ctx)
                pos = [ctx_pos[i]] if first else [np.arange(row.pos, start)]
                for b, branch in enumerate(drafted[i]):
                    toks += branch
                    seg += [b + 1] * len(branch)
                    pos.append(np.arange(start, start + len(branch)))
                feeds.append(toks)
                segments.append(seg)
                positions.append(np.concatenate([np.broadcast_to(q, (3, q.shape[-1])) for q in pos], axis=1))
                n_ctx.append(len(ctx))
            hidden = self._forward(lm, feeds, positions, segments, cache, valid, images if first else None, device)
            call["forward_passes"] += 1
            # logits of the grammar tokens wherever a decision is made: the last context token,
            # then after every draft token of every branch
            index = []
            for j, i in enumerate(active):
                o = n_ctx[j]
                for branch in drafted[i]:
                    index.append((j, n_ctx[j] - 1))
                    index.extend((j, o + t) for t in range(len(branch)))
                    o += len(branch)
            rows_t = torch.tensor(index, device=device)
            logits = torch.nn.functional.linear(hidden[rows_t[:, 0], rows_t[:, 1]], weight, bias)
            logits = logits.float().cpu().numpy()
            keep, offset = [], 0
            for j, i in enumerate(active):
                row = rows[i]
                row.passes += 1
                if not first:
                    row.pos += len(row.pending)
                    row.pending = []
                best, o = None, n_ctx[j]
                for branch in drafted[i]:
                    states, choices = self._choices(row, branch, logits[offset: offset + len(branch) + 1])
                    a = self._accepted(branch, states, choices)
                    if best is None or a > best[0]:
                        best = (a, branch, states, choices, o)
                    offset += len(branch) + 1
                    o += len(branch)
                accepted, branch, states, choices, o = best
                self._verify(row, branch, states, choices, accepted, call)
                call["draft_tokens"] += sum(len(b) for b in drafted[i])
                d = drafted[i][0] if drafted[i] else []
                if not self.adaptive:
                    row.window = self.max_draft
                elif d:
                    # all accepted: the draft is good, verify more next time; else about twice
                    # what was accepted (a wrong digit ends the run; re-aligned drafts resume)
                    row.window = (min(self.max_draft, 2 * row.window) if accepted == len(d)
                                  else max(self.min_draft, min(self.max_draft, 2 * accepted + self.min_draft)))
                row.pos += accepted
                keep.append(list(range(n_ctx[j])) + list(range(o, o + accepted)))
            first = False
            # cache bookkeeping: columns of rejected draft tokens become invalid for their row;
            # finished rows leave; then each row's valid columns are packed to the left (their
            # order is irrelevant: rope is already applied to the cached keys)
            L = hidden.shape[1]
            new_valid = torch.zeros(len(keep), L, dtype=torch.bool)
            for j, cols in enumerate(keep):
                new_valid[j, cols] = True
            valid = torch.cat([valid, new_valid.to(device)], dim=1)
            still = [j for j, i in enumerate(active) if not rows[i].state[2]]
            if not still:
                break
            if len(still) < len(active):
                sel = torch.tensor(still, device=device, dtype=torch.long)
                cache.select(sel)
                valid = valid[sel]
                active = [active[j] for j in still]
            used = int(valid.any(0).nonzero().max()) + 1
            if used < valid.shape[1]:  # a tail no row needs (at batch 1: the rejected draft)
                cache.crop(used)
                valid = valid[:, :used]
            counts = valid.sum(1)
            width = int(counts.max())
            if used - width > (max(self.pack_min, used // 4) if self.pack_min else 0):  # worth a copy
                order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices[:, :width]
                cache.gather(order)
                valid = torch.arange(width, device=device)[None, :] < counts[:, None]
            budget = self._budget(len(active))
            for i in active:
                drafted[i] = self._branches(rows[i], budget)

        for row in rows:
            call["tokens"] += len(row.tokens)
            call["row_passes"] += row.passes
        for k, v in call.items():
            self.stats[k] += v
        self.last_stats = call
        self.last_row_passes = [r.passes for r in rows]
        return [r.tokens for r in rows]

    # -- internals ----------------------------------------------------------------------------
    def _commit(self, row: _Row, tok: int, cached: bool) -> None:
        state = row.state
        row.tokens.append(tok)
        number = self.fsm.completed(state, tok)
        if number is not None:
            row.numbers.append(number)
        row.state = self.fsm.advance(state, tok)
        if self.repetition_penalty != 1.0:
            row.seen.add(self.fsm.col[tok])
        if not cached:
            row.pending.append(tok)

    def _choices(self, row: _Row, draft: list[int], logits: np.ndarray):
        """The model's greedy grammar-constrained choice at every position of the draft, each
        given the draft before it: (states before each position, chosen token ids). Stops after a
        draft token the grammar rejects or that ends the chunk."""
        fsm = self.fsm
        states = [row.state]
        for t in draft:
            s = states[-1]
            if s[2] or t not in fsm.allowed(s):
                break
            states.append(fsm.advance(s, t))
        if states[-1][2]:
            states.pop()
        m = len(states)
        x = logits[:m]
        if self.repetition_penalty != 1.0:
            seen = np.zeros((m, len(fsm.ids)), bool)
            seen[:, list(row.seen)] = True
            for j in range(1, m):
                seen[j:, fsm.col[draft[j - 1]]] = True
            p = np.float32(self.repetition_penalty)
            x = np.where(seen, np.where(x < 0, x * p, x / p), x)
        masks = np.stack([fsm.mask(s) for s in states])
        cols = np.argmax(np.where(masks, x, -np.inf), axis=1)  # first maximum: lowest token id, as generate
        return states, fsm.ids_arr[cols].tolist()

    def _accepted(self, draft: list[int], states, choices) -> int:
        """How many leading draft tokens the model's choices accept."""
        a = 0
        for j, choice in enumerate(choices):
            if j >= len(draft):
                break
            t = draft[j]
            if not (t == choice or (self.relaxed_k > 0 and self._relaxed_ok(draft, j, choice, states[j]))):
                break
            a += 1
        return a

    def _verify(self, row: _Row, draft: list[int], states, choices, accepted: int, call) -> None:
        """Commit the accepted draft tokens (cached), then the model's own next token and any
        forced tokens (pending)."""
        for t in draft[:accepted]:
            self._commit(row, t, cached=True)
        if accepted < len(choices):
            self._commit(row, choices[accepted], cached=False)
            call["model_tokens"] += 1
        # (else the draft's <|im_end|> was accepted and the chunk is complete)
        call["accepted_tokens"] += accepted
        if self.refine and accepted < len(draft) and not row.state[2]:
            self._refine(row, states, choices, accepted)
        if self.forced:
            while not row.state[2]:
                allowed = self.fsm.allowed(row.state)
                if len(allowed) != 1:
                    break
                self._commit(row, allowed[0], cached=False)
                call["forced_tokens"] += 1

    def _relaxed_ok(self, draft, j: int, choice: int, state) -> bool:
        t = draft[j]
        if not self.fsm.separator:  # one token per number (bins): compare the bins themselves
            a, b = self.fsm.completed(state, t), self.fsm.completed(state, choice)
            return a is not None and b is not None and abs(a - b) <= self.relaxed_k
        dig = self.fsm.digit_of
        if t not in dig or choice not in dig or t not in self.fsm.allowed(state):
            return False
        rest = 0
        for u in draft[j + 1:]:
            if u not in dig:
                break
            rest += 1
        return abs(dig[t] - dig[choice]) * 10 ** rest <= self.relaxed_k

