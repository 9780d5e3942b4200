"""Fast exact decoding of VLA-0 action text: the same tokens as greedy `generate` under the
digit grammar (vla0.policy.grammar), in far fewer model forward passes.

Four techniques, each switchable (the benchmark in bench/decode.py measures them one by one):

* prefix cache: the KV of what precedes the first image (system prompt, "<|im_start|>user\\n
  <|vision_start|>") is computed once, stored, and copied into every batch; `reset()` drops it
  (call it after the weights change).
* forced tokens: a token the grammar forces (the space after a number that cannot grow without
  exceeding B or that is "0", the end-of-turn after the N-th number) is appended without asking
  the model; it is fed with the next forward pass. The count of numbers is the grammar's.
* speculative decoding: a draft of the rest of the chunk is verified in the same forward pass
  that feeds the pending tokens; the longest prefix that equals the model's greedy
  (grammar-constrained) choice is accepted, plus the model's own next token. Drafts are made
  per *number*: number m of the new chunk is guessed as number m of the caller's draft (the
  previous chunk shifted by one control step: `draft_from_bins(prev_bins)`), else as number m-D
  (the same dimension one step earlier: a prompt-lookup draft that needs no previous chunk).
  After a mismatch the draft is re-aligned at the next number boundary, so one wrong digit
  costs one extra pass, not the rest of the chunk.
* relaxed acceptance (`relaxed_k > 0`, off by default, NOT exact): a drafted digit is kept when
  the model's digit at that place changes the number by at most k bins.

Batching: all rows' pending+draft tokens go through one padded forward pass. Each row keeps its
own rope positions; the KV columns of a row's rejected draft tokens stay in the shared cache but
are masked out for that row by a per-row validity mask (trailing columns no row needs are cropped,
finished rows leave the batch). Only the 12 grammar tokens' logits are computed (lm_head rows).

Exactness: greedy choices equal `generate`'s up to floating-point rounding (a different batch
layout and kernel shapes change logits in the last bits, so an exact tie between two digits can
break differently; a trained model is never that close). The generation config's
repetition_penalty, which `generate` applies, is applied the same way here.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from vla0.policy.grammar import ActionGrammar

_FINISHED = (-1, "", True)


def draft_from_bins(prev_bins, shift: int = 1) -> list[int]:
    """The draft for a new chunk: the previous chunk's bins (H, D) without its first `shift`
    steps (the steps executed since it was predicted), flattened."""
    prev = np.asarray(prev_bins)
    return [int(v) for v in prev[shift:].reshape(-1)]


class _GrammarFSM:
    """ActionGrammar as an incremental state machine. A state is (numbers completed, digits of
    the number being written, finished); allowed sets equal ActionGrammar.allowed's."""

    def __init__(self, grammar: ActionGrammar):
        self.N, self.B = grammar.num_values, grammar.num_bins
        self.space, self.end = grammar.space_id, grammar.end_id
        self.digit_ids = list(grammar.digit_ids)
        self.digit_of = {t: d for d, t in enumerate(self.digit_ids)}
        self.ids = sorted(set(self.digit_ids) | {self.space, self.end})  # vocab order: argmax ties
        self.col = {t: i for i, t in enumerate(self.ids)}
        self._memo: dict[tuple[bool, str], tuple[int, ...]] = {}

    def allowed(self, state) -> tuple[int, ...]:
        """Allowed token ids, ascending."""
        done, cur, finished = state
        if finished:
            return (self.end,)
        last = done + 1 >= self.N
        key = (last, cur)
        out = self._memo.get(key)
        if out is None:
            if not cur:
                toks = [t for d, t in enumerate(self.digit_ids) if d <= self.B]
            else:
                toks = [] if cur == "0" else [t for d, t in enumerate(self.digit_ids) if int(cur + str(d)) <= self.B]
                toks.append(self.end if last else self.space)
            out = self._memo[key] = tuple(sorted(toks))
        return out

    def advance(self, state, tok: int):
        done, cur, finished = state
        if finished or tok == self.end:
            return (done + 1 if not finished else done, "", True)
        if tok == self.space:
            return (done + 1, "", False)
        return (done, cur + str(self.digit_of[tok]), False)


