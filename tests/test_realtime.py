"""Real-time execution: the executor's modes with simulated latency, forced-prefix decoding of the
text head, RTC guided inpainting of the flow head, and committed actions through the server and
the light client's asynchronous loop."""

import dataclasses

import numpy as np
import pytest
import torch

from vla0.client import PolicyClient, ServerError
from vla0.config import PolicyConfig
from vla0.model.vlm import load_vlm
from vla0.policy.executor import ChunkExecutor
from vla0.policy.flow_head import FlowExpert, euler_integrate, expert_config_for
from vla0.policy.policy import VLA0Policy
from vla0.policy.rtc import guided_integrate, soft_mask
from vla0.serve.server import PolicyServer, ServeConfig, ServerThread
from vla0_client import RealTimeLoop

H, D = 4, 3
FRONT = "observation.images.front"


def chunk_at(step: int) -> np.ndarray:
    """A chunk predicted at `step` whose row r says (step, step + r, 0): which chunk and row ran."""
    return np.stack([[step, step + r, 0.0] for r in range(H)]).astype(np.float64)


def run(ex: ChunkExecutor, steps: int, calls: list | None = None) -> np.ndarray:
    """The executor driven as the runner drives it; predict records its calls."""
    step = [0]

    def predict(obs, env_ids, **rtc):
        if calls is not None:
            calls.append((step[0], rtc))
        return [chunk_at(step[0]) for _ in env_ids]

    out = []
    for t in range(steps):
        step[0] = t
        out.append(ex.select_action({"task": ["x"]}, [0], predict)[0])
    return np.stack(out)


# -- the executor's modes ----------------------------------------------------------------------------

def test_sync_ignores_latency_and_matches_todays_executor():
    """A synchronous robot waits while the model thinks: the same actions at any latency."""
    today = run(ChunkExecutor(ensemble=2, n_action_steps=1), 12)
    for d in (0, 1, 3):
        assert np.array_equal(run(ChunkExecutor(ensemble=2, n_action_steps=1, mode="sync", latency_steps=d,
                                                chunk_size=H), 12), today)


def test_async_switches_at_the_arrival_row_and_waits_for_the_first_chunk():
    ex = ChunkExecutor(n_action_steps=1, mode="async", latency_steps=2, chunk_size=H)
    acts = run(ex, 9)
    # a request every max(1, d) = 2 steps; the chunk predicted at t is used from t + 2, at row 2;
    # the first chunk is awaited (the robot starts at rest)
    assert [tuple(a[:2]) for a in acts[:6]] == [(0, 0), (0, 1), (0, 2), (0, 3), (2, 4), (2, 5)]
    assert ex.episode_stats(0)["stall_steps"] == 2


def test_latency_that_leaves_nothing_to_execute_is_refused():
    with pytest.raises(ValueError, match=r"latency of 4 control steps >= the chunk size 4"):
        ChunkExecutor(mode="rtc", latency_steps=4, chunk_size=4)
    with pytest.raises(ValueError, match="execution mode"):
        ChunkExecutor(mode="sometimes")
    with pytest.raises(ValueError, match=r"latency of 9 control steps >= the chunk size 8"):
        PolicyConfig(action_dim=2, cameras=["a"], action_stats={"min": [0, 0], "max": [1, 1]}, chunk_size=8,
                     execution="rtc", latency_steps=9)


def test_rtc_requests_carry_the_plan_and_its_committed_rows():
    calls = []
    ex = ChunkExecutor(n_action_steps=3, mode="rtc", latency_steps=1, chunk_size=H)
    run(ex, 7, calls)
    assert [c[0] for c in calls] == [0, 3, 6]  # every max(n_action_steps, d) = 3 steps
    first, second = calls[0][1], calls[1][1]
    assert first["prefix"][0].size == 0 and first["committed_steps"] == [0]
    # at step 3 the robot still has row 3 of the chunk predicted at 0; one row runs while in flight
    assert np.array_equal(second["prefix"][0], chunk_at(0)[3:].astype(np.float32))
    assert second["committed_steps"] == [1]


def test_ensemble_mode_averages_arrived_chunks_and_smoothness_is_measured():
    ex = ChunkExecutor(ensemble=2, n_action_steps=1, mode="async-ensemble", latency_steps=1, chunk_size=H)
    acts = run(ex, 4)
    # step 2: the chunks predicted at 0 (row 2) and 1 (row 1) have arrived: their mean
    assert np.allclose(acts[2], [0.5, 2.0, 0.0])
    stats = ex.episode_stats(0)
    assert stats["boundaries"] >= 1 and stats["mean_boundary_jump"] > 0 and stats["total_jerk"] >= 0
    ex.reset([0])
    assert ex.episode_stats(0)["boundaries"] == 0


