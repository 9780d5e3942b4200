"""OpenVLA's discrete action tokens (the `bins` action format): an (H, D) chunk <-> H*D token ids.

Each dimension is normalised with the dataset's q01/q99 to [-1, 1] and clipped, then cut into
`num_bins` (256) uniform bins; bin k is written as one token of a fixed block of the tokenizer's
least-used ordinary tokens and decoded to the bin's centre. OpenVLA takes linspace(-1, 1, 256) as
bin *edges* (255 usable bins, bin k -> token vocab_size - 1 - k); here the 256 tokens are 256 bins,
so every token of the block is an action and the round-trip error is at most half a bin.

The block (`action_token_block`): walking down from the highest id of the base vocabulary (a BPE
tokenizer's last merges are its rarest: OpenVLA's choice), every ordinary token that no prompt uses.
"No prompt uses" is checked against fixed text (vla0.prompt's system prompts, the instruction
corpus, digits and the mask character), so the block is a function of the tokenizer alone and a
saved policy needs nothing but its tokenizer to decode. An instruction that would still use one of
these tokens is refused by the prompt encoder, naming the task.

A constant dimension (q01 == q99): OpenVLA's normalisation maps it to 0, so it is written as the
middle bin and decoded to q01 exactly; `BinCodec` says so in a warning naming the dimension.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from vla0.codec import DecodedChunk, check_bounds, repair
from vla0.prompt import PROMPT_CORPUS, system_prompt

NUM_BINS = 256  # OpenVLA's


def reference_text(tokenizer, mask_char: str = "_") -> str:
    """Text whose tokens the action block leaves alone: what vla0's prompts are made of, laid out
    by the tokenizer's chat template."""
    # each word also on its own: an instruction's first word follows an image, not a space
    texts = [PROMPT_CORPUS, "\n".join(PROMPT_CORPUS.split()), "0123456789 " + mask_char]
    for fmt in ("text", "bins"):
        messages = [{"role": "system", "content": system_prompt(8, 7, 1000, fmt)},
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "open the drawer"}]}]
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                     if tokenizer.chat_template else messages[0]["content"])
    return "\n".join(texts)


def action_token_block(tokenizer, count: int, mask_char: str = "_") -> list[int]:
    """bin k -> block[k]: the `count` highest-id ordinary tokens that no prompt uses."""
    added = set(getattr(tokenizer, "added_tokens_decoder", {})) | set(tokenizer.all_special_ids)
    used = set(tokenizer.encode(reference_text(tokenizer, mask_char), add_special_tokens=False))
    block = []
    for t in range(len(tokenizer) - 1, -1, -1):
        if t not in added and t not in used:
            block.append(t)
            if len(block) == count:
                return block
    raise ValueError(f"the tokenizer has only {len(block)} ordinary tokens that no prompt uses; the bins "
                     f"action format needs {count} (one per bin): use fewer --bins or --action-format text")


@dataclass
class BinCodec:
    low: np.ndarray  # (D,) q01: normalised to -1
    high: np.ndarray  # (D,) q99: normalised to +1
    chunk_size: int  # H
    token_ids: list[int]  # bin k -> token id (action_token_block)

    def __post_init__(self):
        self.low, self.high = check_bounds(self.low, self.high)  # q01, q99
        if self.chunk_size < 1 or self.num_bins < 2:
            raise ValueError(f"chunk_size must be >= 1 and bins >= 2, got {self.chunk_size}, {self.num_bins}")
        self.constant = self.high == self.low
        if self.constant.any():
            dims = np.flatnonzero(self.constant).tolist()
            warnings.warn(f"action dimension(s) {dims} are constant in the data (q01 == q99 = "
                          f"{self.low[dims].tolist()}): the bins format writes them as the middle bin "
                          "(normalised 0, as OpenVLA) and decodes them to that constant", stacklevel=2)
        self._span = np.where(self.constant, 1.0, self.high - self.low)
        self.bin_of = {t: k for k, t in enumerate(self.token_ids)}

    @classmethod
    def from_stats(cls, stats: dict, chunk_size: int, token_ids: list[int]) -> "BinCodec":
        missing = [k for k in ("q01", "q99") if k not in stats]
        if missing:
            raise ValueError(f"action statistics lack {missing}: the bins format normalises with q01/q99")
        return cls(np.asarray(stats["q01"]), np.asarray(stats["q99"]), chunk_size, list(token_ids))

    @property
    def num_bins(self) -> int:
        return len(self.token_ids)

    @property
    def action_dim(self) -> int:
        return self.low.shape[0]

    @property
    def num_values(self) -> int:
        return self.chunk_size * self.action_dim

    def normalise(self, actions: np.ndarray) -> np.ndarray:
        """Actions -> [-1, 1] (clipped); a constant dimension -> 0."""
        unit = 2.0 * (np.asarray(actions, dtype=np.float64) - self.low) / self._span - 1.0
        return np.where(self.constant, 0.0, np.clip(unit, -1.0, 1.0))

    def to_bins(self, actions: np.ndarray) -> np.ndarray:
        k = np.floor((self.normalise(actions) + 1.0) / 2.0 * self.num_bins)
        return np.clip(k, 0, self.num_bins - 1).astype(np.int64)

    def from_bins(self, bins: np.ndarray) -> np.ndarray:
        centre = -1.0 + (np.clip(np.asarray(bins), 0, self.num_bins - 1) + 0.5) * 2.0 / self.num_bins
        return (self.low + (centre + 1.0) / 2.0 * self._span * ~self.constant).astype(np.float32)

    def encode(self, actions: np.ndarray) -> list[int]:
        """(H, D) actions -> H*D token ids, row-major."""
        actions = np.asarray(actions)
        if actions.shape != (self.chunk_size, self.action_dim):
            raise ValueError(f"action chunk has shape {actions.shape}, codec expects {(self.chunk_size, self.action_dim)}")
        return [self.token_ids[k] for k in self.to_bins(actions).reshape(-1)]

    def decode(self, tokens: list[int]) -> DecodedChunk:
        """Generated ids (ending with <|im_end|> or not) -> the chunk. Never raises: ids outside
        the block are dropped and a short chunk repaired as text's is (vla0.codec.repair)."""
        values = [self.bin_of[t] for t in tokens if t in self.bin_of]
        # well formed: exactly N bins, then nothing but the closing token(s)
        well_formed = len(values) == self.num_values and all(t in self.bin_of for t in tokens[:self.num_values])
        bins = repair(values, self.chunk_size, self.action_dim, centre=self.num_bins // 2)
        return DecodedChunk(self.from_bins(bins), bins, well_formed)
