"""Faults an RL run must survive: an env worker process that dies mid-episode (restarted, the
episode retried), and a run killed mid-iteration (resumed from its last checkpoint, giving the
same log and weights as an uninterrupted run)."""

import json

import numpy as np
import pytest
import torch

from faulty_env import NAME, forget_faulty_env, use_faulty_env
from vla0.envs.base import get_env
from vla0.envs.pool import EnvCrash, EnvPool
from vla0.envs.runner import EnvExpert, EpisodeJob, EpisodeRunner
from vla0.rl.rollout import RolloutJob, RolloutSettings, RolloutWorker
from vla0.rl.trainer import RLConfig, RLTrainer


@pytest.fixture()
def faulty(tmp_path):
    use_faulty_env()
    yield lambda **opts: get_env(NAME).spec("reach-v3", (), (16, 16), marker=str(tmp_path / "crashed"), **opts)
    forget_faulty_env()  # the registry is global: other tests list the registered envs


def test_env_worker_crash_restarts_worker_and_retries_episode(faulty, tmp_path):
    """One worker process dies at step 2 of the first episode there: the pool starts a new
    worker, the runner starts that episode again from its seed; all episodes finish."""
    spec = faulty()
    with EnvPool(1) as pool:
        runner = EpisodeRunner(pool, batch=2, action_dim=4)
        retried = []
        results = runner.run([EpisodeJob(spec, s) for s in (10, 11, 12)], EnvExpert(),
                             on_retry=lambda slot, job: retried.append((slot, job.seed)))
        assert (tmp_path / "crashed").exists() and pool.restarts == 1 and runner.retries == 2
        # both slots lived in the dead worker: both episodes start again
        assert sorted(seed for _, seed in retried) == [10, 11]
        assert [(r.job.seed, r.success, r.steps) for r in results] == [(10, True, 3), (11, True, 3), (12, True, 3)]
        # the restarted worker keeps serving
        assert pool.reset([spec], [5], ids=[0])[0]["observation.state"][0] == 0


def test_episode_gives_up_after_max_retries(faulty):
    class AlwaysCrash:
        def reset(self, specs, seeds, ids):
            return [EnvCrash(0, -11) for _ in ids]

    with pytest.raises(RuntimeError, match="env worker died 3 times"):
        EpisodeRunner(AlwaysCrash(), batch=1, max_retries=2).run([EpisodeJob(faulty(), 1)], EnvExpert())


def test_rollout_worker_drops_the_calls_of_a_crashed_episode(faulty, metaworld_policy_dir):
    """A group's rollout that lost its env is played again from the start: its trajectory holds
    the calls of the finished attempt only (one call per step, one step per chunk)."""
    from vla0.config import PolicyConfig
    from vla0.model.vlm import load_vlm
    from vla0.processor import ActionProcessor
    vlm = load_vlm(metaworld_policy_dir)
    processor = ActionProcessor(PolicyConfig.load(metaworld_policy_dir), vlm.tokenizer, vlm.image_processor)
    marker = faulty().options["marker"]
    settings = RolloutSettings(temperature=1.0, n_action_steps=1, batch_envs=2, env=NAME,
                               env_options={"marker": marker, "crash_at": 2, "success_at": 3})
    with EnvPool(1) as pool:
        worker = RolloutWorker(vlm.model, processor, settings, pool=pool)
        trajs = worker.run([RolloutJob(0, "reach-v3", 7, 2)], torch.Generator().manual_seed(0))
    assert worker.stats["episode_retries"] == 2  # both rollouts were in the dead worker
    assert [(t.index, t.success, t.length, len(t.steps)) for t in trajs] == [(0, True, 3, 3), (1, True, 3, 3)]


class KillablePool:
    """FakePool from test_rl (success iff the first action's x > 0) that raises, like a kill,
    at the first reset after `armed` is set."""

    def __init__(self):
        from test_rl import FakePool
        self.inner, self.armed = FakePool(), False

    def reset(self, specs, seeds, ids):
        if self.armed:
            raise KeyboardInterrupt("killed mid-iteration")
        return self.inner.reset(specs, seeds, ids)

    def step(self, actions, ids, render=None):
        return self.inner.step(actions, ids, render)

    def close(self):
        pass


def _rows(out):
    rows = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "seconds" not in k and "minutes" not in k} for r in rows]


def test_run_killed_mid_iteration_resumes_to_identical_results(metaworld_policy_dir, tmp_path):
    cfg = dict(policy=str(metaworld_policy_dir), tasks=["reach-v3", "drawer-open-v3"], group_size=4,
               groups_per_batch=2, max_episode_steps=1, iterations=3, lr=3e-3, temperature=1.0, batch_envs=8,
               progress=False, save_every=1)
    whole = RLTrainer(RLConfig(out=str(tmp_path / "whole"), **cfg), pool=KillablePool())
    whole.train()

    pool = KillablePool()
    killed = RLTrainer(RLConfig(out=str(tmp_path / "killed"), **cfg), pool=pool)
    save = killed.save_checkpoint

    def save_then_arm():  # the kill comes during the iteration after the checkpoint of iteration 2
        folder = save()
        pool.armed = killed.iteration == 2
        return folder
    killed.save_checkpoint = save_then_arm
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    assert [r["iteration"] for r in _rows(tmp_path / "killed")] == [1, 2]

    resumed = RLTrainer(RLConfig(out=str(tmp_path / "killed"), resume=True, **cfg), pool=KillablePool())
    assert resumed.iteration == 2
    resumed.train()
    assert _rows(tmp_path / "killed") == _rows(tmp_path / "whole")
    a, b = dict(whole.model.named_parameters()), dict(resumed.model.named_parameters())
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert np.isclose(_rows(tmp_path / "whole")[-1]["rollout_success_rate"],
                      _rows(tmp_path / "killed")[-1]["rollout_success_rate"])
