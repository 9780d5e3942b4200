"""GRPO for the flow head: the noisy Euler chain's log-probability by hand, a learner step that
moves only the expert, checkpoints that hold the expert only, resume, export, and the text
options refused on a flow policy."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_rl import FakePool
from vla0.config import PolicyConfig
from vla0.model.vlm import load_vlm
from vla0.policy.flow_head import (EXPERT_FILE, FlowExpert, FlowExpertConfig, chain_log_probs, expert_config_for, sample_chain,
                                   save_expert)
from vla0.policy.policy import VLA0Policy
from vla0.rl.trainer import RLConfig, RLTrainer, check_rl_config


def test_sampled_chain_log_prob_matches_hand_computation():
    """x_{k+1} = x_k + dt v(x_k, t_k) + s eps: each step's log-density summed over the chunk."""
    a, b, std, steps = 0.7, -0.3, 0.2, 3

    def velocity(x, t):
        return a * x + b * t[:, None, None]

    noise = torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(0))
    chain, logp = sample_chain(velocity, noise, steps, std, torch.Generator().manual_seed(1))
    assert chain.shape == (2, steps + 1, 2, 3) and logp.shape == (2, steps)
    assert torch.equal(chain[:, 0], noise)
    x = chain.double().numpy()
    dt = -1.0 / steps
    for i in range(2):
        for k in range(steps):
            t = 1.0 + k * dt
            mean = x[i, k] + dt * (a * x[i, k] + b * t)
            z = (x[i, k + 1] - mean) / std
            hand = float(np.sum(-0.5 * z ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)))
            assert logp[i, k].item() == pytest.approx(hand, rel=1e-5)
    # the learner's recomputation of a stored chain gives the same numbers, with a gradient
    w = torch.tensor(a, requires_grad=True)
    again = chain_log_probs(lambda x, t: w * x + b * t[:, None, None], chain, std)
    assert torch.allclose(again, logp, atol=1e-5)
    again.sum().backward()
    assert w.grad is not None and w.grad != 0
    # the same generator draws the same chain: rollouts are reproducible
    chain2, _ = sample_chain(velocity, noise, steps, std, torch.Generator().manual_seed(1))
    assert torch.equal(chain, chain2)


@pytest.fixture(scope="module")
def flow_policy_dir(metaworld_policy_dir, tmp_path_factory):
    """An untrained flow-head policy for Meta-World (the tiny VLM + a one-block expert)."""
    folder = tmp_path_factory.mktemp("policies") / "flow"
    shutil.copytree(metaworld_policy_dir, folder)
    config = PolicyConfig.load(folder)
    expert_cfg = expert_config_for(load_vlm(folder).model.config, depth=1, num_steps=3)
    torch.manual_seed(0)
    save_expert(FlowExpert(expert_cfg, config.action_dim, config.chunk_size), folder)
    dataclasses.replace(config, head="flow", flow_expert=dataclasses.asdict(expert_cfg)).save(folder)
    return folder


def _cfg(policy, out, **kw):
    base = dict(policy=str(policy), tasks=["reach-v3"], out=str(out), group_size=4, groups_per_batch=2,
                max_episode_steps=1, iterations=2, lr=1e-3, batch_envs=8, progress=False, flow_noise=0.5)
    return RLConfig(**{**base, **kw})


def test_flow_rl_moves_only_the_expert_checkpoints_resumes_exports(flow_policy_dir, tmp_path):
    out = tmp_path / "rl"
    trainer = RLTrainer(_cfg(flow_policy_dir, out), pool=FakePool())
    vlm_before = {n: p.detach().clone() for n, p in trainer.vlm.model.named_parameters()}
    expert_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    assert set(trainer.learner.weights()) == set(expert_before)  # what rollout workers receive
    trainer.train()
    rows = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    updated = [r for r in rows if r["optimizer_steps"]]
    # one optimizer step per update: the ratio is exactly 1 before it (rollout and learner agree)
    assert updated and all(r["ratio_mean"] == pytest.approx(1, abs=1e-4) for r in updated)
    assert all(r["loss_tokens"] == r["update_samples"] * 3 for r in updated)  # 3 Euler steps per call
    assert all(torch.equal(p, vlm_before[n]) for n, p in trainer.vlm.model.named_parameters())
    assert any(not torch.equal(p, expert_before[n]) for n, p in trainer.model.named_parameters())
    # checkpoints hold the expert only, their VLM named by base_model; the export is self-contained
    ckpt = out / "checkpoints" / "step-0000002"
    assert (ckpt / EXPERT_FILE).exists() and not (ckpt / "model.safetensors").exists()
    assert PolicyConfig.load(ckpt).base_model == str(flow_policy_dir.resolve())
    saved = load_file(str(ckpt / EXPERT_FILE))
    assert all(torch.equal(saved[n], p.detach()) for n, p in trainer.model.named_parameters())
    exported = VLA0Policy.from_pretrained(out / "policy")
    assert exported.config.head == "flow" and exported.flow_noise == 0  # evaluation: the plain ODE
    obs = {"observation.images.corner3": np.zeros((1, 32, 32, 3), np.uint8), "task": ["reach"]}
    a1, a2 = (exported.predict_action_chunk(obs) for _ in range(2))
    assert a1.shape == (1, 2, 4)
    # resume: the expert and the optimizer come back from the checkpoint, the count continues
    resumed = RLTrainer(_cfg(flow_policy_dir, out, iterations=3, resume=True), pool=FakePool())
    assert resumed.iteration == 2 and resumed.learner.optimizer_steps == trainer.learner.optimizer_steps
    assert all(torch.equal(p, saved[n]) for n, p in resumed.model.named_parameters())
    resumed.train()
    rows = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]


