"""Evaluation and RL rollouts on Ray (`--ray`), on a local Ray instance this module starts
(ray.init(num_cpus=2): loopback only). Ray is the optional extra vla0[ray]."""

import os
import sys

import numpy as np
import pytest
import ray
import torch

from vla0.cli import main
from vla0.envs.base import get_env
from vla0.envs.pool import EnvPool
from vla0.envs.ray_pool import RayEnvPool
from vla0.envs.runner import EpisodeJob, EpisodeRunner
from vla0.eval.baselines import ExpertPolicy
from vla0.eval.evaluate import evaluate
from vla0.eval.ray_policy import RayPolicy
from vla0.policy.policy import VLA0Policy
from vla0.rl.rollout import RolloutJob, RolloutWorker
from vla0.rl.trainer import RLConfig, RLTrainer


@pytest.fixture(scope="module")
def local_ray():
    # the actors import this checkout's code, as the driver does
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def test_expert_evaluation_on_ray_equals_the_local_pool(local_ray, tmp_path):
    kw = dict(seed=10_000, cameras=(), batch_envs=3, videos=0, progress=False)
    local = evaluate(ExpertPolicy(), ["reach-v3"], 5, out=tmp_path / "local", num_workers=0, **kw)
    on_ray = evaluate(ExpertPolicy(), ["reach-v3"], 5, out=tmp_path / "ray", num_workers=2, ray="", **kw)
    episodes = lambda res: [(e["task"], e["seed"], e["success"], e["steps"]) for e in res["episodes"]]  # noqa: E731
    assert episodes(on_ray) == episodes(local)
    assert len({e[3] for e in episodes(local)}) > 1  # episodes of different lengths: a real comparison


def test_policy_episodes_on_ray_are_the_local_ones_frame_for_frame(local_ray, metaworld_policy_dir):
    """The policy in the driver, the env slots in 2 Ray actors: the same seeds give the same
    rendered frames, actions and outcomes as the local process pool (greedy decoding)."""
    policy = VLA0Policy.from_pretrained(metaworld_policy_dir)
    spec = get_env("metaworld").spec("reach-v3", ("corner3",), (32, 32), 6)
    jobs = [EpisodeJob(spec, 10_000 + i, record=True) for i in range(3)]  # 3 episodes in 2 slots
    assert_same_episodes(jobs, policy, policy, env_actors=2, frames=True)


def assert_same_episodes(jobs, driver_policy, ray_side_policy, env_actors: int, frames: bool = False) -> None:
    """The jobs run by the local pool with driver_policy and by Ray env actors with
    ray_side_policy: the same slots, outcomes, lengths and actions (and rendered frames)."""
    with EnvPool(0) as pool:
        local = EpisodeRunner(pool, 2, 4).run(jobs, driver_policy)
    with RayEnvPool(env_actors) as pool:
        on_ray = EpisodeRunner(pool, 2, 4).run(jobs, ray_side_policy)
    for a, b in zip(local, on_ray):
        assert (a.slot, a.success, a.steps) == (b.slot, b.success, b.steps)
        assert np.array_equal(np.stack(a.actions), np.stack(b.actions))
        for oa, ob in zip(a.observations, b.observations) if frames else ():
            assert np.array_equal(oa["observation.images.corner3"], ob["observation.images.corner3"])


def test_policy_in_its_own_ray_actor_gives_the_driver_policys_episodes(local_ray, metaworld_policy_dir, tmp_path):
    """--policy-gpus: the policy in a Ray actor (0 GPUs here), one env actor; the same actions,
    outcomes and evaluation settings as the policy in the driver with local workers. Two steps
    per chunk: every other step sends no frames (the actor said no env would read them)."""
    spec = get_env("metaworld").spec("reach-v3", ("corner3",), (32, 32), 5)
    jobs = [EpisodeJob(spec, 10_000 + i, record=True) for i in range(3)]
    local_policy = VLA0Policy.from_pretrained(metaworld_policy_dir, ensemble=1, n_action_steps=2)
    remote_policy = RayPolicy(metaworld_policy_dir, num_gpus=0, num_cpus=1, address="", ensemble=1, n_action_steps=2)
    sent, actor = [], remote_policy._actor

    class Spy:  # the actor handle, noting which keys each select_action call carries
        def __getattr__(self, name):
            return getattr(actor, name)

        class select_action:
            @staticmethod
            def remote(obs, ids):
                sent.append(sorted(obs))
                return actor.select_action.remote(obs, ids)

    remote_policy._actor = Spy()
    try:
        assert (remote_policy.name, remote_policy.config) == (local_policy.name, local_policy.config)
        assert_same_episodes(jobs, local_policy, remote_policy, env_actors=1)
        assert remote_policy.malformed_outputs == local_policy.malformed_outputs
        with_frames = ["observation.images.corner3" in keys for keys in sent]
        assert any(with_frames) and not all(with_frames)
    finally:
        remote_policy._actor = actor
        remote_policy.close()
    with pytest.raises(RuntimeError, match="the Ray cluster has 0 GPUs"):
        RayPolicy(metaworld_policy_dir, num_gpus=1, address="")
    with pytest.raises(ValueError, match="a policy runs on one device"):
        RayPolicy(metaworld_policy_dir, num_gpus=2, address="")


