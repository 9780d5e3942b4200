"""Online RL (GRPO): advantages, dynamic sampling, the clipped loss by hand, exact log-probs
(rollout == recomputed, and == a plain HF forward), and tiny end-to-end iterations."""

import json
import math

import numpy as np
import pytest
import torch

from vla0.config import PolicyConfig
from vla0.model.vlm import load_vlm
from vla0.grammar import START, ActionGrammar
from vla0.policy.policy import VLA0Policy
from vla0.prompt import collate
from vla0.rl.grpo import (clipped_surrogate, dynamic_sampling, group_advantages, group_outcome, groups_to_launch,
                          is_informative, task_quotas, trajectory_token_weights)
from vla0.rl.learner import Learner, executed_token_mask
from vla0.rl.trainer import RLConfig, RLTrainer, check_rl_config
from vla0.rl.rollout import RolloutJob, RolloutSettings, RolloutWorker, Step, Trajectory
from vla0.policy.decoder import ActionDecoder
from vla0.processor import ActionProcessor


# -- GRPO arithmetic ------------------------------------------------------------------------------
def test_group_advantages_by_hand():
    rewards = [1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1]
    groups = ["a"] * 4 + ["b"] * 3 + ["c"] * 4
    adv = group_advantages(rewards, groups)
    half = 0.5 / (0.5 + 1e-6)
    assert adv[:4] == pytest.approx([half, -half, -half, half], abs=1e-12)
    assert adv[4:7] == pytest.approx([0, 0, 0])  # all succeeded: no signal
    std = math.sqrt(0.1875)  # rewards 0,0,0,1: mean 0.25, population std
    assert adv[7:] == pytest.approx([-0.25 / (std + 1e-6)] * 3 + [0.75 / (std + 1e-6)], abs=1e-12)
    with pytest.raises(ValueError):
        group_advantages([1, 0], ["a"])


def test_dynamic_sampling_keeps_mixed_groups():
    groups = {0: [1, 1], 1: [0, 1], 2: [0, 0, 0], 3: [1, 0, 1], 4: [0]}
    assert dynamic_sampling(groups) == ([1, 3], [0, 2, 4])
    assert dynamic_sampling(groups, target=1) == ([1], [0, 2, 3, 4])
    assert not is_informative([1]) and is_informative([0.0, 1.0])


def test_task_quotas_and_launch_counts():
    tasks = ["a", "b", "c"]
    assert task_quotas(8, tasks) == {"a": 3, "b": 3, "c": 2}
    assert task_quotas(8, tasks, offset=1) == {"a": 2, "b": 3, "c": 3}  # the short share moves round
    assert sum(task_quotas(64, tasks, offset=5).values()) == 64
    assert task_quotas(2, tasks, offset=2) == {"a": 1, "b": 0, "c": 1}
    with pytest.raises(ValueError):
        task_quotas(4, [])
    assert groups_to_launch(4, 0, 0, 16) == 4  # nothing seen yet: the deficit
    assert groups_to_launch(2, 2, 4, 16) == 4  # half kept so far: twice the deficit
    assert groups_to_launch(2, 0, 4, 16) == 8  # none kept: the rate is floored at a quarter
    assert groups_to_launch(3, 1, 14, 16) == 2  # never past the cap
    assert groups_to_launch(0, 4, 4, 16) == 0 and groups_to_launch(2, 0, 16, 16) == 0
    assert [group_outcome(r) for r in ([1, 0], [1, 1], [0, 0, 0])] == ["mixed", "all_success", "all_failure"]


