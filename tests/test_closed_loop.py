"""Closed-loop evaluation gives the same actions at every step (hence the same outcomes) whether the
policy decodes with HF generate or the fast exact decoder, in process or through `vla0 serve`."""

import numpy as np
import pytest

from vla0.client import RemotePolicy
from vla0.eval.evaluate import evaluate
from vla0.policy.policy import VLA0Policy
from vla0.serve.server import PolicyServer, ServeConfig, ServerThread


class Recording:
    """Wraps a policy and keeps every action it returns, per env slot."""

    def __init__(self, policy):
        self.policy, self.actions = policy, []
        self.name, self.needs_images = policy.name, True
        self.malformed_outputs = 0

    def reset(self, env_ids=None):
        self.policy.reset(env_ids)

    def select_action(self, obs, env_ids):
        out = self.policy.select_action(obs, env_ids)
        self.actions.append(out.copy())
        return out


KWARGS = dict(tasks=["reach-v3"], episodes=2, seed=10_000, cameras=("corner3",), image_size=(32, 32),
              num_workers=0, max_episode_steps=6, videos=0, progress=False)


def test_fast_decoder_gives_the_same_episodes_as_generate(metaworld_policy_dir, tmp_path):
    fast = Recording(VLA0Policy.from_pretrained(metaworld_policy_dir))
    assert fast.policy.decoder.fast is not None  # the default
    slow = Recording(VLA0Policy.from_pretrained(metaworld_policy_dir, fast_decode=False))
    fast_results = evaluate(fast, out=tmp_path / "fast", **KWARGS)
    slow_results = evaluate(slow, out=tmp_path / "slow", **KWARGS)
    assert len(fast.actions) == len(slow.actions) > 0
    for a, b in zip(fast.actions, slow.actions):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert fast_results["tasks"] == slow_results["tasks"]
    assert fast.policy.decoder.fast.stats["forward_passes"] < fast.policy.decoder.fast.stats["tokens"]


@pytest.mark.parametrize("execution", [{}, {"n_action_steps": 2, "ensemble": 1}], ids=["ensemble2", "chunks"])
def test_eval_through_server_matches_in_process(metaworld_policy_dir, tmp_path, execution):
    kwargs = KWARGS
    local = Recording(VLA0Policy.from_pretrained(metaworld_policy_dir, **execution))
    local_results = evaluate(local, out=tmp_path / "local", **kwargs)
    server = PolicyServer(VLA0Policy.from_pretrained(metaworld_policy_dir, **execution), ServeConfig(port=0))
    with ServerThread(server) as running:
        remote = Recording(RemotePolicy(running.url))
        try:
            remote_results = evaluate(remote, out=tmp_path / "remote", **kwargs)
        finally:
            remote.policy.close()
    assert len(local.actions) == len(remote.actions) > 0
    for a, b in zip(local.actions, remote.actions):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert local_results["tasks"] == remote_results["tasks"]


def test_skipping_unread_frames_changes_nothing(metaworld_policy_dir, tmp_path, monkeypatch):
    """Executing whole 2-step chunks, the envs render only every other frame, and every action is what
    a policy that sees every frame does."""
    from vla0.envs.pool import EnvPool
    flags = []
    step = EnvPool.step
    monkeypatch.setattr(EnvPool, "step", lambda self, a, ids=None, render=None: flags.append(render) or step(self, a, ids, render))
    skipping = VLA0Policy.from_pretrained(metaworld_policy_dir, n_action_steps=2, ensemble=1)
    every = Recording(VLA0Policy.from_pretrained(metaworld_policy_dir, n_action_steps=2, ensemble=1))  # no needs_observation
    recorded = Recording(skipping)
    recorded.needs_observation = skipping.needs_observation
    a = evaluate(recorded, out=tmp_path / "skip", **{**KWARGS, "episodes": 1})
    assert flags[:6] == [[False], [True]] * 3
    b = evaluate(every, out=tmp_path / "every", **{**KWARGS, "episodes": 1})
    assert all(f == [True] for f in flags[6:])
    np.testing.assert_allclose(np.concatenate(recorded.actions), np.concatenate(every.actions), atol=1e-6)
    assert a["tasks"] == b["tasks"]
    with pytest.raises(ValueError, match="n_action_steps must be in 1..2"):
        VLA0Policy.from_pretrained(metaworld_policy_dir, n_action_steps=3)