class _KV:
    """Minimal KV cache with the `update` interface the attention layers call."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]]):
        self.layers = [list(kv) for kv in layers]

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        k, v = self.layers[layer_idx]
        k = torch.cat([k, key_states], dim=-2)
        v = torch.cat([v, value_states], dim=-2)
        self.layers[layer_idx] = [k, v]
        return k, v

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx][0].shape[-2]

    def crop(self, length: int) -> None:
        for kv in self.layers:
            kv[0], kv[1] = kv[0][..., :length, :], kv[1][..., :length, :]

    def select(self, rows: torch.Tensor) -> None:
        for kv in self.layers:
            kv[0], kv[1] = kv[0][rows], kv[1][rows]


class _Row:
    __slots__ = ("tokens", "numbers", "state", "pending", "pos", "draft", "seen", "passes", "window", "refined")

    def __init__(self, draft, seen, window):
        self.tokens: list[int] = []  # committed generated tokens
        self.numbers: list[int] = []  # completed numbers
        self.state = (0, "", False)
        self.pending: list[int] = []  # committed tokens whose KV is not cached yet
        self.pos = 0  # rope position of the first pending token
        self.draft = draft  # list of guessed numbers, or None
        self.seen = seen  # grammar-token columns present in prompt+output (repetition penalty)
        self.passes = 0
        self.window = window  # draft tokens verified per pass (adapted to how much gets accepted)
        self.refined: dict[int, int] = {}  # number index -> the model's own guess from the last pass


class FastDecoder:
    """Exact, batched, speculative decoder for VLA-0 action text.

    decoder = FastDecoder(vlm.model, vlm.tokenizer, grammar, encoder)
    texts = decoder.decode(prompts, drafts)   # drafts[i]: draft_from_bins(prev_bins_i) or None
    """

    STAT_KEYS = ("chunks", "forward_passes", "prefix_passes", "tokens", "forced_tokens",
                 "model_tokens", "draft_tokens", "accepted_tokens", "row_passes")

    def __init__(self, model, tokenizer, grammar: ActionGrammar, encoder=None, *, prefix_cache: bool = True,
                 forced: bool = True, speculative: bool = True, lookup: bool = True, relaxed_k: int = 0,
                 max_draft: int = 256, min_draft: int = 8, adaptive: bool = True, refine: bool = True, action_dim: int | None = None, repetition_penalty: float | None = None,
                 max_prefixes: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        self.grammar = grammar
        self.fsm = _GrammarFSM(grammar)
        self.prefix_cache = prefix_cache
        self.forced = forced
        self.speculative = speculative
        self.lookup = lookup
        self.relaxed_k = int(relaxed_k)
        self.max_draft = max_draft
        self.min_draft = min(min_draft, max_draft)
        self.adaptive = adaptive
        self.refine = refine
        if action_dim is None and encoder is not None:
            action_dim = encoder.config.action_dim
        self.D = action_dim or 0
        if repetition_penalty is None:
            repetition_penalty = getattr(getattr(model, "generation_config", None), "repetition_penalty", None)
        self.repetition_penalty = float(repetition_penalty or 1.0)
        self.image_token_id = model.config.image_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.max_prefixes = max_prefixes
        self._prefixes: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self.stats = dict.fromkeys(self.STAT_KEYS, 0)
        self.last_stats = dict.fromkeys(self.STAT_KEYS, 0)
        self._head_cache = None

    # -- public API ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget cached prefixes (call after the weights change) and zero the statistics."""
        self._prefixes.clear()
        self._head_cache = None
        self.stats = dict.fromkeys(self.STAT_KEYS, 0)

    @staticmethod
    def draft_from_bins(prev_bins, shift: int = 1) -> list[int]:
        return draft_from_bins(prev_bins, shift)

    def decode(self, prompts, drafts=None) -> list[str]:
        """Action text per prompt (Encoded from PromptEncoder.prompt), as `generate_text` returns it."""
        ids = self.decode_ids(prompts, drafts)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    @torch.no_grad()
    def decode_ids(self, prompts, drafts=None) -> list[list[int]]:
        """Generated token ids per prompt, ending with <|im_end|>. drafts[i] is a list of guessed
        numbers for the new chunk (any length; e.g. the previous chunk's bins[1:] flattened) or None."""
        if not prompts:
            return []
        drafts = list(drafts) if drafts is not None else [None] * len(prompts)
        if len(drafts) != len(prompts):
            raise ValueError(f"{len(drafts)} drafts for {len(prompts)} prompts")
        call = dict.fromkeys(self.STAT_KEYS, 0)
        call["chunks"] = len(prompts)
        lm = self.model.model.language_model
        device = lm.embed_tokens.weight.device
        weight, bias = self._head()

        prefix_len, prefix_kv = self._prefix(prompts, call)
        penal = self.repetition_penalty != 1.0
        rows = []
        for p, d in zip(prompts, drafts):
            d = None if d is None else [min(max(int(v), 0), self.fsm.B) for v in d]
            seen = {self.fsm.col[t] for t in set(p.input_ids) if t in self.fsm.col} if penal else set()
            rows.append(_Row(d, seen, self.max_draft))

        # --- prefill: the prompt after the cached prefix, plus each row's draft ---------------
        B = len(prompts)
        ctx_ids, ctx_pos = [], []
        for row, p in zip(rows, prompts):
            pos = self._rope_positions(p, device)  # (3, len)
            ctx_ids.append(list(p.input_ids[prefix_len:]))
            ctx_pos.append(pos[:, prefix_len:])
            row.pos = int(pos.max()) + 1
        if prefix_kv is not None:
            cache = _KV([(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in prefix_kv])
            valid = torch.ones(B, prefix_len, dtype=torch.bool, device=device)
        else:
            empty = torch.zeros(B, lm.config.num_key_value_heads, 0, self._head_dim(), dtype=weight.dtype, device=device)
            cache = _KV([(empty, empty) for _ in range(lm.config.num_hidden_layers)])
            valid = torch.zeros(B, 0, dtype=torch.bool, device=device)
        drafted = [self._draft_tokens(r) for r in rows]
        images = (torch.cat([p.pixel_values for p in prompts]).to(device),
                  torch.cat([p.image_grid_thw for p in prompts]).to(device))
        active = list(range(B))
        first = True
        while active:
            feeds, positions, n_ctx = [], [], []
            for j, i in enumerate(active):
                row = rows[i]
                if first:
                    ctx, cpos = ctx_ids[i], ctx_pos[i]
                else:
                    ctx = row.pending
                    cpos = None
                d = drafted[i]
                feeds.append(ctx + d)
                n_ctx.append(len(ctx))
                start = row.pos
                tail = torch.arange(start, start + len(d) + (0 if first else len(ctx)), device=device)
                if first:
                    positions.append(torch.cat([cpos, tail.expand(3, -1)], dim=1))
                else:
                    positions.append(tail.expand(3, -1))
            hidden = self._forward(lm, feeds, positions, cache, valid, images if first else None, device)
            call["forward_passes"] += 1
            # logits of the grammar tokens at every position where a decision is made
            index = []
            for j, i in enumerate(active):
                base = n_ctx[j] - 1
                index.extend((j, base + t) for t in range(len(drafted[i]) + 1))
            rows_t = torch.tensor(index, device=device)
            logits = torch.nn.functional.linear(hidden[rows_t[:, 0], rows_t[:, 1]], weight, bias)
            logits = logits.float().cpu().numpy()
            keep, offset = [], 0
            for j, i in enumerate(active):
                row = rows[i]
                d = drafted[i]
                row.passes += 1
                if not first:
                    row.pos += len(row.pending)
                    row.pending = []
                accepted = self._verify(row, d, logits[offset: offset + len(d) + 1], call)
                if self.adaptive and d:
                    # all accepted: the draft is good, verify more next time; else about twice
                    # what was accepted (a wrong digit ends the run; re-aligned drafts resume)
                    row.window = (min(self.max_draft, 2 * row.window) if accepted == len(d)
                                  else max(self.min_draft, min(self.max_draft, 2 * accepted + self.min_draft)))
                offset += len(d) + 1
                row.pos += accepted
                keep.append(n_ctx[j] + accepted)
            first = False
            # cache bookkeeping: columns of rejected draft tokens become invalid for their row
            L = hidden.shape[1]
            new_valid = torch.arange(L, device=device)[None, :] < torch.tensor(keep, device=device)[:, None]
            valid = torch.cat([valid, new_valid], dim=1)
            used = int(valid.any(0).nonzero().max()) + 1 if valid.numel() else 0
            if used < valid.shape[1]:
                valid = valid[:, :used]
                cache.crop(used)
            still = [j for j, i in enumerate(active) if not rows[i].state[2]]
            if len(still) < len(active):
                sel = torch.tensor(still, device=device, dtype=torch.long)
                cache.select(sel)
                valid = valid[sel]
                active = [active[j] for j in still]
            for i in active:
                drafted[i] = self._draft_tokens(rows[i])

        for row in rows:
            call["tokens"] += len(row.tokens)
            call["row_passes"] += row.passes
        for k, v in call.items():
            self.stats[k] += v
        self.last_stats = call
        self.last_row_passes = [r.passes for r in rows]
        return [r.tokens for r in rows]

    # -- internals ----------------------------------------------------------------------------
    def _head(self):
        if self._head_cache is None:
            head = self.model.lm_head
            ids = torch.tensor(self.fsm.ids, device=head.weight.device)
            w = head.weight.detach()[ids].contiguous()
            b = None if head.bias is None else head.bias.detach()[ids].contiguous()
            self._head_cache = (w, b)
        return self._head_cache

    def _head_dim(self) -> int:
        cfg = self.model.model.language_model.config
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def _rope_positions(self, p, device) -> torch.Tensor:
        ids = torch.tensor([p.input_ids], device=device)
        types = torch.tensor([p.mm_token_type_ids], device=device)
        pos, _ = self.model.model.get_rope_index(ids, mm_token_type_ids=types,
                                                 image_grid_thw=p.image_grid_thw.to(device))
        return pos[:, 0]

    def _prefix(self, prompts, call):
        """Length and KV (batch 1) of the shared text before the first image, cached."""
        if not self.prefix_cache:
            return 0, None
        first = prompts[0].input_ids
        limit = min(len(p.input_ids) for p in prompts)
        for p in prompts:
            types = p.mm_token_type_ids
            limit = min(limit, types.index(1) if 1 in types else len(types) - 1)
        n = 0
        while n < limit and all(p.input_ids[n] == first[n] for p in prompts):
            n += 1
        n = min(n, limit)
        if n == 0:
            return 0, None
        key = tuple(first[:n])
        kv = self._prefixes.get(key)
        if kv is None:
            lm = self.model.model.language_model
            device = lm.embed_tokens.weight.device
            cache = _KV([(None, None)] * lm.config.num_hidden_layers)
            cache.update = _first_update(cache)
            embeds = lm.embed_tokens(torch.tensor([key], device=device))
            pos = torch.arange(n, device=device).view(1, 1, -1).expand(3, 1, -1)
            mask = torch.ones(n, n, dtype=torch.bool, device=device).tril()[None, None]
            lm(inputs_embeds=embeds, position_ids=pos, attention_mask=self._mask_dict(lm, mask, embeds.dtype),
               past_key_values=cache, use_cache=True)
            kv = [(k, v) for k, v in cache.layers]
            self._prefixes[key] = kv
            while len(self._prefixes) > self.max_prefixes:
                self._prefixes.popitem(last=False)
            call["prefix_passes"] += 1
        else:
            self._prefixes.move_to_end(key)
        return n, kv

    def _mask_dict(self, lm, mask: torch.Tensor, dtype) -> dict:
        if lm.config._attn_implementation == "eager":
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        return {"full_attention": mask, "sliding_attention": mask}

    def _forward(self, lm, feeds, positions, cache: _KV, valid, images, device):
        B = len(feeds)
        L = max(len(f) for f in feeds)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        pos = torch.zeros(3, B, L, dtype=torch.long, device=device)
        for j, (f, p) in enumerate(zip(feeds, positions)):
            ids[j, :len(f)] = torch.tensor(f)
            pos[:, j, :len(f)] = p
            if len(f) < L:  # padding continues the row's positions (its outputs are ignored)
                last = p[:, -1:] if len(f) else torch.zeros(3, 1, dtype=torch.long, device=device)
                pos[:, j, len(f):] = last + torch.arange(1, L - len(f) + 1, device=device)
        ids = ids.to(device)
        embeds = lm.embed_tokens(ids)
        if images is not None:
            pixel_values, grid = images
            feats = self.model.model.get_image_features(pixel_values.to(embeds.dtype), grid, return_dict=True)
            feats = torch.cat(list(feats.pooler_output), dim=0).to(embeds.dtype)
            image_mask = (ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(image_mask, feats)
        T = valid.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        mask = torch.cat([valid[:, None, None, :].expand(B, 1, L, T), causal[None, None].expand(B, 1, L, L)], dim=-1)
        out = lm(inputs_embeds=embeds, position_ids=pos, attention_mask=self._mask_dict(lm, mask, embeds.dtype),
                 past_key_values=cache, use_cache=True)
        return out.last_hidden_state

    def _commit(self, row: _Row, tok: int, cached: bool) -> None:
        state = row.state
        row.tokens.append(tok)
        if tok == self.fsm.space or tok == self.fsm.end:
            if not state[2] and state[1]:
                row.numbers.append(int(state[1]))
        row.state = self.fsm.advance(state, tok)
        if self.repetition_penalty != 1.0:
            row.seen.add(self.fsm.col[tok])
        if not cached:
            row.pending.append(tok)

    def _choose(self, row: _Row, allowed, logits_row) -> int:
        if self.repetition_penalty != 1.0 and row.seen:
            x = logits_row.copy()
            p = np.float32(self.repetition_penalty)
            for c in row.seen:
                x[c] = x[c] * p if x[c] < 0 else x[c] / p
            logits_row = x
        col = self.fsm.col
        best, best_v = allowed[0], logits_row[col[allowed[0]]]
        for t in allowed[1:]:
            v = logits_row[col[t]]
            if v > best_v:
                best, best_v = t, v
        return best

    def _relaxed_ok(self, row: _Row, draft, j: int, choice: int, allowed) -> bool:
        t = draft[j]
        dig = self.fsm.digit_of
        if t not in allowed or t not in dig or choice not in dig:
            return False
        rest = 0
        for u in draft[j + 1:]:
            if u not in dig:
                break
            rest += 1
        return abs(dig[t] - dig[choice]) * 10 ** rest <= self.relaxed_k

    def _verify(self, row: _Row, draft: list[int], logits, call) -> int:
        """Walk the draft against the model's greedy choices; commit the accepted draft tokens
        (cached), then the model's own next token and any forced tokens (pending). Returns the
        number of draft tokens accepted."""
        accepted, state0 = 0, row.state
        for j in range(len(draft) + 1):
            allowed = self.fsm.allowed(row.state)
            if len(allowed) == 1:
                choice = allowed[0]
            else:
                choice = self._choose(row, allowed, logits[j])
            if j < len(draft):
                t = draft[j]
                if t == choice or (self.relaxed_k > 0 and self._relaxed_ok(row, draft, j, choice, allowed)):
                    self._commit(row, t, cached=True)
                    accepted += 1
                    if row.state[2]:
                        break
                    continue
            self._commit(row, choice, cached=False)
            call["model_tokens"] += 1
            break
        call["draft_tokens"] += len(draft)
        call["accepted_tokens"] += accepted
        if self.refine and accepted < len(draft) and not row.state[2]:
            self._refine(row, draft, logits, state0, accepted)
        if self.forced:
            while not row.state[2]:
                allowed = self.fsm.allowed(row.state)
                if len(allowed) != 1:
                    break
                self._commit(row, allowed[0], cached=False)
                call["forced_tokens"] += 1
        return accepted

    def _refine(self, row: _Row, draft: list[int], logits, state, rejected: int) -> None:
        """Jacobi-style re-drafting: past the first rejected token, the model's choices (made
        given the draft, so only approximately its real ones) replace the drafted digits, number
        by number. Independent mismatches (a last digit here and there) are then all fixed in
        the next pass instead of one per pass. Only the draft changes: exactness is untouched."""
        fsm = self.fsm
        numbers: dict[int, list] = {}  # number -> [drafted digits, {digit place: choice}]
        for j in range(len(draft) + 1):
            done, cur, finished = state
            if finished:
                break
            entry = numbers.setdefault(done, ["", {}])
            if j > rejected:
                allowed = fsm.allowed(state)
                entry[1][len(cur)] = allowed[0] if len(allowed) == 1 else self._choose(row, allowed, logits[j])
            if j == len(draft):
                break
            t = draft[j]
            if t not in fsm.allowed(state):
                break
            if t in fsm.digit_of:
                entry[0] += str(fsm.digit_of[t])
            state = fsm.advance(state, t)
        for n, (drafted, choices) in numbers.items():
            if not choices or n < row.state[0]:
                continue
            out = ""
            for k in range(len(drafted) + 1):
                c = choices.get(k)
                if c is None:
                    if k == len(drafted):
                        break
                    out += drafted[k]
                elif c in fsm.digit_of:
                    out += str(fsm.digit_of[c])
                    if k == len(drafted):
                        break
                else:
                    break
            if out:
                row.refined[n] = min(int(out), fsm.B)

    def _draft_tokens(self, row: _Row) -> list[int]:
        """Tokens guessed for what follows the row's committed text, number by number."""
        if not self.speculative or row.state[2]:
            return []
        done, cur, _ = row.state
        N, D = self.fsm.N, self.D
        numbers, draft = row.numbers, row.draft
        memo: dict[int, int | None] = {}

        def value(m: int):
            if m < done:
                return numbers[m]
            if m in memo:
                return memo[m]
            v = row.refined.get(m)
            if v is not None:
                pass
            elif draft is not None and m < len(draft):
                v = draft[m]
            elif self.lookup and D and m >= D:
                v = value(m - D)
            memo[m] = v
            return v

        v = value(done)
        if v is None:
            return []
        digits = self.fsm.digit_ids
        s = str(v)
        toks = [digits[int(c)] for c in s[len(cur):]] if len(s) > len(cur) else []
        m = done
        limit = row.window
        while len(toks) < limit:
            if m + 1 >= N:
                toks.append(self.fsm.end)
                break
            toks.append(self.fsm.space)
            m += 1
            v = value(m)
            if v is None:
                break
            toks.extend(digits[int(c)] for c in str(v))
        return toks[:limit]


def _first_update(cache: _KV):
    def update(key_states, value_states, layer_idx, cache_kwargs=None):
        cache.layers[layer_idx] = [key_states, value_states]
        return key_states, value_states
    return update