def test_clipped_loss_by_hand():
    ratios = torch.tensor([1.5, 0.5, 1.1, 0.7, 3.0])
    old = torch.tensor([-1.0, -2.0, -0.5, -0.3, -1.0])
    logp = (old + ratios.log()).requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 5.0])
    mask = torch.tensor([True, True, True, True, False])  # the last token is not an action token
    loss, stats = clipped_surrogate(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    # per token -min(rA, clip(r)A): -1.28 (clipped at 1.28), -0.5, +1.1, +0.8 (clipped at 0.8)
    assert float(loss.detach()) == pytest.approx((-1.28 - 0.5 + 1.1 + 0.8) / 4, abs=1e-6)
    loss.backward()
    # d/dlogp of -rA/4 where the unclipped term is active, 0 where the clipped one is
    assert logp.grad.tolist() == pytest.approx([0.0, -0.5 / 4, 1.1 / 4, 0.0, 0.0], abs=1e-6)
    assert stats["clip_fraction"] == pytest.approx(0.5)
    r = ratios[:4]
    assert stats["approx_kl"] == pytest.approx(float((r - 1 - r.log()).mean()), abs=1e-6)
    # micro-batching: the token count of the whole mini-batch divides each part
    loss2, _ = clipped_surrogate(logp.detach(), old, adv, mask, num_tokens=8)
    assert float(loss2) == pytest.approx(float(loss.detach()) / 2, abs=1e-6)


def test_trajectory_mean_weights_balance_a_group():
    """A 1-token success and a 3-token failure of one group (advantages +1, -1): the token mean
    pushes down on balance; weighted per trajectory the push is zero-sum."""
    w = trajectory_token_weights([1, 3])
    assert w.tolist() == pytest.approx([2.0, 2.0 / 3.0])  # each trajectory's tokens now sum to T / N = 2
    old = torch.zeros(4)
    adv = torch.tensor([1.0, -1.0, -1.0, -1.0])
    token_mean, _ = clipped_surrogate(old.clone(), old, adv)
    weighted, _ = clipped_surrogate(old.clone(), old, adv, weights=torch.tensor([w[0], w[1], w[1], w[1]]).float())
    assert float(token_mean) == pytest.approx(0.5) and float(weighted) == pytest.approx(0.0, abs=1e-7)


# -- grammar-constrained sampling with exact log-probs ------------------------------------------
def test_executed_token_mask(tiny_policy_dir):
    tok = load_vlm(tiny_policy_dir).tokenizer
    g = ActionGrammar(tok, num_values=5, num_bins=120)
    assert executed_token_mask(tok.encode("12 3 45", add_special_tokens=False) + [g.end_id], g, 2) == \
        [True, True, True, True, True, False, False, False]


def processor_of(tiny_policy_dir, vlm=None):
    vlm = vlm or load_vlm(tiny_policy_dir)
    return ActionProcessor(PolicyConfig.load(tiny_policy_dir), vlm.tokenizer, vlm.image_processor)


@pytest.fixture(scope="module")
def policy(tiny_policy_dir):
    return VLA0Policy.from_pretrained(tiny_policy_dir)


def _frames(seed, n=2, size=32):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_rollout_logprobs_equal_recomputed_and_hf_forward(policy):
    sampler = ActionDecoder(policy.vlm.model, policy.processor, fast=False)
    grammar = policy.processor.grammar
    # different instructions -> different prompt lengths -> padding on both sides is exercised
    prompts = [policy.processor.prompt(_frames(i), "x" * (3 * i + 1)) for i in range(3)]
    samples = sampler.sample(prompts, 1.6, torch.Generator().manual_seed(0))
    for s in samples:
        assert s.tokens[-1] == grammar.end_id and len(s.tokens) == len(s.logprobs)
        assert policy.processor.codec.is_well_formed(policy.vlm.tokenizer.decode(s.tokens[:-1]))
        assert all(lp <= 0 for lp in s.logprobs)
    old = torch.tensor([lp for s in samples for lp in s.logprobs])
    scored = sampler.score(prompts, [s.tokens for s in samples], 1.6)
    ratio = torch.exp(scored.logprobs.detach() - old)
    assert (ratio - 1).abs().max() < 1e-5
    assert float(old[scored.choices == 1].abs().max()) == 0.0  # forced tokens: log-prob exactly 0
    # the same numbers from a plain HF forward (its own rope positions, full vocabulary logits)
    for p, s in zip(prompts, samples):
        batch = collate([type(p)(p.input_ids + s.tokens, p.mm_token_type_ids + [0] * len(s.tokens),
                                 p.pixel_values, p.image_grid_thw)], policy.processor.pad_id)
        with torch.no_grad():
            logits = policy.vlm.model(**batch).logits[0, len(p.input_ids) - 1:-1].float()
        ref = []
        for k, t in enumerate(s.tokens):
            allowed = list(grammar.allowed(grammar.state_after(s.tokens[:k])))
            ref.append(float(torch.log_softmax(logits[k, allowed] / 1.6, -1)[allowed.index(t)]))
        assert np.allclose(ref, s.logprobs, atol=1e-4)


def _sampled_trajectories(policy, vlm, n=4):
    """n one-call trajectories of one group sampled at T = 1.6, alternately successes and failures."""
    sampler = ActionDecoder(vlm.model, policy.processor, fast=False)
    trajs = []
    for i in range(n):
        frames = _frames(10 + i)
        prompt = policy.processor.prompt(frames, "pick")
        s = sampler.sample([prompt], 1.6, torch.Generator().manual_seed(i))[0]
        trajs.append(Trajectory(0, "t", 0, i, i % 2 == 0, 1, [Step(frames, "pick", s.tokens, s.logprobs)]))
    return trajs


def test_learner_ratio_is_one_before_the_step(policy, tiny_policy_dir):
    vlm = load_vlm(tiny_policy_dir)
    trajs = _sampled_trajectories(policy, vlm)
    before = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    learner = Learner(vlm.model, processor_of(tiny_policy_dir, vlm), lr=1e-3, micro_batch=3)
    stats = learner.update(trajs, group_advantages([t.reward for t in trajs], [0] * 4))
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert stats["clip_fraction"] == 0.0 and abs(stats["approx_kl"]) < 1e-8
    assert stats["optimizer_steps"] == 1 and stats["entropy"] > 0
    assert any(not torch.equal(p, before[n]) for n, p in vlm.model.named_parameters())


def test_learner_lr_warmup_is_linear_and_resumes(policy, tiny_policy_dir):
    vlm = load_vlm(tiny_policy_dir)
    trajs = _sampled_trajectories(policy, vlm)
    adv = group_advantages([t.reward for t in trajs], [0] * 4)
    learner = Learner(vlm.model, processor_of(tiny_policy_dir, vlm), lr=1e-3, warmup_steps=3, minibatches=2,
                      temperature=1.6)
    assert learner.current_lr() == pytest.approx(0.25e-3)
    stats = learner.update(trajs, adv)  # steps at 0.25e-3 and 0.5e-3
    assert stats["optimizer_steps"] == 2 and stats["lr"] == pytest.approx(0.5e-3)
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-3)
    resumed = Learner(vlm.model, processor_of(tiny_policy_dir, vlm), lr=1e-3, warmup_steps=3, minibatches=2,
                      temperature=1.6)
    resumed.load_state_dict(learner.state_dict())
    assert resumed.current_lr() == pytest.approx(0.75e-3)  # the warm-up continues where it stopped
    assert resumed.update(trajs, adv)["lr"] == pytest.approx(1e-3)  # 0.75e-3, then the full rate
    assert resumed.current_lr() == pytest.approx(1e-3)
    assert Learner(vlm.model, processor_of(tiny_policy_dir, vlm), lr=1e-3).current_lr() == 1e-3  # recipe: constant


