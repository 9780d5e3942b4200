"""LeRobot's feature statistics (meta/stats.json, per-episode stats columns): shared by the
dataset writer and the reader (which recomputes them when a dataset has none)."""

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)


def vector_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot's per-feature stats for a (N, k) array, reduced over frames."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(x)])}
    for q in QUANTILES:
        out[f"q{round(q * 100):02d}"] = np.quantile(x, q, axis=0)
    return out


def image_histogram(frames: np.ndarray) -> np.ndarray:
    """(3, 256) counts of uint8 values per channel: exact, mergeable image stats."""
    flat = frames.reshape(-1, 3)
    return np.stack([np.bincount(flat[:, c], minlength=256) for c in range(3)]).astype(np.int64)


def histogram_stats(hist: np.ndarray, frames: int) -> dict[str, np.ndarray]:
    """Per-channel stats of images scaled to [0, 1], shaped (3, 1, 1) as LeRobot stores them."""
    values = np.arange(256) / 255.0
    total = hist.sum(1)
    mean = (hist * values).sum(1) / total
    std = np.sqrt(np.maximum((hist * values**2).sum(1) / total - mean**2, 0.0))
    cdf = np.cumsum(hist, 1) / total[:, None]
    nonzero = hist > 0
    out = {
        "min": values[nonzero.argmax(1)],
        "max": values[255 - nonzero[:, ::-1].argmax(1)],
        "mean": mean,
        "std": std,
    }
    for q in QUANTILES:
        out[f"q{round(q * 100):02d}"] = values[(cdf >= q - 1e-12).argmax(1)]
    out = {k: v.reshape(3, 1, 1) for k, v in out.items()}
    out["count"] = np.array([frames])
    return out