def test_policy_gpus_needs_ray_and_a_policy_folder(tmp_path, capsys):
    base = ["eval", "--tasks", "reach-v3", "--out", str(tmp_path), "--policy-gpus", "1"]
    assert main(base + ["--policy", str(tmp_path)]) == 2
    assert "add --ray" in capsys.readouterr().err
    assert main(base + ["--policy", "expert", "--ray"]) == 2
    assert "not to 'expert'" in capsys.readouterr().err


def test_one_rl_iteration_on_ray(local_ray, metaworld_policy_dir, tmp_path):
    cfg = RLConfig(policy=str(metaworld_policy_dir), tasks=["reach-v3"], out=str(tmp_path / "rl"), group_size=2,
                   groups_per_batch=2, max_groups_factor=1.0, max_episode_steps=3, iterations=1, lr=1e-3,
                   batch_envs=2, workers=2, ray="", progress=False)
    trainer = RLTrainer(cfg)
    row = trainer.step()  # 2 actors, 2 groups of 2 rollouts, an update if a group had mixed outcomes
    assert row["episodes"] == 4 and row["env_steps"] == 12 and row["policy_calls"] == 12
    assert row["weights_seconds"] > 0 and row["model_seconds"] > 0 and row["env_seconds"] > 0
    # new weights reach the actors through the object store: their rollouts are then exactly a
    # local worker's with those weights (and not the ones the actors started from)
    jobs = [RolloutJob(0, "reach-v3", 7, 2), RolloutJob(1, "reach-v3", 8, 2)]
    seeds = torch.randint(0, 2**62, (2,), generator=torch.Generator().manual_seed(1)).tolist()
    worker = RolloutWorker.from_policy(metaworld_policy_dir, trainer.settings, num_workers=0)

    def local_tokens():
        trajs = [t for job, seed in zip(jobs, seeds) for t in worker.run([job], torch.Generator().manual_seed(seed))]
        return [s.tokens for t in trajs for s in t.steps]

    worker.set_weights(trainer.learner.weights())
    before = local_tokens()
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in trainer.model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    trainer.worker.set_weights(trainer.learner.weights())
    remote = trainer.worker.run(jobs, torch.Generator().manual_seed(1))
    worker.set_weights(trainer.learner.weights())
    after = local_tokens()
    worker.close()
    trainer.worker.close()
    assert [(t.group, t.index) for t in remote] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [s.tokens for t in remote for s in t.steps] == after != before


def test_ray_option_and_the_message_without_ray(tmp_path, monkeypatch, capsys):
    from vla0.cli import build_parser
    from vla0.cli.sim import EvalConfig
    from vla0.options import build
    parse = build_parser().parse_args
    base = ["eval", "--policy", "expert", "--tasks", "reach-v3", "--out", str(tmp_path)]
    assert build(EvalConfig, parse(base)).ray is None
    assert build(EvalConfig, parse(base + ["--ray"])).ray == ""
    assert build(EvalConfig, parse(base + ["--ray", "10.0.0.1:6379"])).ray == "10.0.0.1:6379"
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    for argv in (base + ["--ray"], ["rl", "--policy", str(tmp_path), "--tasks", "reach-v3", "--out",
                                    str(tmp_path / "rl"), "--iterations", "1", "--ray", "auto"]):
        assert main(argv) == 2
        assert "pip install 'vla0[ray]'" in capsys.readouterr().err


@pytest.fixture()
def faulty_env(tmp_path):
    from faulty_env import NAME, forget_faulty_env, use_faulty_env
    use_faulty_env()
    yield NAME, str(tmp_path / "crashed")
    forget_faulty_env()  # the registry is global: other tests list the registered envs


def test_env_actor_that_dies_is_started_again_and_its_episodes_restart(local_ray, faulty_env):
    """The fault-injecting env's actor process exits mid-episode (as a segfault would): the pool
    starts a new actor, the runner plays those episodes again from their seeds."""
    from vla0.envs.runner import EnvExpert
    name, marker = faulty_env
    spec = get_env(name).spec("reach-v3", (), (16, 16), marker=marker)
    with RayEnvPool(1) as pool:
        runner = EpisodeRunner(pool, batch=2, action_dim=4)
        results = runner.run([EpisodeJob(spec, s) for s in (10, 11, 12)], EnvExpert())
        assert os.path.exists(marker) and pool.restarts == 1 and runner.retries == 2
        assert [(r.job.seed, r.success, r.steps) for r in results] == [(10, True, 3), (11, True, 3), (12, True, 3)]


def test_rollout_actor_that_dies_is_started_again(local_ray, metaworld_policy_dir, faulty_env):
    """A rollout actor's envs live in its own process: when the env kills it mid-group, a new
    actor plays that share of the groups again."""
    from vla0.rl.ray_rollout import RayRolloutWorkers
    from vla0.rl.rollout import RolloutSettings
    name, marker = faulty_env
    settings = RolloutSettings(temperature=1.0, n_action_steps=1, batch_envs=2, env=name,
                               env_options={"marker": marker, "crash_at": 2, "success_at": 3})
    workers = RayRolloutWorkers(metaworld_policy_dir, settings, num_actors=1)
    try:
        trajs = workers.run([RolloutJob(0, "reach-v3", 7, 2)], torch.Generator().manual_seed(0))
    finally:
        workers.close()
    assert os.path.exists(marker) and workers.stats["actor_restarts"] == 1
    assert [(t.group, t.index, t.success, t.length, len(t.steps)) for t in trajs] == [(0, 0, True, 3, 3),
                                                                                   (0, 1, True, 3, 3)]