def test_learner_weights_trajectories_by_loss_aggregation(tiny_policy_dir):
    """trajectory-mean: every call of a trajectory carries (T / N) / L_trajectory; token-mean: 1."""
    vlm = load_vlm(tiny_policy_dir)
    calls = lambda n: [Step([], "pick", [5, 6, 7], [0.0, 0.0, 0.0]) for _ in range(n)]  # noqa: E731
    trajs = [Trajectory(0, "t", 0, 0, True, 1, calls(1)), Trajectory(0, "t", 0, 1, False, 3, calls(3))]
    by_agg = {}
    for agg in ("token-mean", "trajectory-mean"):
        learner = Learner(vlm.model, processor_of(tiny_policy_dir, vlm), loss_agg=agg)
        items = learner._items(trajs, [1.0, -1.0])
        by_agg[agg] = [x for it in items for x in (it.advantage, it.weight)]
        assert all(it.loss_mask == [True] * 3 for it in items)
    assert by_agg["token-mean"] == [1.0, 1.0] + [-1.0, 1.0] * 3  # (advantage, weight) per call
    assert by_agg["trajectory-mean"] == pytest.approx([1.0, 2.0] + [-1.0, 2.0 / 3.0] * 3)
    with pytest.raises(ValueError, match="loss aggregation must be one of"):
        Learner(vlm.model, processor_of(tiny_policy_dir, vlm), loss_agg="sum")


