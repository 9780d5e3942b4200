"""`vla0 eval --server` drives Meta-World through the policy server and gets what in-process
evaluation gets: the same actions at every step, hence the same outcomes."""

import shutil

import numpy as np
import pytest

from vla0.client import RemotePolicy
from vla0.config import PolicyConfig
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


@pytest.fixture(scope="module")
def metaworld_policy_dir(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("policies") / "metaworld"
    shutil.copytree(tiny_model_dir, folder)
    PolicyConfig(action_dim=4, cameras=["corner3"], horizon=2, num_bins=100, image_size=[28, 28],
                 action_stats={"min": [-1.0] * 4, "max": [1.0] * 4}, ensemble=2,
                 extra={"camera_shapes": {"corner3": [32, 32]}}).save(folder)
    return folder


def test_eval_through_server_matches_in_process(metaworld_policy_dir, tmp_path):
    kwargs = dict(tasks=["reach-v3"], episodes=2, seed=10_000, cameras=("corner3",), image_size=(32, 32),
                  num_workers=0, max_steps=6, videos=0, progress=False)
    local = Recording(VLA0Policy.from_pretrained(metaworld_policy_dir))
    local_results = evaluate(local, out=tmp_path / "local", **kwargs)
    server = PolicyServer(VLA0Policy.from_pretrained(metaworld_policy_dir), ServeConfig(port=0))
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