# -- the text head: forced-prefix decoding -------------------------------------------------------------

@pytest.fixture(scope="module")
def vlm(tiny_model_dir):
    return load_vlm(tiny_model_dir)


def make_config(**kw) -> PolicyConfig:
    return PolicyConfig(action_dim=D, cameras=["front"], chunk_size=H, num_bins=100, image_size=[32, 32],
                        crop_fraction=1.0, ensemble=1, action_stats={"min": [-1.0] * D, "max": [1.0] * D}, **kw)


def observations(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {FRONT: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), "task": [f"task {i}" for i in range(n)]}


@pytest.fixture(scope="module")
def text_policy(vlm):
    return VLA0Policy(vlm, make_config())


def test_forced_prefix_reproduces_the_committed_actions_and_the_greedy_continuation(text_policy):
    obs = observations(3)
    plain = text_policy.predict_action_chunk(obs)
    nothing = text_policy.predict_action_chunk(obs, prefix=[np.zeros((0, D))] * 3, committed_steps=[0, 0, 0])
    assert np.array_equal(nothing, plain)  # nothing committed: normal decoding
    # forcing the model's own first rows changes nothing: what follows is its greedy continuation
    own = text_policy.predict_action_chunk(obs, prefix=list(plain), committed_steps=[1, 2, 3])
    assert np.array_equal(own, plain)
    # arbitrary committed actions come back exactly (at the bins' centres), rows of different lengths
    rng = np.random.default_rng(1)
    codec = text_policy.processor.codec
    committed = [codec.from_bins(rng.integers(0, 101, (k, D))).astype(np.float32) for k in (1, 2, 3)]
    out = text_policy.predict_action_chunk(obs, prefix=committed, committed_steps=[1, 2, 3])
    for row, c in zip(out, committed):
        assert np.array_equal(row[:len(c)], c)
    assert text_policy.malformed_outputs == 0


def test_forced_prefix_needs_the_fast_decoder(vlm):
    slow = VLA0Policy(vlm, make_config(), fast_decode=False)
    with pytest.raises(ValueError, match="fast decoder"):
        slow.predict_action_chunk(observations(1), prefix=[np.zeros((2, D))], committed_steps=[1])


# -- the flow head: RTC guided inpainting ------------------------------------------------------------------

@pytest.fixture(scope="module")
def flow_policy(vlm):
    cfg = expert_config_for(vlm.model.config, depth=2, num_steps=5)
    torch.manual_seed(0)
    config = dataclasses.replace(make_config(), head="flow", flow_expert=dataclasses.asdict(cfg))
    return VLA0Policy(vlm, config, expert=FlowExpert(cfg, D, H), generator=torch.Generator().manual_seed(0))


def test_soft_mask_follows_the_paper():
    w = soft_mask(8, 2, 6)
    assert np.array_equal(w[:2], [1, 1]) and np.all(w[6:] == 0)
    assert np.all(np.diff(w[2:6]) < 0) and 0 < w[5] < w[2] < 1


def test_rtc_with_no_overlap_is_plain_sampling_bit_for_bit(flow_policy):
    obs = observations(2)
    flow_policy.generator.manual_seed(7)
    plain = flow_policy.predict_action_chunk(obs)
    flow_policy.generator.manual_seed(7)
    rtc = flow_policy.predict_action_chunk(obs, prefix=[np.zeros((0, D))] * 2, committed_steps=[0, 0])
    assert np.array_equal(rtc, plain)
    # the guided integrator with zero weights is the Euler integrator itself
    torch.manual_seed(0)
    noise, target = torch.randn(2, H, D), torch.randn(2, H, D)
    field = torch.nn.Linear(D, D)

    def velocity(x, t):
        return field(x) * t[:, None, None]

    with torch.no_grad():
        assert torch.equal(guided_integrate(velocity, noise, 5, target, torch.zeros(2, H)),
                           euler_integrate(velocity, noise, 5))