# -- tiny end-to-end: a fake env in which success depends on the action ----------------------------
class FakePool:
    """EnvPool stand-in: success iff the first executed action's x > 0 (an 'episode' is max_steps)."""

    def __init__(self, size=32):
        self.size, self.state = size, {}

    def _obs(self, img):
        return {"observation.images.corner3": img, "observation.state": np.zeros(4, np.float32), "task": "reach"}

    def reset(self, specs, seeds, ids):
        out = []
        for spec, seed, i in zip(specs, seeds, ids):
            img = np.random.default_rng(seed).integers(0, 255, (self.size, self.size, 3), dtype=np.uint8)
            self.state[i] = [spec, 0, img]
            out.append(self._obs(img))
        return out

    def step(self, actions, ids, render=None):
        res = []
        for j, (a, i) in enumerate(zip(actions, ids)):
            st = self.state[i]
            st[1] += 1
            ok = bool(a[0] > 0)
            obs = self._obs(st[2])
            if render is not None and not render[j]:  # as EnvPool: no images unless asked for
                obs = {k: v for k, v in obs.items() if not k.startswith("observation.images.")}
            res.append((obs, 0.0, ok, (not ok) and st[1] >= st[0].max_episode_steps, {"success": ok}))
        return res

    def close(self):
        pass


def _cfg(policy, out, **kw):
    base = dict(policy=str(policy), tasks=["reach-v3"], out=str(out), group_size=4, groups_per_batch=2,
                max_episode_steps=1, iterations=2, lr=1e-3, temperature=1.6, batch_envs=8, progress=False)
    return RLConfig(**{**base, **kw})


def test_end_to_end_iterations_checkpoint_resume_export(metaworld_policy_dir, tmp_path):
    out = tmp_path / "rl"
    trainer = RLTrainer(_cfg(metaworld_policy_dir, out), pool=FakePool())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    policy_dir = trainer.train()
    rows = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    for key in ("rollout_success_rate", "kept_fraction", "mean_abs_advantage", "clip_fraction", "entropy",
                "approx_kl", "rollout_seconds", "update_seconds", "groups_tried", "groups_kept"):
        assert key in rows[0]
    updated = [r for r in rows if r["optimizer_steps"]]
    assert updated and all(r["groups_kept"] == 2 and r["ratio_mean"] == pytest.approx(1, abs=1e-5) for r in updated)
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    assert (out / "learning_curve.png").stat().st_size > 0
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000002"
    # the exported policy loads like any other, with the RL execution settings and provenance
    loaded = VLA0Policy.from_pretrained(out)
    assert loaded.config.n_action_steps == 1 and loaded.config.ensemble == 1  # source: 1 and 2
    assert loaded.config.training["rl"]["source_policy"] == str(metaworld_policy_dir.resolve())
    obs = {"observation.images.corner3": _frames(0, 1)[0][None], "task": ["reach"]}
    assert loaded.select_action(obs, [0]).shape == (1, 4)
    assert policy_dir == out / "policy"
    # resume continues the iteration count and the seed sequence
    with pytest.raises(FileExistsError):
        RLTrainer(_cfg(metaworld_policy_dir, out), pool=FakePool())
    resumed = RLTrainer(_cfg(metaworld_policy_dir, out, iterations=3, resume=True), pool=FakePool())
    assert resumed.iteration == 2 and resumed.next_group == trainer.next_group
    resumed.train()
    rows = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]


class TaskFakePool(FakePool):
    """FakePool whose drawer-open-v3 episodes always succeed: its groups are never mixed."""

    def step(self, actions, ids, render=None):
        res = super().step(actions, ids, render)
        for j, i in enumerate(ids):
            if self.state[i][0].task == "drawer-open-v3":
                obs = res[j][0]
                res[j] = (obs, 0.0, True, False, {"success": True})
        return res


