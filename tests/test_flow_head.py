"""The flow head (stage 2): flow matching by hand, a tiny stage-2 run that fits its data, the
frozen VLM untouched, save/load, serving, resume, and the mistakes caught before loading."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from synthetic import TASKS, synthetic_frame, write_synthetic_dataset
from vla0.cli import main as cli
from vla0.client import PolicyClient
from vla0.config import PolicyConfig
from vla0.data.lerobot_dataset import load_lerobot
from vla0.data.lerobot_writer import LeRobotWriter
from vla0.model.vlm import load_vlm
from vla0.policy import policy as policy_module
from vla0.policy.flow_head import EXPERT_FILE, FlowExpert, FlowExpertConfig, euler_integrate, flow_loss, interpolate, sample_time
from vla0.policy.policy import VLA0Policy
from vla0.serve.server import PolicyServer, ServeConfig, ServerThread
from vla0.train.trainer import TrainConfig, Trainer

FRONT = "observation.images.front"
ACTION = np.array([0.5, -0.7, 0.9, 0.1], np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(scope="module")
def one_chunk(tmp_path_factory):
    """Eight identical frames holding one action: every sample's target is the same chunk."""
    writer = LeRobotWriter(tmp_path_factory.mktemp("data") / "one", fps=10, cameras={"front": (32, 32)},
                           state_dim=4, action_dim=4)
    writer.add_episode({"front": np.stack([synthetic_frame(1)] * 8)}, state=np.tile(ACTION, (8, 1)),
                       action=np.tile(ACTION, (8, 1)), task=TASKS[0])
    return writer.finalize()


@pytest.fixture(scope="module")
def stage1(tiny_model_dir, tmp_path_factory):
    """A text-action policy (untrained weights suffice: stage 2 only reads them)."""
    folder = tmp_path_factory.mktemp("stage1") / "policy"
    shutil.copytree(tiny_model_dir, folder)
    PolicyConfig(action_dim=4, cameras=["front"], chunk_size=2, num_bins=100, image_size=[32, 32],
                 crop_fraction=1.0, ensemble=1, action_stats={"min": [-1.0] * 4, "max": [1.0] * 4}).save(folder)
    return folder


def config(stage1, dataset, out, **kw):
    base = dict(dataset=str(dataset), out=str(out), head="flow", from_policy=str(stage1), lr=3e-3, batch_size=8,
                steps=120, expert_depth=2, progress=False, save_every=1000)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run(stage1, one_chunk, tmp_path_factory):
    trainer = Trainer(config(stage1, one_chunk, tmp_path_factory.mktemp("runs") / "flow"))
    trainer.train()
    return trainer


def observations(dataset) -> dict:
    """Every frame of the synthetic dataset (12 images, 2 tasks)."""
    data = load_lerobot(dataset)
    return {FRONT: data.images[FRONT], "task": [data.tasks[i] for i in data.task_index]}


# -- flow matching by hand -------------------------------------------------------------------------

def test_flow_loss_and_euler_steps_match_hand_computation():
    actions, noise, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]]), torch.tensor([0.25])
    x_t, target = interpolate(actions, noise, t)
    assert torch.allclose(x_t, torch.tensor([[1.5, 1.25]])) and torch.equal(target, torch.tensor([[2.0, -3.0]]))
    assert flow_loss(lambda x, s: torch.zeros_like(x), actions, noise, t).item() == pytest.approx((4 + 9) / 2)
    assert flow_loss(lambda x, s: x, actions, noise, t).item() == pytest.approx((0.5**2 + 4.25**2) / 2)
    times = []
    # dx/dt = t from t=1 in two steps of -1/2: x = n - 0.5 * 1 - 0.5 * 0.5
    out = euler_integrate(lambda x, s: times.append(s.tolist()) or s[:, None].expand_as(x), torch.ones(2, 3), 2)
    assert times == [[1.0, 1.0], [0.5, 0.5]] and torch.allclose(out, torch.full((2, 3), 0.25))
    # dx/dt = x: each step multiplies by (1 - 1/2)
    assert torch.allclose(euler_integrate(lambda x, s: x, torch.full((1, 2), 8.0), 2), torch.full((1, 2), 2.0))
    # the straight path's own velocity (noise - actions) lands exactly on the actions
    a, n = torch.randn(4, 2, 3), torch.randn(4, 2, 3)
    assert torch.allclose(euler_integrate(lambda x, s: n - a, n, 10), a, atol=1e-6)
    times = sample_time(np.random.default_rng(0), 20000)
    assert times.min() >= 0.001 and times.max() <= 1.0 and times.mean() == pytest.approx(0.001 + 0.999 * 0.6, abs=0.01)


