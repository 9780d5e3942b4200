"""Closed-loop evaluation with the baselines, results schema, Wilson interval, tables."""
import json

import numpy as np
import pytest

from vla0.eval.baselines import ExpertPolicy, RandomPolicy
from vla0.eval.evaluate import evaluate
from vla0.eval.report import compare_table, paired_comparison, wilson_interval


def test_wilson_interval():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_paired_comparison_by_hand():
    def recs(outcomes, task="t"):
        return [{"task": task, "seed": 100 + i, "success": bool(x)} for i, x in enumerate(outcomes)]
    before = recs([0, 0, 0, 1, 1, 0, 0, 0, 0, 0])
    after = recs([1, 1, 1, 1, 0, 1, 1, 1, 1, 1])[::-1]  # matched by (task, seed), not by order
    # 8 gained, 1 lost: p = 2 * (C(9,0) + C(9,1)) / 2^9
    assert paired_comparison(before, after) == {"pairs": 10, "gained": 8, "lost": 1, "p_value": pytest.approx(20 / 512)}
    assert paired_comparison(before, before)["p_value"] == 1.0  # no discordant pair
    assert paired_comparison(recs([0] * 5), recs([1] * 5))["p_value"] == pytest.approx(2 / 32)
    with pytest.raises(ValueError, match="same \\(task, seed\\) episodes"):
        paired_comparison(before, recs([1] * 10, task="other"))


def test_expert_evaluation(tmp_path):
    res = evaluate(ExpertPolicy(), ["reach-v3"], 3, seed=10_000, out=tmp_path, cameras=(), num_workers=0, videos=0, progress=False)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["tasks"] == res["tasks"]
    r = on_disk["tasks"]["reach-v3"]
    assert set(r) == {"episodes", "successes", "success_rate", "ci95", "mean_steps", "malformed_outputs"}
    assert r["episodes"] == 3 and r["successes"] == 3 and r["success_rate"] == 1.0 and r["malformed_outputs"] == 0
    assert r["ci95"] == pytest.approx(list(wilson_interval(3, 3)))
    assert 0 < r["mean_steps"] < 150
    assert on_disk["mean_success_rate"] == 1.0 and on_disk["policy"] == "expert" and on_disk["seed"] == 10_000
    assert [e["seed"] for e in on_disk["episodes"]] == [10_000, 10_001, 10_002]
    assert (tmp_path / "success.png").stat().st_size > 0


class CountingPolicy(RandomPolicy):
    """Needs images, checks the batch it gets, counts a 'malformed' output per call."""

    name = "counting"
    needs_images = True

    def __init__(self):
        super().__init__([-1.0] * 4, [1.0] * 4)
        self.resets = []

    def reset(self, env_ids=None):
        self.resets.append(env_ids)

    def select_action(self, obs, env_ids):
        assert obs["observation.images.corner3"].shape == (len(env_ids), 32, 32, 3)
        assert obs["observation.state"].shape == (len(env_ids), 4) and obs["task"] == ["reach the goal"] * len(env_ids)
        self.malformed_outputs += 1
        return super().select_action(obs, env_ids)


def test_worker_pool_images_and_videos(tmp_path):
    policy = CountingPolicy()
    res = evaluate(policy, ["reach-v3"], 3, out=tmp_path, cameras=("corner3",), image_size=(32, 32), num_workers=2,
                   batch_envs=2, max_episode_steps=5, videos=1, progress=False)
    r = res["tasks"]["reach-v3"]
    assert r["successes"] == 0 and r["mean_steps"] == 5 and r["malformed_outputs"] == policy.malformed_outputs
    assert [0] in policy.resets and [1] in policy.resets  # each slot reset when it starts an episode
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 1
    table = compare_table({"counting": res, "expert": {"tasks": {"reach-v3": {**r, "success_rate": 1.0, "successes": 3}}, "mean_success_rate": 1.0}})
    assert "reach-v3" in table and "100% (3/3)" in table


def test_bad_policy_output(tmp_path):
    class Bad(RandomPolicy):
        def select_action(self, obs, env_ids):
            return np.zeros((len(env_ids), 3), np.float32)

    with pytest.raises(ValueError, match=r"expected \(1, 4\)"):
        evaluate(Bad([-1.0] * 4, [1.0] * 4), ["reach-v3"], 1, out=tmp_path, cameras=(), num_workers=0, videos=0,
                 progress=False)


def test_evaluation_resumes_from_a_partial_episode_file(tmp_path):
    """A killed evaluation leaves whole lines and at most one partial last line in
    episodes.jsonl; the rerun runs only the missing episodes and reports all of them."""
    kw = dict(seed=10_000, out=tmp_path, cameras=(), num_workers=0, videos=0, progress=False)
    full = evaluate(ExpertPolicy(), ["reach-v3"], 3, **kw)
    lines = (tmp_path / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == 3
    (tmp_path / "episodes.jsonl").write_text(lines[1] + "\n" + lines[0][:17])  # as a kill mid-write leaves it
    (tmp_path / "results.json").unlink()

    class Counting(ExpertPolicy):
        resets = 0

        def reset(self, env_ids=None):
            Counting.resets += env_ids is not None  # one per episode started

    again = evaluate(Counting(), ["reach-v3"], 3, **kw)
    assert Counting.resets == 2  # seeds 10_000 and 10_002 ran again, 10_001 was kept
    assert again["resumed_episodes"] == 1
    assert [e["seed"] for e in again["episodes"]] == [10_000, 10_001, 10_002]
    assert again["episodes"] == full["episodes"]
    assert again["tasks"]["reach-v3"]["successes"] == 3

    with pytest.raises(ValueError, match="different evaluation .*image_size"):
        evaluate(ExpertPolicy(), ["reach-v3"], 3, **{**kw, "image_size": (32, 32)})