def test_multi_task_sampling_fills_each_task_share_and_logs_drops(metaworld_policy_dir, tmp_path):
    """Two tasks, 4 mixed groups per batch: reach-v3 (mixed outcomes) fills its own share of 2
    and no more; drawer-open-v3 (always succeeds) spends its attempt cap, keeps nothing, is
    logged as starved, and its share is not handed to reach-v3."""
    out = tmp_path / "two"
    cfg = _cfg(metaworld_policy_dir, out, tasks=["reach-v3", "drawer-open-v3"], groups_per_batch=4,
               max_groups_factor=2.0, iterations=2, batch_envs=16, save_every=0)
    trainer = RLTrainer(cfg, pool=TaskFakePool())
    trainer.train()
    rows = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    for row in rows:
        reach, drawer = row["by_task"]["reach-v3"], row["by_task"]["drawer-open-v3"]
        assert reach["quota"] == drawer["quota"] == 2
        assert reach["groups_kept"] == 2 and reach["groups_kept"] + reach["all_success"] + reach["all_failure"] \
            + reach["surplus"] == reach["groups_tried"]
        assert drawer == {**drawer, "groups_tried": 4, "groups_kept": 0, "all_success": 4, "all_failure": 0,
                          "success_rate": 1.0, "episodes": 16, "successes": 16}
        assert row["starved_tasks"] == ["drawer-open-v3"]
        assert drawer["success_steps_mean"] == 1 and drawer["successes_near_cap"] == 1.0  # the 1-step cap
        assert row["groups_kept"] == 2 and row["update_samples"] > 0
        assert row["rollout_success_by_task"]["drawer-open-v3"] == 1.0
    # every group id is used once, in launch order, across iterations
    assert trainer.next_group == sum(r["groups_tried"] for r in rows)


def test_held_out_eval_uses_its_own_episode_cap(metaworld_policy_dir, tmp_path, monkeypatch):
    """A short rollout cap (RL time saver) must not shorten the held-out episodes."""
    import vla0.eval.evaluate as ev
    seen = []

    def fake_evaluate(policy, tasks, episodes, **kw):
        seen.append(kw["max_episode_steps"])
        return {"mean_success_rate": 0.5, "tasks": {t: {"success_rate": 0.5} for t in tasks}}

    monkeypatch.setattr(ev, "evaluate", fake_evaluate)
    assert RLTrainer(_cfg(metaworld_policy_dir, tmp_path / "a"), pool=FakePool()).evaluate("x")["eval_success_rate"] == 0.5
    RLTrainer(_cfg(metaworld_policy_dir, tmp_path / "b", eval_max_episode_steps=7), pool=FakePool()).evaluate("x")
    assert seen == [None, 7]  # rollouts capped at 1 step in both; None = the per-task table
    with pytest.raises(ValueError, match="--eval-max-episode-steps must be >= 1"):
        RLTrainer(_cfg(metaworld_policy_dir, tmp_path / "c", eval_max_episode_steps=0), pool=FakePool())


def test_lora_iteration_exports_merged_policy(metaworld_policy_dir, tmp_path):
    out = tmp_path / "rl_lora"
    trainer = RLTrainer(_cfg(metaworld_policy_dir, out, iterations=1, lora_rank=4, lr=1e-2), pool=FakePool())
    assert all("lora" in n for n in trainer.learner.weights())
    trainer.train()
    assert (out / "checkpoints" / "step-0000001" / "adapter_config.json").exists()
    merged = VLA0Policy.from_pretrained(out / "policy")
    adapter = VLA0Policy.from_pretrained(out / "checkpoints" / "step-0000001")  # base + adapter
    obs = {"observation.images.corner3": _frames(3, 1)[0][None], "task": ["reach"]}
    assert np.allclose(merged.predict_action_chunk(obs), adapter.predict_action_chunk(obs))


