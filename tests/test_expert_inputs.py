"""--expert-inputs: vector features the flow expert reads besides the VLM. The state decides the
action where the image cannot; the dataset's statistics normalise it; a missing key is named by
the policy, by the server's error reply and by evaluate before the first episode; an unknown one
lists the dataset's vector features."""

import numpy as np
import pytest
import torch

from synthetic import TASKS, synthetic_frame
from test_flow_head import FRONT, config, stage1  # noqa: F401 (a fixture)
from vla0.client import PolicyClient
from vla0.config import PolicyConfig
from vla0.data.lerobot_writer import LeRobotWriter
from vla0.eval.evaluate import evaluate
from vla0.policy.flow_head import FlowExpert, FlowExpertConfig, input_module_name
from vla0.policy.policy import VLA0Policy
from vla0.serve.server import PolicyServer, ServeConfig, ServerThread
from vla0.train.trainer import Trainer

ACTION = np.array([0.6, -0.5, 0.7, 0.2], np.float32)
STATE = "observation.state"


@pytest.fixture(scope="module")
def state_decides(tmp_path_factory):
    """Two episodes with the same image and instruction: the state's sign alone tells the action's."""
    writer = LeRobotWriter(tmp_path_factory.mktemp("data") / "state", fps=10, cameras={"front": (32, 32)},
                           state_dim=4, action_dim=4, extra={"observation.foo": 2})
    for sign in (1.0, -1.0):
        writer.add_episode({"front": np.stack([synthetic_frame(1)] * 8)},
                           state=np.tile(sign * np.array([3.0, 2.0, 5.0, 1.0], np.float32), (8, 1)) + 10.0,
                           action=np.tile(sign * ACTION, (8, 1)), task=TASKS[0],
                           extra={"observation.foo": np.zeros((8, 2), np.float32)})
    return writer.finalize()


@pytest.fixture(scope="module")
def with_state(stage1, state_decides, tmp_path_factory):
    trainer = Trainer(config(stage1, state_decides, tmp_path_factory.mktemp("runs") / "state", steps=250,
                             expert_inputs=[STATE]))
    trainer.train()
    return trainer


def obs_of(sign: float, n: int = 1, state: bool = True) -> dict:
    obs = {FRONT: np.stack([synthetic_frame(1)] * n), "task": [TASKS[0]] * n}
    if state:
        obs[STATE] = np.tile(sign * np.array([3.0, 2.0, 5.0, 1.0], np.float32) + 10.0, (n, 1))
    return obs


def test_the_state_decides_the_action_the_image_cannot(with_state):
    policy = VLA0Policy.from_pretrained(with_state.out, generator=torch.Generator().manual_seed(0))
    assert policy.expert_inputs == [STATE]
    means = {sign: policy.predict_action_chunk(obs_of(sign, n=8)).mean(axis=(0, 1)) for sign in (1.0, -1.0)}
    for sign, mean in means.items():  # averaged over 8 noise draws: the state's action, not the mixture (0)
        assert np.abs(mean - sign * ACTION).max() < 0.25, means


def test_inputs_normalised_with_the_dataset_statistics(with_state):
    spec = PolicyConfig.load(with_state.out / "policy").flow_expert["inputs"][STATE]
    assert spec["dim"] == 4
    np.testing.assert_allclose(spec["mean"], [10.0] * 4, atol=1e-5)  # +-s around 10: mean 10, std |s|
    np.testing.assert_allclose(spec["std"], [3.0, 2.0, 5.0, 1.0], rtol=1e-4)
    expert = with_state.stage2.model.expert
    assert torch.allclose(getattr(expert, f"{input_module_name(STATE)}_std"), torch.tensor([3.0, 2.0, 5.0, 1.0]))


def test_expert_config_rejects_inconsistent_input_specs():
    with pytest.raises(ValueError, match="expert input observation.state: dim, mean and std disagree"):
        FlowExpertConfig(vlm_width=8, width=8, heads=2, inputs={STATE: {"dim": 3, "mean": [0.0], "std": [1.0]}})
    cfg = FlowExpertConfig(vlm_width=8, width=8, depth=1, heads=2,
                           inputs={STATE: {"dim": 2, "mean": [0.0, 0.0], "std": [1.0, 1.0]}})
    with pytest.raises(ValueError, match=r"reads \['observation.state'\]"):
        FlowExpert(cfg, 4, 2).input_tokens({})


def test_missing_input_named_by_policy_server_and_evaluate(with_state, tmp_path):
    policy = VLA0Policy.from_pretrained(with_state.out)
    with pytest.raises(ValueError, match=r"the observation lacks \['observation.state'\]"):
        policy.predict_action_chunk(obs_of(1.0, state=False))
    with ServerThread(PolicyServer(policy, ServeConfig(port=0, max_wait_ms=5))) as server, \
            PolicyClient(server.url) as client:
        assert client.metadata["expert_inputs"] == [STATE]
        with pytest.raises(Exception, match="lacks 'observation.state': this policy's action expert reads it"):
            client.infer({FRONT: synthetic_frame(1), "task": TASKS[0]})
        reply = client.infer({FRONT: synthetic_frame(1), "task": TASKS[0], STATE: obs_of(1.0)[STATE][0]})
        assert reply["actions"].shape == (2, 4)

    class NeedsFoo:  # a policy whose expert reads a feature Meta-World observations do not have
        name, needs_images, expert_inputs = "foo", True, ["observation.foo"]

        def reset(self, env_ids=None):
            raise AssertionError("an episode started")

    with pytest.raises(ValueError, match=r"reads \['observation.foo'\].*metaworld observations lack"):
        evaluate(NeedsFoo(), ["reach-v3"], 1, out=tmp_path / "eval", env="metaworld")


def test_unknown_expert_input_lists_the_vector_features(stage1, state_decides, tmp_path):
    with pytest.raises(ValueError, match=r"no vector feature \['observation.bar'\]; its vector features are "
                                         r"\['observation.state', 'observation.foo'\]"):
        Trainer(config(stage1, state_decides, tmp_path / "x", expert_inputs=["observation.bar"]))
