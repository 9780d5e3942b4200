"""Evaluation outputs: results.json, text tables, bar plots, rollout videos."""
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from vla0.io import write_file_atomic


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate; sane at 0/n and n/n, unlike the normal one."""
    if n <= 0:
        return (0.0, 1.0)
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def paired_comparison(before: list[dict], after: list[dict]) -> dict:
    """Two evaluations of the same (task, seed) episodes compared pairwise (e.g. before and after
    RL): how many went from failure to success (`gained`) and back (`lost`), and the exact two-sided
    McNemar p-value (a binomial test on the discordant pairs). Pairing removes the variance of
    which seeds are easy, so it sees a real change with far fewer episodes than two intervals."""
    key = lambda r: (r["task"], r["seed"])  # noqa: E731
    a = {key(r): bool(r["success"]) for r in after}
    pairs = [(bool(r["success"]), a[key(r)]) for r in before if key(r) in a]
    if len(pairs) != len(before) or len(pairs) != len(a):
        raise ValueError("paired_comparison: the two evaluations must cover the same (task, seed) episodes")
    gained = sum(1 for b, x in pairs if x and not b)
    lost = sum(1 for b, x in pairs if b and not x)
    p = binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
    return {"pairs": len(pairs), "gained": gained, "lost": lost, "p_value": float(p)}


def format_table(results: dict) -> str:
    """One policy's per-task table."""
    rows = [f"policy: {results.get('policy', '?')}   seed: {results.get('seed', '?')}"]
    rows.append(f"{'task':<28} {'success':>9} {'rate':>6} {'95% CI':>13} {'steps':>6} {'malformed':>9}")
    for task, r in results["tasks"].items():
        lo, hi = r["ci95"]
        rows.append(
            f"{task:<28} {r['successes']:>4}/{r['episodes']:<4} {r['success_rate']:>6.1%} "
            f"{f'[{lo:.2f}, {hi:.2f}]':>13} {r['mean_steps']:>6.1f} {r['malformed_outputs']:>9}"
        )
    rows.append(f"{'mean':<28} {'':>9} {results['mean_success_rate']:>6.1%}")
    return "\n".join(rows)


def compare_table(results: dict[str, dict]) -> str:
    """Several policies side by side: {label: results.json dict} -> success rates per task."""
    if not results:
        raise ValueError("compare_table: no results given")
    labels = list(results)
    tasks = list(dict.fromkeys(t for r in results.values() for t in r["tasks"]))
    width = max(16, *(len(l) + 2 for l in labels))  # "100% (20/20)" plus a gap
    rows = [f"{'task':<28}" + "".join(f"{l:>{width}}" for l in labels)]
    for task in tasks:
        cells = []
        for l in labels:
            r = results[l]["tasks"].get(task)
            cell = "-" if r is None else "{:.0%} ({}/{})".format(r["success_rate"], r["successes"], r["episodes"])
            cells.append(f"{cell:>{width}}")
        rows.append(f"{task:<28}" + "".join(cells))
    rows.append(f"{'mean':<28}" + "".join(f"{results[l]['mean_success_rate']:>{width}.1%}" for l in labels))
    return "\n".join(rows)


def plot_compare(results: dict[str, dict], path: Path, title: str = "success rate (95% Wilson CI)") -> Path:
    """Grouped bar plot: tasks on x, one bar per policy, CI error bars. Atomic PNG write."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results)
    tasks = list(dict.fromkeys(t for r in results.values() for t in r["tasks"]))
    x = np.arange(len(tasks))
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(tasks) * max(1, len(labels)) ** 0.5 + 1.5), 3.2))
    for i, label in enumerate(labels):
        rates, lo, hi = [], [], []
        for t in tasks:
            r = results[label]["tasks"].get(t)
            rate = r["success_rate"] if r else 0.0
            ci = r["ci95"] if r else (0.0, 0.0)
            rates.append(rate)
            lo.append(max(0.0, rate - ci[0]))
            hi.append(max(0.0, ci[1] - rate))
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, rates, width, yerr=[lo, hi], capsize=3, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([t.removesuffix("-v3") for t in tasks], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    ax.set_title(title)
    if len(labels) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_file_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
    return Path(path)


def plot_results(results: dict, path: Path) -> Path:
    return plot_compare({results.get("policy", "policy"): results}, path, title=f"{results.get('policy', '')} success rate (95% Wilson CI)")


def save_rollout_video(frames: list[dict[str, np.ndarray]], path: Path, fps: int = 20) -> Path | None:
    """Cameras side by side, one mp4 per episode (yuv420p so any player shows it)."""
    from vla0.data.video import encode_video

    if not frames or not frames[0]:
        return None
    keys = sorted(frames[0])
    tiled = np.stack([np.concatenate([f[k] for k in keys], axis=1) for f in frames])
    if tiled.shape[1] < 128:  # tiny frames are unwatchable; nearest-neighbour upscale
        s = int(np.ceil(128 / tiled.shape[1]))
        tiled = tiled.repeat(s, axis=1).repeat(s, axis=2)
    return write_file_atomic(path, lambda tmp: encode_video(tmp, tiled, fps, preview=True))
