"""Fast exact decoding of VLA-0 action text: the same tokens as greedy `generate` under the
digit grammar (vla0.policy.grammar), in far fewer model forward passes.

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
      (`draft_from_bins(prev_bins)` = prev[1:] flattened), or several alternatives
      (`draft_candidates(prev_bins)`: shifted by 1, 0 and 2 steps) of which the one that
      matches the numbers written so far is followed;
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
long. Only the 12 grammar tokens' logits are computed (the matching lm_head rows).

Exactness: greedy choices equal `generate`'s up to floating-point rounding (a different batch
layout and kernel shapes change logits in the last bits, so an exact tie between two digits can
break differently; trained models are never that close). The generation config's
repetition_penalty, which `generate` applies, is applied the same way here. Greedy only:
sampling stays with `generate`.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from vla0.policy.drafts import draft_candidates, draft_from_bins, is_nested
from vla0.policy.grammar import ActionGrammar, GrammarStateMachine
from vla0.policy.kv_cache import KVCache, first_update

_FINISHED = (-1, "", True)


class _Row:
    __slots__ = ("tokens", "numbers", "state", "pending", "pos", "draft", "seen", "passes", "window", "refined")

    def __init__(self, draft, seen, window):
        self.tokens: list[int] = []  # committed generated tokens
        self.numbers: list[int] = []  # completed numbers
        self.state = (0, "", False)
        self.pending: list[int] = []  # committed tokens whose KV is not cached yet
        self.pos = 0  # rope position of the first pending token
        self.draft = draft  # alternative lists of guessed numbers, or None
        self.seen = seen  # grammar-token columns present in prompt+output (repetition penalty)
        self.passes = 0
        self.window = window  # draft tokens verified per pass (adapted to how much gets accepted)
        self.refined: dict[int, int] = {}  # number index -> the model's own guess from the last pass


class FastDecoder:
    """Exact, batched, speculative decoder for VLA-0 action text.

        decoder = FastDecoder(vlm.model, vlm.tokenizer, grammar, encoder)
        texts = decoder.decode(prompts, drafts)  # as VLA0Policy.generate_text(prompts)

    prompts: PromptEncoder.prompt(...) results. drafts[i]: None, a flat list of guessed numbers
    (draft_from_bins(prev_bins)), or a list of alternatives (draft_candidates(prev_bins)).
    Options: prefix_cache, forced, speculative (drafting at all), lookup (number m-D drafts),
    refine (re-drafting from the model's choices), relaxed_k (inexact; 0 = off), max_draft /
    first_draft (draft tokens per row per pass, in later passes / in the first one),
    batch_draft_tokens (cap per pass shared by the rows; None = no cap), adaptive (grow/shrink
    the window with acceptance). `stats` accumulates counts over calls, `last_stats` holds the
    last call's, `last_row_passes` the passes each row of the last call took part in.
    """

    STAT_KEYS = ("chunks", "forward_passes", "prefix_passes", "tokens", "forced_tokens",
                 "model_tokens", "draft_tokens", "accepted_tokens", "row_passes")

    def __init__(self, model, tokenizer, grammar: ActionGrammar, encoder=None, *, prefix_cache: bool = True,
                 forced: bool = True, speculative: bool = True, lookup: bool = True, relaxed_k: int = 0,
                 refine: bool = True, max_draft: int = 64, first_draft: int = 256, min_draft: int = 8,
                 alt_draft: int = 32, adaptive: bool = False, batch_draft_tokens: int | None = 256,
                 action_dim: int | None = None,
                 repetition_penalty: float | None = None, max_prefixes: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        self.grammar = grammar
        self.fsm = GrammarStateMachine(grammar)
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
        lm = model.model.language_model
        self._direct = all(hasattr(lm, a) for a in ("layers", "rotary_emb", "norm", "embed_tokens")) and \
            all(t in ("full_attention", "sliding_attention") for t in getattr(lm.config, "layer_types", ["?"]))
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

    @staticmethod
    def draft_candidates(prev_bins, shift: int = 1) -> list[list[int]]:
        return draft_candidates(prev_bins, shift)

    def decode(self, prompts, drafts=None) -> list[str]:
        """Action text per prompt (Encoded from PromptEncoder.prompt), as `generate_text` returns it."""
        ids = self.decode_ids(prompts, drafts)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    @torch.no_grad()
    def decode_ids(self, prompts, drafts=None) -> list[list[int]]:
        """Generated token ids per prompt, ending with <|im_end|>. drafts[i]: None, a list of
        guessed numbers for the new chunk (any length; e.g. the previous chunk's bins[1:]
        flattened), or a list of such lists (alternatives, the first preferred)."""
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
            d = self._candidates(d)
            seen = {self.fsm.col[t] for t in set(p.input_ids) if t in self.fsm.col} if penal else set()
            rows.append(_Row(d, seen, self.first_draft))

        # --- prefill: the prompt after the cached prefix, plus each row's draft ---------------
        B = len(prompts)
        ctx_ids, ctx_pos = [], []
        for row, p in zip(rows, prompts):
            pos = self._rope_positions(p, device)  # (3, len)
            ctx_ids.append(list(p.input_ids[prefix_len:]))
            ctx_pos.append(pos[:, prefix_len:].cpu().numpy())
            row.pos = int(pos.max()) + 1
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
            cache = KVCache([(None, None)] * lm.config.num_hidden_layers)
            cache.update = first_update(cache)
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

    def _forward(self, lm, feeds, positions, segments, cache: KVCache, valid, images, device):
        """One forward pass over per-row token lists (padded to the longest) with their rope
        positions (3, len) and segment ids (0 context, b > 0 draft branch b)."""
        B = len(feeds)
        L = max(len(f) for f in feeds)
        ids = np.full((B, L), self.pad_id, np.int64)
        seg = np.full((B, L), -1, np.int64)
        pos = np.zeros((3, B, L), np.int64)
        for j, (f, p) in enumerate(zip(feeds, positions)):
            n = len(f)
            ids[j, :n] = f
            seg[j, :n] = segments[j]
            pos[:, j, :n] = p
            if n < L:  # padding continues the row's positions (its outputs are ignored)
                pos[:, j, n:] = (p[:, -1:] if n else 0) + np.arange(1, L - n + 1)
        ids = torch.from_numpy(ids).to(device)
        pos = torch.from_numpy(pos).to(device)
        embeds = lm.embed_tokens(ids)
        if images is not None:
            pixel_values, grid = images
            feats = self.model.model.get_image_features(pixel_values.to(embeds.dtype), grid, return_dict=True)
            feats = torch.cat(list(feats.pooler_output), dim=0).to(embeds.dtype)
            image_mask = (ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(image_mask, feats)
        T = valid.shape[1]
        causal = np.tri(L, dtype=bool)
        if seg.max() <= 1:  # context + at most one branch: plain causal
            block = torch.from_numpy(causal)[None, None].expand(B, 1, L, L)
        else:  # a token sees the context (segment 0) and its own branch; padding (-1) sees the context
            same = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])
            block = torch.from_numpy(causal[None] & same)[:, None]
        mask = torch.cat([valid[:, None, None, :].expand(B, 1, L, T), block.to(device)], dim=-1)
        masks = self._mask_dict(lm, mask, embeds.dtype)
        if not self._direct:
            out = lm(inputs_embeds=embeds, position_ids=pos, attention_mask=masks, past_key_values=cache,
                     use_cache=True)
            return out.last_hidden_state
        # the text model's own loop, without its wrapper (the same computation, less overhead)
        hidden = embeds
        rope = lm.rotary_emb(hidden, pos)
        for i, layer in enumerate(lm.layers):
            mask_i = masks[lm.config.layer_types[i]]
            hidden = layer(hidden, attention_mask=mask_i, position_embeddings=rope, past_key_values=cache, use_cache=True)
        return lm.norm(hidden)

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
        dig = self.fsm.digit_of
        if t not in dig or choice not in dig or t not in self.fsm.allowed(state):
            return False
        rest = 0
        for u in draft[j + 1:]:
            if u not in dig:
                break
            rest += 1
        return abs(dig[t] - dig[choice]) * 10 ** rest <= self.relaxed_k

    def _refine(self, row: _Row, states, choices, rejected: int) -> None:
        """Jacobi-style re-drafting: past the first rejected token, the model's choices (made
        given the draft, so only approximately its real ones) replace the drafted digits, number
        by number. Independent mismatches (a last digit here and there) are then all fixed in
        the next pass instead of one per pass. Only the draft changes: exactness is untouched."""
        fsm = self.fsm
        numbers: dict[int, list] = {}  # number -> [drafted digits, {digit place: choice}]
        for j, (done, cur, _) in enumerate(states):
            entry = numbers.get(done)
            if entry is None:
                entry = numbers[done] = ["", {}]
            if j > rejected:
                entry[1][len(cur)] = choices[j]
            if j + 1 < len(states) and states[j + 1][0] == done:
                entry[0] = states[j + 1][1]
        current = row.state[0]
        for n, (drafted, picked) in numbers.items():
            if not picked or n < current:
                continue
            if any((c in fsm.digit_of) != (k < len(drafted)) for k, c in picked.items()):
                # the model did not keep the drafted shape: past the next step's worth of
                # numbers its choices are misaligned noise, and the old guess is contradicted
                if n > current + max(1, self.D):
                    row.refined.pop(n, None)
                    continue
            # the model's digit where it chose one, else the drafted one; a separator chosen
            # inside the number ends it, a digit chosen after it lengthens it
            out = ""
            for k in range(len(drafted) + 1):
                c = picked.get(k)
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
            if out and (out[0] != "0" or out == "0"):
                row.refined[n] = min(int(out), fsm.B)

    def _candidates(self, draft):
        """None, one flat list of numbers, or several (alternatives, the first preferred)."""
        if draft is None:
            return None
        arr = [np.asarray(c).reshape(-1) for c in draft] if is_nested(draft) else [np.asarray(draft).reshape(-1)]
        out = [[min(max(int(v), 0), self.fsm.B) for v in c] for c in arr if len(c)]
        return out or None

    def _pick_candidate(self, row: _Row):
        """The draft candidate that best predicted the numbers written so far, and whether it
        predicted the most recent ones exactly (then it is trusted over re-drafted guesses)."""
        cands = row.draft
        if not cands:
            return None, False
        done = len(row.numbers)
        if done == 0:
            return cands[0], True
        if len(cands) == 1:
            c = cands[0]
            need = min(done, max(1, self.D))
            return c, len(c) >= done and c[done - need:done] == row.numbers[done - need:]
        lo = max(0, done - 2 * max(1, self.D))
        recent = row.numbers[lo:done]
        best, best_key = cands[0], None
        for c in cands:
            part = c[lo:done]
            exact = sum(a == b for a, b in zip(part, recent))
            key = (-exact, sum(abs(a - b) for a, b in zip(part, recent)) + 10**6 * (len(recent) - len(part)))
            if best_key is None or key < best_key:
                best, best_key = c, key
        need = min(done, max(1, self.D))
        trusted = len(best) >= done and best[done - need:done] == row.numbers[done - need:]
        return best, trusted

    def _budget(self, rows: int, first: bool = False) -> int:
        """Draft tokens per row in a pass: batch_draft_tokens shared by the rows (at least
        min_draft each); the first pass, which also carries the prompts, gets 4x."""
        if not self.batch_draft_tokens:
            return 1 << 30
        return max(self.min_draft, (4 if first else 1) * self.batch_draft_tokens // max(1, rows))

    def _branches(self, row: _Row, budget: int) -> list[list[int]]:
        """Draft branches verified side by side: the main draft, plus the caller's other
        alternatives that agree with all numbers written so far (shorter)."""
        main = self._draft_tokens(row, budget)
        out = [main]  # possibly empty: then only the next token is decided
        cands = row.draft
        if not self.speculative or not cands or len(cands) < 2 or self.alt_draft <= 0:
            return out
        chosen, _ = self._pick_candidate(row)
        done = len(row.numbers)
        for c in cands:  # alternatives that agree with every number written so far
            if c is chosen or len(c) <= done or c[:done] != row.numbers:
                continue
            alt = self._draft_tokens(row, min(budget, self.alt_draft), candidate=c)
            if alt and main[:len(alt)] != alt:
                out.append(alt)
        return out

    def _draft_tokens(self, row: _Row, budget: int = 1 << 30, candidate=None) -> list[int]:
        """Tokens guessed for what follows the row's committed text, number by number."""
        if not self.speculative or row.state[2]:
            return []
        done, cur, _ = row.state
        N, D = self.fsm.N, self.D
        numbers = row.numbers
        if candidate is None:
            draft, trusted = self._pick_candidate(row)
        else:  # an alternative, taken as it is
            draft, trusted = candidate, True
        memo: dict[int, int | None] = {}

        def value(m: int):
            if m < done:
                return numbers[m]
            if m in memo:
                return memo[m]
            v = None
            if draft is not None and m < len(draft) and trusted:
                v = draft[m]
            if v is None:
                v = row.refined.get(m)
            if v is None and draft is not None and m < len(draft):
                v = draft[m]
            if v is None and self.lookup and D and m >= D:
                v = value(m - D)
            memo[m] = v
            return v

        v = value(done)
        if v is None:
            return []
        digits = self.fsm.digit_ids
        s = str(v)
        if cur and not s.startswith(cur):
            # the number being written already left the guess: take the first other guess that
            # agrees with its digits (re-drafted, any alternative, the same dimension a step back)
            others = [row.refined.get(done)] + [c[done] for c in row.draft or [] if done < len(c)]
            if D and done >= D:
                others.append(value(done - D))
            s = next((str(o) for o in others if o is not None and str(o).startswith(cur)), s)
        toks = [digits[int(c)] for c in s[len(cur):]] if len(s) > len(cur) else []
        m = done
        limit = min(row.window, budget)
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
