"""The quickstart's orchestration on a miniature setting: every phase runs, the report is written,
and a second call resumes instead of redoing the work."""

import json

from vla0.quickstart import QuickstartConfig, run_quickstart


def test_quickstart_writes_the_report_and_resumes(tmp_path, capsys):
    cfg = QuickstartConfig(out=str(tmp_path), tasks=["reach-v3"], camera_size=[32, 32], demos_per_task=2,
                           eval_episodes=1, steps=3, num_workers=0, progress=False,
                           training={"cameras": ["corner3"], "image_size": [28, 28], "batch_size": 4})
    results = run_quickstart(cfg)
    assert set(results) == {"vla0", "expert", "random"}
    assert results["expert"]["tasks"]["reach-v3"]["successes"] == 1
    report = json.loads((tmp_path / "results.json").read_text())
    task = report["tasks"]["reach-v3"]
    assert {"episodes", "successes", "success_rate", "ci95", "mean_steps", "malformed_outputs"} <= set(task)
    assert report["policy"] == "vla0" and report["seed"] == cfg.eval_seed
    for name in ("success_rates.png", "training_loss.png", "timings.json", "summary.md", "report.html"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert list((tmp_path / "eval" / "vla0" / "videos").glob("*.mp4"))
    phases = json.loads((tmp_path / "timings.json").read_text())
    assert {"collect", "train", "eval-vla0", "eval-expert", "eval-random"} <= set(phases)
    capsys.readouterr()
    run_quickstart(cfg)
    assert capsys.readouterr().out.count("already done, skipping") == 6
