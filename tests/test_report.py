"""report.html: self-contained, and it works in a real browser (headless Debian chromium): no
console errors, every rollout video decodes and plays, the page is not blank."""

import io
import json

import numpy as np
import pytest

from browser import chromium, inspect_page
from vla0.eval.report import plot_results, save_rollout_video, wilson_interval, write_report


def fake_evaluation(out):
    """results.json's shape with two tasks, and a recorded rollout of each outcome."""
    episodes = []
    for task, outcomes in (("reach-v3", [True, False, True]), ("push-v3", [False, False, False])):
        for seed, ok in enumerate(outcomes):
            rec = {"task": task, "seed": seed, "success": ok, "steps": 20 if ok else 40}
            if seed < 2:
                t = np.arange(24)[:, None, None, None]
                frames = np.broadcast_to((t * 10 + 40 * seed) % 255, (24, 32, 32, 3)).astype(np.uint8).copy()
                frames[:, :, : 8 + seed * 8, 0] = 255  # something that is not one flat colour
                save_rollout_video([{"corner3": f} for f in frames], out / "videos" / f"{task}_{seed}.mp4", fps=10)
                rec["video"] = f"videos/{task}_{seed}.mp4"
            episodes.append(rec)
    tasks = {}
    for task in ("reach-v3", "push-v3"):
        recs = [e for e in episodes if e["task"] == task]
        k = sum(e["success"] for e in recs)
        tasks[task] = {"episodes": len(recs), "successes": k, "success_rate": k / len(recs),
                       "ci95": wilson_interval(k, len(recs)), "mean_steps": float(np.mean([e["steps"] for e in recs])),
                       "malformed_outputs": 0}
    results = {"tasks": tasks, "mean_success_rate": float(np.mean([t["success_rate"] for t in tasks.values()])),
               "policy": "tiny <test>", "env": "metaworld", "seed": 0, "episodes_per_task": 3,
               "cameras": ["corner3"], "image_size": [32, 32], "episodes": episodes}
    (out / "results.json").write_text(json.dumps(results))
    plot_results(results, out / "success.png")
    return results


def test_report_is_self_contained_and_labels_each_rollout(tmp_path):
    results = fake_evaluation(tmp_path)
    page = write_report(results, tmp_path).read_text()
    assert page.count("<video") == 4 and page.count("class=success") == 1 and page.count("class=failure") == 3
    assert "data:video/webm;base64," in page and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from anywhere
    assert "tiny &lt;test&gt;" in page  # names are escaped
    assert "[0.21, 0.94]" in page  # reach: 2/3 with its Wilson interval
    assert "transformers" in page  # versions


@pytest.mark.skipif(chromium() is None, reason="chromium not installed (make test installs it: make browser)")
def test_report_opens_and_its_videos_play_in_chromium(tmp_path):
    from PIL import Image

    page = write_report(fake_evaluation(tmp_path), tmp_path)
    probe = ("JSON.stringify({videos: [...document.querySelectorAll('video')].map(v => "
             "[v.readyState, v.currentTime, v.error && v.error.code, v.videoWidth]), "
             "images: [...document.images].map(i => i.naturalWidth)})")
    seen = inspect_page(page.as_uri(), probe, wait_s=3.0)
    assert seen["errors"] == []
    first, second = (json.loads(s) for s in seen["probe"])
    assert len(second["videos"]) == 4 and all(w > 0 for w in second["images"])
    for (_, t0, _, _), (state, t1, error, width) in zip(first["videos"], second["videos"]):
        assert error is None and state >= 2 and width > 0  # decoded (HAVE_CURRENT_DATA or better)
        assert t1 > t0  # and playing
    shot = np.asarray(Image.open(io.BytesIO(seen["png"])).convert("RGB"), np.float32)
    assert shot.std() > 10 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 50  # not a blank page