def test_flow_rl_learns_the_fake_task(flow_policy_dir, tmp_path):
    """Success iff the first action's x > 0: a few updates raise the rollout success."""
    cfg = _cfg(flow_policy_dir, tmp_path / "rl", iterations=6, lr=3e-3, group_size=8, groups_per_batch=4,
               epochs=2, minibatches=2, save_every=100)
    trainer = RLTrainer(cfg, pool=FakePool())
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "rl" / "rl_log.jsonl").read_text().splitlines()]
    rates = [r["rollout_success_rate"] for r in rows]
    assert np.mean(rates[-2:]) > np.mean(rates[:2]) + 0.15, rates


def test_text_options_on_a_flow_policy_and_flow_noise_on_a_text_policy(flow_policy_dir, metaworld_policy_dir,
                                                                        tmp_path):
    for kw in (dict(temperature=1.0), dict(loss_tokens="executed"), dict(lora_rank=4)):
        with pytest.raises(ValueError, match="is a flow-head policy: --"):
            check_rl_config(_cfg(flow_policy_dir, tmp_path / "a", **kw))
    with pytest.raises(ValueError, match="--flow-noise must be > 0"):
        check_rl_config(_cfg(flow_policy_dir, tmp_path / "a", flow_noise=0.0))
    with pytest.raises(ValueError, match="--flow-noise applies to flow-head policies"):
        check_rl_config(_cfg(metaworld_policy_dir, tmp_path / "a"))
    text = _cfg(metaworld_policy_dir, tmp_path / "a", flow_noise=None)
    check_rl_config(text)
    assert text.temperature == 1.6  # the recipe's default, recorded
    flow = _cfg(flow_policy_dir, tmp_path / "a", flow_noise=None)
    check_rl_config(flow)
    assert flow.flow_noise == 0.1 and flow.temperature is None


def test_flow_rl_with_expert_inputs_records_and_trains_them(flow_policy_dir, tmp_path):
    """A policy whose expert reads observation.state: rollouts record it, the learner's ratio
    (recomputed from the recorded inputs) starts at 1, and the state's encoder trains too."""
    folder = tmp_path / "flow_state"
    shutil.copytree(flow_policy_dir, folder)
    config = PolicyConfig.load(folder)
    inputs = {"observation.state": {"dim": 4, "mean": [0.0] * 4, "std": [1.0] * 4}}
    expert_cfg = dataclasses.replace(FlowExpertConfig(**config.flow_expert),
                                     inputs=inputs)
    save_expert(FlowExpert(expert_cfg, config.action_dim, config.chunk_size), folder)
    dataclasses.replace(config, flow_expert=dataclasses.asdict(expert_cfg)).save(folder)
    trainer = RLTrainer(_cfg(folder, tmp_path / "rl", iterations=1, save_every=100), pool=FakePool())
    encoder = {n: p.detach().clone() for n, p in trainer.model.input_in.named_parameters()}
    trajs, _ = trainer.collect()
    assert all(s.inputs["observation.state"].shape == (4,) for t in trajs for s in t.steps)
    stats = trainer.learner.update(trajs, np.resize([1.0, -1.0], len(trajs)))
    assert stats["ratio_mean"] == pytest.approx(1, abs=1e-4)
    assert any(not torch.equal(p, encoder[n]) for n, p in trainer.model.input_in.named_parameters())


def test_standalone_flow_worker_receives_expert_weights(flow_policy_dir, tmp_path):
    """A worker in another process or on a Ray actor: loads the flow folder, takes the learner's
    expert weights, and samples the same chains as the learner's own worker."""
    from vla0.rl.rollout import RolloutJob, RolloutWorker
    trainer = RLTrainer(_cfg(flow_policy_dir, tmp_path / "w", iterations=1), pool=FakePool())
    trainer.train()  # the expert now differs from the folder's
    worker = RolloutWorker.from_policy(flow_policy_dir, trainer.settings, pool=FakePool())
    worker.set_weights(trainer.learner.weights())
    jobs = [RolloutJob(0, "reach-v3", 5, 3)]
    a = worker.run(jobs, torch.Generator().manual_seed(1))
    trainer.worker._pool = FakePool()
    b = trainer.worker.run(jobs, torch.Generator().manual_seed(1))
    assert np.allclose(np.stack([s.chain for t in a for s in t.steps]), np.stack([s.chain for t in b for s in t.steps]),
                       atol=1e-5)
    assert np.allclose([s.logprobs for t in a for s in t.steps], [s.logprobs for t in b for s in t.steps], atol=1e-3)
