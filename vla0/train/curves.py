"""Training-loss curve PNG from a run's train_log.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vla0.io import write_file_atomic


def plot_loss(log: Path, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    window = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, alpha=0.3, label="per step")
    ax.plot(steps[window - 1:], smooth, label=f"mean of {window}")
    ax.set(xlabel="step", ylabel="cross-entropy (action tokens)", yscale="log", title="vla0 training loss")
    ax.legend()
    fig.tight_layout()
    write_file_atomic(png, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
