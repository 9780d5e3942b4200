"""The RL learning curve: success, dynamic sampling, update statistics, wall time per iteration,
drawn from OUT/rl_log.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vla0.io import write_file_atomic


def plot_rl_curve(log: Path, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    train = [r for r in rows if "rollout_success_rate" in r]
    evals = [r for r in rows if "eval_success_rate" in r]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    ax = axes[0, 0]
    if train:
        ax.plot([r["iteration"] for r in train], [r["rollout_success_rate"] for r in train], "o-", label="rollouts (sampled)")
    if evals:
        ax.plot([r["iteration"] for r in evals], [r["eval_success_rate"] for r in evals], "s-", label="held-out (greedy)")
    ax.set(xlabel="iteration", ylabel="success rate", ylim=(-0.02, 1.02), title="success")
    ax.legend()
    ax = axes[0, 1]
    if train:
        it = [r["iteration"] for r in train]
        ax.plot(it, [r["kept_fraction"] for r in train], "o-", label="groups kept")
        ax.plot(it, [r["mean_abs_advantage"] for r in train], "^-", label="mean |advantage|")
    ax.set(xlabel="iteration", title="dynamic sampling")
    ax.legend()
    ax = axes[1, 0]
    upd = [r for r in train if r.get("entropy") is not None]
    if upd:
        it = [r["iteration"] for r in upd]
        ax.plot(it, [r["entropy"] for r in upd], "o-", label="entropy (nats)")
        ax.plot(it, [r["clip_fraction"] for r in upd], "^-", label="clip fraction")
        ax.plot(it, [r["approx_kl"] for r in upd], "s-", label="approx KL to rollout policy")
    ax.set(xlabel="iteration", title="update")
    ax.legend()
    ax = axes[1, 1]
    if train:
        it = np.array([r["iteration"] for r in train])
        ro = np.array([r["rollout_seconds"] for r in train])
        up = np.array([r["update_seconds"] for r in train])
        ax.bar(it, ro, label="rollout")
        ax.bar(it, up, bottom=ro, label="update")
    ax.set(xlabel="iteration", ylabel="seconds", title="wall time per iteration")
    ax.legend()
    fig.suptitle("vla0 rl (GRPO)")
    fig.tight_layout()
    write_file_atomic(png, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
