"""The fast decoder's model side: its KV cache and the forward passes over it.

KVCache: per layer (keys, values), with the `update` interface Qwen2.5-VL's attention layers
call, plus the edits speculative decoding needs (crop, per-row column gather, row select). Kept
minimal on purpose: the fast decoder packs and masks columns itself.

CachedForward (a base of FastDecoder): the prefix cache (the KV of the shared text before the
first image, computed once), rope positions, the lm_head rows of the grammar's tokens, and one
forward pass over per-row token lists with per-row positions and an explicit attention mask."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch


class KVCache:
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

    def gather(self, columns: torch.Tensor) -> None:
        """Keep, per row, the given columns (rows, width) in that order."""
        for kv in self.layers:
            idx = columns[:, None, :, None].expand(-1, kv[0].shape[1], -1, kv[0].shape[-1])
            kv[0], kv[1] = kv[0].gather(2, idx), kv[1].gather(2, idx)

    def select(self, rows: torch.Tensor) -> None:
        for kv in self.layers:
            kv[0], kv[1] = kv[0][rows], kv[1][rows]


def first_update(cache: KVCache):
    """An `update` that stores a layer's first keys/values as they are (no concatenation onto
    placeholders): install it as cache.update for the pass that fills an empty cache."""
    def update(key_states, value_states, layer_idx, cache_kwargs=None):
        cache.layers[layer_idx] = [key_states, value_states]
        return key_states, value_states
    return update


class CachedForward:
    """Model plumbing for FastDecoder; expects self.model (the unwrapped VLM), self.fsm (the
    grammar), self.pad_id, self.prefix_cache, self.max_prefixes, set by FastDecoder.__init__."""

    def _init_forward(self) -> None:
        lm = self.model.model.language_model
        # the text model's own layer loop can be called directly when its attention types are known
        self._direct = all(hasattr(lm, a) for a in ("layers", "rotary_emb", "norm", "embed_tokens")) and \
            all(t in ("full_attention", "sliding_attention") for t in getattr(lm.config, "layer_types", ["?"]))
        self.image_token_id = self.model.config.image_token_id
        self._prefixes: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._head_cache = None

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

