"""The decoder's KV cache: per layer (keys, values), with the `update` interface Qwen2.5-VL's
attention layers call, plus the edits speculative decoding needs (crop, per-row column gather,
row select). Kept minimal on purpose: the fast decoder packs and masks columns itself."""

from __future__ import annotations

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