def test_standalone_worker_receives_weights(metaworld_policy_dir, tmp_path):
    trainer = RLTrainer(_cfg(metaworld_policy_dir, tmp_path / "w", iterations=1), pool=FakePool())
    trainer.train()  # weights now differ from the folder's
    # a standalone worker (another process or machine) gets the learner's weights through set_weights
    worker = RolloutWorker.from_policy(metaworld_policy_dir, trainer.settings, pool=FakePool())
    worker.set_weights(trainer.learner.weights())
    jobs = [RolloutJob(0, "reach-v3", 5, 3)]
    a = worker.run(jobs, torch.Generator().manual_seed(1))
    trainer.worker._pool = FakePool()
    b = trainer.worker.run(jobs, torch.Generator().manual_seed(1))
    assert [s.tokens for t in a for s in t.steps] == [s.tokens for t in b for s in t.steps]
    assert np.allclose([lp for t in a for s in t.steps for lp in s.logprobs],
                       [lp for t in b for s in t.steps for lp in s.logprobs], atol=1e-6)


def test_metaworld_rollouts(metaworld_policy_dir):
    """Real Meta-World envs in-process: one group of 2 rollouts, 3 steps, 1 step per chunk."""
    from vla0.envs.pool import EnvPool
    vlm = load_vlm(metaworld_policy_dir)
    settings = RolloutSettings(temperature=1.6, n_action_steps=1, max_episode_steps=3, batch_envs=2)
    with EnvPool(0) as pool:
        worker = RolloutWorker(vlm.model, processor_of(metaworld_policy_dir, vlm), settings, pool=pool)
        trajs = worker.run([RolloutJob(7, "reach-v3", 123, 2)], torch.Generator().manual_seed(0))
    assert [(t.group, t.seed, t.index, t.length, len(t.steps)) for t in trajs] == [(7, 123, 0, 3, 3), (7, 123, 1, 3, 3)]
    assert trajs[0].steps[0].frames[0].shape == (32, 32, 3) and trajs[0].steps[0].instruction == "reach the goal"
    # same seed, same initial state: the first frames of a group agree
    assert np.array_equal(trajs[0].steps[0].frames[0], trajs[1].steps[0].frames[0])


def test_chunked_rollouts_render_only_replanning_frames(metaworld_policy_dir):
    """Executing 2-step chunks, the envs render every other step: only frames a policy call reads."""
    from vla0.envs.pool import EnvPool
    vlm = load_vlm(metaworld_policy_dir)
    settings = RolloutSettings(temperature=1.0, n_action_steps=2, max_episode_steps=5, batch_envs=1)
    flags = []
    with EnvPool(0) as pool:
        step = pool.step
        pool.step = lambda actions, ids=None, render=None: flags.append(list(render)) or step(actions, ids, render)
        worker = RolloutWorker(vlm.model, processor_of(metaworld_policy_dir, vlm), settings, pool=pool)
        trajs = worker.run([RolloutJob(0, "reach-v3", 5, 1)], torch.Generator().manual_seed(0))
    assert flags == [[False], [True], [False], [True], [False]]
    assert trajs[0].length == 5 and len(trajs[0].steps) == 3  # chunks at steps 0, 2 and 4


def test_cli_parser_and_config_errors(metaworld_policy_dir, tmp_path):
    import argparse

    from vla0.cli.rl import add_parsers, config_from_args
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["rl", "--policy", str(metaworld_policy_dir), "--tasks", "reach-v3,drawer-open-v3",
                              "--out", str(tmp_path / "o"), "--minutes", "5", "--lora-rank", "8"])
    cfg = config_from_args(args)
    assert cfg.tasks == ["reach-v3", "drawer-open-v3"] and cfg.minutes == 5 and cfg.lora_rank == 8
    check_rl_config(cfg)  # resolves the head's sampling default (text: temperature 1.6)
    assert (cfg.group_size, cfg.groups_per_batch, cfg.temperature, cfg.lr, cfg.warmup_steps, cfg.clip_low,
            cfg.clip_high) == (8, 64, 1.6, 5e-6, 0, 0.2, 0.28)
    for bad, match in [(dict(iterations=None), "--iterations or --minutes"), (dict(group_size=1), "group-size"),
                       (dict(tasks=["nope-v3"]), "unknown metaworld task"),
                       (dict(eval_seed=99_999, eval_every=1), "rollout seeds"),
                       (dict(warmup_steps=-1), "--warmup-steps >= 0")]:
        with pytest.raises(ValueError, match=match):
            RLTrainer(_cfg(metaworld_policy_dir, tmp_path / "bad", **bad), pool=FakePool())


