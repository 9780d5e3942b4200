"""Actions as text: an (H, D) chunk <-> "H*D integers in 0..B separated by single spaces".

Each dimension is normalised with dataset statistics (min/max, or q01/q99 to ignore
outliers), clipped and rounded to one of B+1 levels, so the round-trip error is at most
half a bin. Decoding never raises: a VLM can write anything, and a robot must still get a
well-defined action, so malformed text is repaired and flagged instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from vla0.config import NORMALIZATIONS

_NUMBER = re.compile(r"\d+")


@dataclass
class DecodedChunk:
    actions: np.ndarray  # (H, D) float32
    bins: np.ndarray  # (H, D) int64, after repair
    well_formed: bool


def check_bounds(low, high) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension normalisation bounds as float64 vectors of one length, low <= high."""
    low = np.asarray(low, dtype=np.float64).reshape(-1)
    high = np.asarray(high, dtype=np.float64).reshape(-1)
    if low.shape != high.shape:
        raise ValueError(f"codec bounds differ in length: low {low.shape} vs high {high.shape}")
    if np.any(high < low):
        raise ValueError(f"codec bounds inverted in dimension(s) {np.flatnonzero(high < low).tolist()}: "
                         f"high {high} < low {low}")
    return low, high


@dataclass
class ActionCodec:
    low: np.ndarray  # (D,) action value that maps to bin 0
    high: np.ndarray  # (D,) action value that maps to bin B
    chunk_size: int  # H
    num_bins: int = 1000

    def __post_init__(self):
        self.low, self.high = check_bounds(self.low, self.high)
        if self.chunk_size < 1 or self.num_bins < 1:
            raise ValueError(f"chunk_size and num_bins must be >= 1, got {self.chunk_size}, {self.num_bins}")
        # A constant dimension has zero range: any positive span maps it to bin 0 and back exactly.
        self._span = np.where(self.high > self.low, self.high - self.low, 1.0)

    @classmethod
    def from_stats(cls, stats: dict, chunk_size: int, num_bins: int = 1000, normalization: str = "minmax") -> "ActionCodec":
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}")
        lo, hi = NORMALIZATIONS[normalization]
        missing = [k for k in (lo, hi) if k not in stats]
        if missing:
            raise ValueError(f"action statistics lack {missing} (needed for {normalization!r} normalization)")
        return cls(np.asarray(stats[lo]), np.asarray(stats[hi]), chunk_size, num_bins)

    @property
    def action_dim(self) -> int:
        return self.low.shape[0]

    @property
    def num_values(self) -> int:
        return self.chunk_size * self.action_dim

    def to_bins(self, actions: np.ndarray) -> np.ndarray:
        unit = (np.asarray(actions, dtype=np.float64) - self.low) / self._span
        return np.rint(np.clip(unit, 0.0, 1.0) * self.num_bins).astype(np.int64)

    def from_bins(self, bins: np.ndarray) -> np.ndarray:
        unit = np.clip(np.asarray(bins, dtype=np.float64), 0, self.num_bins) / self.num_bins
        return (self.low + unit * self._span * (self.high > self.low)).astype(np.float32)

    def encode(self, actions: np.ndarray) -> str:
        actions = np.asarray(actions)
        if actions.shape != (self.chunk_size, self.action_dim):
            raise ValueError(f"action chunk has shape {actions.shape}, codec expects {(self.chunk_size, self.action_dim)}")
        return " ".join(str(b) for b in self.to_bins(actions).reshape(-1))

    def is_well_formed(self, text: str) -> bool:
        parts = text.split(" ")
        return len(parts) == self.num_values and all(
            p.isdigit() and p.isascii() and int(p) <= self.num_bins for p in parts)

    def decode(self, text: str) -> DecodedChunk:
        well_formed = self.is_well_formed(text.strip())
        values = [min(int(n), self.num_bins) for n in _NUMBER.findall(text)]
        bins = repair(values, self.chunk_size, self.action_dim, centre=self.num_bins // 2)
        return DecodedChunk(self.from_bins(bins), bins, well_formed)


def repair(values: list[int], chunk_size: int, action_dim: int, centre: int) -> np.ndarray:
    """The numbers a model wrote -> (H, D) bins: extra numbers are dropped, a missing step
    repeats the last whole one, and with not even one whole step the rest is centred."""
    values = values[: chunk_size * action_dim]
    D = action_dim
    complete = len(values) // D
    if complete == 0:
        rows = [values + [centre] * (D - len(values))]
    else:
        rows = [values[i * D:(i + 1) * D] for i in range(complete)]
    rows += [rows[-1]] * (chunk_size - len(rows))
    return np.asarray(rows, dtype=np.int64)