# -- stage 2 ---------------------------------------------------------------------------------------

def test_stage2_overfits_one_chunk(run):
    """Whatever noise the flow starts from, it must land on the one chunk it was trained on."""
    log = [json.loads(line) for line in (run.out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 120 and np.mean([r["loss"] for r in log[-10:]]) < 0.3 * np.mean([r["loss"] for r in log[:5]])
    policy = VLA0Policy.from_pretrained(run.out, generator=torch.Generator().manual_seed(0))
    assert policy.config.head == "flow" and policy.decoder is None
    obs = {FRONT: np.stack([synthetic_frame(1)] * 16), "task": [TASKS[0]] * 16}  # 16 noise draws
    errors = np.abs(policy.predict_action_chunk(obs) - ACTION)
    torch.manual_seed(1)
    untrained = FlowExpert(FlowExpertConfig(**policy.config.flow_expert), 4, 2)
    before = VLA0Policy(policy.vlm, policy.config, expert=untrained, generator=torch.Generator().manual_seed(0))
    errors_before = np.abs(before.predict_action_chunk(obs) - ACTION)
    # 120 steps land within about 4% of the [-1, 1] range on average; an untrained expert is far off
    assert errors.mean() < 0.12 and errors.mean() < 0.25 * errors_before.mean(), (errors.mean(), errors_before.mean())


def test_stage2_leaves_the_vlm_untouched(run, stage1, dataset):
    before, after = load_file(stage1 / "model.safetensors"), load_file(run.out / "policy" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    obs = observations(dataset)
    text = VLA0Policy.from_pretrained(stage1).predict_action_chunk(obs)
    vlm = load_vlm(run.out / "policy")  # the stage-2 folder's VLM, read as the stage-1 text policy
    again = VLA0Policy(vlm, PolicyConfig.load(stage1)).predict_action_chunk(obs)
    assert text.tobytes() == again.tobytes()


def test_flow_policy_round_trip_select_action_and_serving(run, dataset):
    folder = run.out / "policy"
    assert PolicyConfig.load(folder).flow_expert["width"] == 64 and (folder / EXPERT_FILE).exists()
    in_memory = VLA0Policy(run.vlm, run.policy_config, expert=run.stage2.model.expert,
                           generator=torch.Generator().manual_seed(3))
    loaded = VLA0Policy.from_pretrained(folder, generator=torch.Generator().manual_seed(3))
    obs = observations(dataset)
    assert np.array_equal(in_memory.predict_action_chunk(obs), loaded.predict_action_chunk(obs))
    two = {FRONT: obs[FRONT][:2], "task": obs["task"][:2]}
    assert loaded.select_action(two).shape == (2, 4)
    with ServerThread(PolicyServer(loaded, ServeConfig(port=0, max_wait_ms=5))) as server, \
            PolicyClient(server.url) as client:
        assert client.metadata["head"] == "flow"
        reply = client.infer({FRONT: synthetic_frame(2), "task": TASKS[0]})
        assert reply["actions"].shape == (2, 4) and np.isfinite(reply["actions"]).all()


def test_compiled_flow_policy_predicts_the_eager_chunks(run, dataset):
    folder, obs = run.out / "policy", observations(dataset)
    eager = VLA0Policy.from_pretrained(folder, generator=torch.Generator().manual_seed(3))
    compiled = VLA0Policy.from_pretrained(folder, generator=torch.Generator().manual_seed(3))
    assert compiled.compile_model("default") == 2 + 2 + 2  # text MLPs, vision MLPs, expert blocks
    np.testing.assert_allclose(compiled.predict_action_chunk(obs), eager.predict_action_chunk(obs), atol=1e-5)


def test_stage2_resume_continues_exactly(stage1, dataset, tmp_path):
    Trainer(config(stage1, dataset, tmp_path / "a", steps=4, save_every=2, batch_size=4)).train()
    own = tmp_path / "stage1"  # a copy: this test rewrites it
    shutil.copytree(stage1, own)
    Trainer(config(own, dataset, tmp_path / "b", steps=2, save_every=2, batch_size=4)).train()
    resumed = Trainer(config(own, dataset, tmp_path / "b", steps=4, save_every=2, batch_size=4, resume=True))
    assert resumed.step == 2
    resumed.train()
    a, b = (load_file(tmp_path / r / "policy" / EXPERT_FILE) for r in "ab")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # a checkpoint holds the expert, not the frozen VLM, and still loads as a policy (VLM from stage 1)
    checkpoint = tmp_path / "b" / "checkpoints" / "step-0000004"
    assert (checkpoint / EXPERT_FILE).exists() and not (checkpoint / "model.safetensors").exists()
    assert (tmp_path / "b" / "policy" / "model.safetensors").exists()
    obs = observations(dataset)
    from_checkpoint, final = (VLA0Policy.from_pretrained(f, generator=torch.Generator().manual_seed(5))
                              for f in (checkpoint, tmp_path / "b" / "policy"))
    assert np.array_equal(from_checkpoint.predict_action_chunk(obs), final.predict_action_chunk(obs))
    # stage 1 rewritten since: resuming on another VLM is refused, naming the file
    (own / "model.safetensors").write_bytes((own / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"changed since this run's checkpoints were written \(model.safetensors\)"):
        Trainer(config(own, dataset, tmp_path / "b", steps=6, save_every=2, batch_size=4, resume=True))


# -- mistakes, caught before loading ---------------------------------------------------------------

def test_bad_stage2_arguments(stage1, dataset, run, tmp_path):
    cases = [
        (dict(from_policy=None), "give --from RUN_DIR"),
        (dict(from_policy=str(tmp_path)), "is not a vla0 policy or run folder"),
        (dict(from_policy=str(run.out)), "is a flow-head policy; stage 2 starts from a text-action"),
        (dict(expert_width=66), "expert width 66 is not divisible by its 4 attention heads"),
        (dict(expert_layers="7"), r"layer\(s\) \[7\] out of range"),
        (dict(model="m"), "drop --model"),
        (dict(head="text"), "--from names the stage-1 policy"),
    ]
    for change, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            Trainer(config(stage1, dataset, tmp_path / "bad", **change))
    assert not (tmp_path / "bad").exists()


def test_cli_flow_without_from_is_one_line(dataset, tmp_path, capsys):
    code = cli(["train", "--head", "flow", "--dataset", str(dataset), "--out", str(tmp_path / "r"), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--from" in err


def test_text_decoding_options_on_a_flow_policy_fail_before_loading(run, monkeypatch):
    def no_loading(*a, **k):
        raise AssertionError("loaded weights before rejecting the options")
    monkeypatch.setattr(policy_module, "load_policy_vlm", no_loading)
    for options in (dict(temperature=1.0), dict(fast_decode=False), dict(relaxed_k=2)):
        with pytest.raises(ValueError, match="flow-head policy: it does not decode text"):
            VLA0Policy.from_pretrained(run.out, **options)


def test_rl_refuses_text_sampling_options_on_a_flow_head_policy(run, tmp_path):
    from vla0.rl.trainer import RLConfig, check_rl_config
    cfg = RLConfig(policy=str(run.out), tasks=["reach-v3"], out=str(tmp_path / "rl"), iterations=1, temperature=1.6)
    with pytest.raises(ValueError, match="flow-head policy: --temperature applies to text decoding"):
        check_rl_config(cfg)


def test_policy_config_head_field():
    base = dict(action_dim=4, cameras=["front"], action_stats={"min": [-1.0] * 4, "max": [1.0] * 4})
    assert PolicyConfig.from_dict(dict(base)).head == "text"  # folders written before heads existed
    with pytest.raises(ValueError, match="head must be one of"):
        PolicyConfig(**base, head="diffusion")
    with pytest.raises(ValueError, match="needs flow_expert settings"):
        PolicyConfig(**base, head="flow")