def test_rl_learns_the_fake_task(metaworld_policy_dir, tmp_path):
    """Success here needs the first action's x > 0: a few GRPO iterations must raise the rate."""
    out = tmp_path / "learn"
    cfg = _cfg(metaworld_policy_dir, out, group_size=8, groups_per_batch=4, iterations=8, lr=3e-3, temperature=1.0,
               batch_envs=32, save_every=0)
    RLTrainer(cfg, pool=FakePool()).train()
    rates = [json.loads(line)["rollout_success_rate"] for line in (out / "rl_log.jsonl").read_text().splitlines()]
    assert np.mean(rates[-3:]) > rates[0] + 0.3, rates


def test_eval_temperature_samples_the_distribution_rl_optimises(tiny_policy_dir):
    """A policy with a temperature samples through the same decoder as RL rollouts: the log-probs
    it records equal the learner's teacher-forced scores (ratio 1), and a seeded generator
    reproduces its actions."""
    vlm = load_vlm(tiny_policy_dir)
    sampled = VLA0Policy(vlm, PolicyConfig.load(tiny_policy_dir), temperature=1.3,
                         generator=torch.Generator().manual_seed(3))
    calls = []
    sampled.on_chunk = lambda env, frames, task, tokens, logprobs: calls.append((frames, task, tokens, logprobs))
    obs = {"observation.images.front": np.stack([_frames(i)[0] for i in range(2)]),
           "observation.images.wrist": np.stack([_frames(i)[1] for i in range(2)]), "task": ["a", "b"]}
    first = sampled.predict_action_chunk(obs, env_ids=[0, 1])
    prompts = [sampled.processor.prompt(f, t) for f, t, _, _ in calls]
    scored = sampled.decoder.score(prompts, [c[2] for c in calls], 1.3)
    assert torch.allclose(scored.logprobs.detach(), torch.tensor([lp for c in calls for lp in c[3]]), atol=1e-5)
    sampled.generator = torch.Generator().manual_seed(3)
    assert np.array_equal(sampled.predict_action_chunk(obs, env_ids=[0, 1]), first)
    with pytest.raises(ValueError, match="greedy decoding only"):
        VLA0Policy(vlm, PolicyConfig.load(tiny_policy_dir), temperature=1.0, relaxed_k=2)


def test_runner_keeps_each_task_on_its_own_slots():
    """Three tasks' episodes on 6 slots: the first fill gives each task 2 slots, and a slot
    changes task (an env rebuild: 5-20 s on LIBERO) only when its task has no episode left."""
    from vla0.envs.base import get_env
    from vla0.envs.runner import EnvExpert, EpisodeJob, EpisodeRunner

    class CountingPool:
        def __init__(self):
            self.spec, self.steps, self.builds = {}, {}, 0

        def reset(self, specs, seeds, ids):
            for spec, i in zip(specs, ids):
                self.builds += self.spec.get(i) != spec
                self.spec[i], self.steps[i] = spec, 0
            return [{"observation.state": np.zeros(4, np.float32)} for _ in ids]

        def expert_actions(self, ids):
            return [np.zeros(4, np.float32) for _ in ids]

        def step(self, actions, ids, render=None):
            out = []
            for i in ids:
                self.steps[i] += 1
                done = self.steps[i] >= 2
                out.append(({"observation.state": np.zeros(4, np.float32)}, 0.0, done, False, {"success": done}))
            return out

    family = get_env("metaworld")
    specs = [family.spec(t) for t in ("reach-v3", "drawer-open-v3", "button-press-topdown-v3")]
    jobs = [EpisodeJob(spec, seed) for spec in specs for seed in range(8)]  # grouped by task, as the trainer sends them
    pool = CountingPool()
    results = EpisodeRunner(pool, batch=6, action_dim=4).run(jobs, EnvExpert())
    assert all(r.success for r in results)
    assert pool.builds == 6  # one env per slot, never rebuilt (18 builds when a new env took the first pending job)
