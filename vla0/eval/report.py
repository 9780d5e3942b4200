"""Evaluation outputs: results.json, text tables, bar plots, rollout videos, and report.html (all of it on one page)."""
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


# -- report.html: one self-contained page per evaluation ------------------------------------------
REPORT_VIDEO = dict(codec="libvpx-vp9", pix_fmt="yuv420p", crf="36")  # VP9/WebM: every browser plays it
MAX_REPORT_VIDEOS = 24  # a page stays small enough to open and mail (each clip is tens of kB)


def webm_video(path: Path) -> bytes:
    """A rollout mp4 re-encoded as VP9 in WebM, in memory: H.264 is not in every browser build
    (Debian's chromium, Firefox without system codecs), VP9 is."""
    import io

    import av

    from vla0.data.video import decode_video_with_times

    frames, times = decode_video_with_times(path)
    fps = max(1, round(1 / np.median(np.diff(times)))) if len(times) > 1 else 10
    frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]  # 4:2:0 needs even sizes
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="webm") as container:
        stream = container.add_stream(REPORT_VIDEO["codec"], rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], REPORT_VIDEO["pix_fmt"]
        stream.options = {"crf": REPORT_VIDEO["crf"], "b": "0", "deadline": "realtime", "cpu-used": "8"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def versions() -> dict[str, str]:
    """The software that produced an evaluation, for its report."""
    import importlib.metadata
    import platform

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("vla0", "torch", "transformers", "numpy", "mujoco", "metaworld", "libero", "av"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222;
background:#fff;padding:0 16px}h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.92em}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}.bar{display:inline-block;height:10px;background:#3b7dd8;
vertical-align:middle}.ci{color:#666}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));
gap:12px}figure{margin:0;border:3px solid #ccc;border-radius:6px;overflow:hidden;background:#111}
figure.success{border-color:#2e9d4f}figure.failure{border-color:#c8372d}video{width:100%;display:block;
image-rendering:pixelated}figcaption{background:#fff;padding:4px 8px;font-size:.85em}
.success .tag{color:#2e9d4f;font-weight:600}.failure .tag{color:#c8372d;font-weight:600}img{max-width:100%}
code{background:#f3f3f3;padding:1px 4px;border-radius:3px}
"""


def write_report(results: dict, out: Path, command: str | None = None) -> Path:
    """out/report.html from results.json's dict, the success plot and the rollout videos in out/:
    per-task success with 95% intervals, the plot, a grid of rollouts labelled success/failure,
    settings and versions. Everything is inlined (data: URIs), so the page opens from disk or a
    mail attachment with no network and no folder beside it."""
    import base64
    import html

    out = Path(out)
    esc = lambda x: html.escape(str(x))  # noqa: E731
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>vla0 evaluation: {esc(results.get('policy', ''))}"
             f"</title><meta name=viewport content='width=device-width,initial-scale=1'><style>{_STYLE}</style></head><body>"]
    n = sum(r["episodes"] for r in results["tasks"].values())
    k = sum(r["successes"] for r in results["tasks"].values())
    parts.append(f"<h1>{esc(results.get('policy', 'policy'))} on {esc(results.get('env', '?'))}</h1>"
                 f"<p>{k}/{n} episodes succeeded; mean task success rate <b>{results['mean_success_rate']:.1%}</b>"
                 f" ({len(results['tasks'])} tasks, {esc(results.get('episodes_per_task', '?'))} episodes each).</p>")
    rows = []
    for task, r in results["tasks"].items():
        lo, hi = r["ci95"]
        rows.append(f"<tr><td>{esc(task)}</td><td class=num>{r['successes']}/{r['episodes']}</td>"
                    f"<td class=num>{r['success_rate']:.0%}</td><td><span class=bar style='width:{100 * r['success_rate']:.0f}px'>"
                    f"</span></td><td class='num ci'>[{lo:.2f}, {hi:.2f}]</td><td class=num>{r['mean_steps']:.1f}</td>"
                    f"<td class=num>{r.get('malformed_outputs', 0)}</td></tr>")
    parts.append("<h2>Success per task</h2><table><tr><th>task</th><th>successes</th><th>rate</th><th></th>"
                 "<th>95% Wilson CI</th><th>mean steps</th><th>malformed outputs</th></tr>" + "".join(rows) + "</table>")
    if results.get("suites"):
        parts.append("<h2>Suites</h2><table><tr><th>suite</th><th>successes</th><th>mean task success</th></tr>" + "".join(
            f"<tr><td>{esc(s)}</td><td class=num>{v['successes']}/{v['episodes']}</td>"
            f"<td class=num>{v['mean_task_success_rate']:.1%}</td></tr>" for s, v in results["suites"].items()) + "</table>")
    plot = out / "success.png"
    if plot.exists():
        data = base64.b64encode(plot.read_bytes()).decode()
        parts.append(f"<h2>Success plot</h2><img alt='success rate per task' src='data:image/png;base64,{data}'>")
    episodes = [e for e in results.get("episodes", []) if e.get("video") and (out / e["video"]).exists()]
    if episodes:
        shown = episodes[:MAX_REPORT_VIDEOS]
        cells = []
        for e in shown:
            label = "success" if e["success"] else "failure"
            data = base64.b64encode(webm_video(out / e["video"])).decode()
            cells.append(f"<figure class={label}><video autoplay muted loop playsinline controls "
                         f"src='data:video/webm;base64,{data}'></video><figcaption><span class=tag>{label}</span> "
                         f"{esc(e['task'])}, seed {esc(e.get('seed', '?'))}, {esc(e.get('steps', '?'))} steps"
                         f"</figcaption></figure>")
        more = f" (the first {len(shown)} of {len(episodes)})" if len(episodes) > len(shown) else ""
        parts.append(f"<h2>Rollouts{more}</h2><div class=grid>{''.join(cells)}</div>")
    settings = {key: results[key] for key in ("policy", "env", "seed", "episodes_per_task", "cameras", "image_size",
                                              "env_options", "max_episode_steps", "wall_seconds", "episodes_per_minute",
                                              "resumed_episodes") if key in results}
    if command:
        settings["command"] = command
    parts.append("<h2>Settings</h2><table>" + "".join(
        f"<tr><th>{esc(key)}</th><td><code>{esc(value)}</code></td></tr>" for key, value in settings.items()) + "</table>")
    parts.append("<h2>Versions</h2><table>" + "".join(
        f"<tr><th>{esc(key)}</th><td>{esc(value)}</td></tr>" for key, value in (results.get("versions") or versions()).items())
        + "</table><p class=ci>Written by vla0 from results.json in this folder.</p></body></html>")
    return write_file_atomic(out / "report.html", lambda tmp: Path(tmp).write_text("".join(parts)))