def test_rtc_pulls_the_committed_rows_to_the_plan(flow_policy):
    obs = observations(4, seed=3)
    plan = np.full((4, 3, D), 0.6, np.float32)
    flow_policy.generator.manual_seed(1)
    plain = flow_policy.predict_action_chunk(obs)
    flow_policy.generator.manual_seed(1)
    rtc = flow_policy.predict_action_chunk(obs, prefix=list(plan), committed_steps=[2] * 4)
    err = lambda x: np.abs(x[:, :2] - plan[:, :2]).mean()  # noqa: E731
    assert err(rtc) < 0.5 * err(plain), (err(rtc), err(plain))


# -- serving and the asynchronous client loop ---------------------------------------------------------------

@pytest.fixture(scope="module")
def server(text_policy):
    with ServerThread(PolicyServer(text_policy, ServeConfig(port=0, max_wait_ms=5))) as s:
        yield s


def test_served_requests_carry_committed_actions_and_bad_shapes_are_refused(server, text_policy):
    obs = {FRONT: observations(1)[FRONT][0], "task": "task 0"}
    committed = text_policy.processor.codec.from_bins(np.array([[10, 50, 90], [0, 100, 42]])).astype(np.float32)
    with PolicyClient(server.url) as c:
        assert c.metadata["real_time_chunking"] is True
        reply = c.infer({**obs, "prefix_actions": committed, "committed_steps": 2})
        assert reply["inferred"] and np.array_equal(reply["actions"][:2], committed)
        shape = f"expected a (k, {D}) float array with k <= {H}"
        for bad, says in (({"prefix_actions": np.zeros((2, D + 1), np.float32), "committed_steps": 1}, shape),
                          ({"prefix_actions": np.zeros((H + 1, D), np.float32), "committed_steps": 1}, shape),
                          ({"committed_steps": 1}, shape),
                          ({"prefix_actions": committed, "committed_steps": 3}, "an integer in 0..2")):
            with pytest.raises(ServerError) as e:
                c.infer({**obs, **bad})
            assert e.value.code == "bad_prefix" and says in str(e.value), str(e.value)
        again = c.infer({**obs, "prefix_actions": committed, "committed_steps": 2}, new_chunk=True)
        assert np.array_equal(again["actions"], reply["actions"])  # the connection stays usable


@pytest.mark.parametrize("execution", ["sync", "async", "rtc"])
def test_real_time_loop_overlaps_inference_with_execution(server, execution):
    obs = {FRONT: observations(1)[FRONT][0], "task": "task 0"}
    with PolicyClient(server.url) as c:
        loop = RealTimeLoop(c, fps=200, execution=execution, latency_steps=1)
        sent = []
        loop.run(lambda: obs, sent.append, steps=12)
        loop.close()
    assert len(sent) == 12 and all(a.shape == (D,) for a in sent)
    assert loop.latencies and loop.executor.step(0) == 12


# -- evaluation with latency ----------------------------------------------------------------------------

def test_latency_zero_is_todays_evaluation_and_results_record_the_mode(metaworld_policy_dir, tmp_path):
    from vla0.eval.evaluate import evaluate
    kw = dict(tasks=["reach-v3"], episodes=2, seed=10_000, cameras=("corner3",), image_size=(32, 32), num_workers=0,
              videos=0, progress=False, max_episode_steps=12)

    def episodes(out, **options):
        policy = VLA0Policy.from_pretrained(metaworld_policy_dir, **options)
        res = evaluate(policy, out=tmp_path / out, **kw)
        return res, [(e["success"], e["steps"], e["mean_boundary_jump"], e["total_jerk"]) for e in res["episodes"]]

    today, ep_today = episodes("today")
    sync, ep_sync = episodes("sync_d0", execution="sync", latency_steps=0)
    assert ep_sync == ep_today and sync["execution"] == "sync" and sync["latency_steps"] == 0
    rtc, _ = episodes("rtc_d1", execution="rtc", latency_steps=1)
    assert rtc["execution"] == "rtc" and rtc["latency_steps"] == 1
    assert "mean_boundary_jump" in rtc["tasks"]["reach-v3"] and rtc["episodes"][0]["stall_steps"] == 1


def test_eval_cli_refuses_a_latency_the_chunk_cannot_cover(metaworld_policy_dir, tmp_path, capsys):
    from vla0.cli import main as cli
    assert cli(["eval", "--policy", str(metaworld_policy_dir), "--tasks", "reach-v3", "--episodes", "1",
                "--out", str(tmp_path), "--execution", "rtc", "--latency-steps", "2"]) == 2
    assert "latency of 2 control steps >= the chunk size 2" in capsys.readouterr().err
    assert not (tmp_path / "episodes.jsonl").exists()  # refused before any episode
