import numpy as np
import pytest

from vla0.config import check_execution
from vla0.policy.executor import ChunkExecutor


def chunk(*rows):
    return np.array(rows, dtype=np.float64)[:, None]  # (H, 1)


def test_uniform_average_of_chunks_covering_the_step():
    ens = ChunkExecutor(ensemble=3)
    ens.add(0, chunk(1, 2, 3))      # predicted at step 0
    assert ens.pop(0) == pytest.approx([1])
    ens.add(0, chunk(20, 30, 40))   # step 1: old says 2, new says 20
    assert ens.pop(0) == pytest.approx([(2 + 20) / 2])
    ens.add(0, chunk(300, 400, 500))  # step 2: 3, 30, 300
    assert ens.pop(0) == pytest.approx([(3 + 30 + 300) / 3])
    ens.add(0, chunk(4000, 5000, 6000))  # step 3: first chunk no longer covers; 40, 400, 4000
    assert ens.pop(0) == pytest.approx([(40 + 400 + 4000) / 3])


def test_window_limits_the_number_of_voting_chunks():
    ens = ChunkExecutor(ensemble=2)
    ens.add(0, chunk(1, 2, 3))
    ens.pop(0)
    ens.add(0, chunk(10, 20, 30))
    ens.pop(0)
    ens.add(0, chunk(100, 200, 300))  # only the 2 newest vote: 20 and 100
    assert ens.pop(0) == pytest.approx([60])


def test_exponential_weights_favour_the_oldest_as_in_aloha():
    ens = ChunkExecutor(ensemble=2, decay=np.log(3.0))  # weights 1, 1/3
    ens.add(0, chunk(0, 4))
    ens.pop(0)
    ens.add(0, chunk(8, 8))
    assert ens.pop(0) == pytest.approx([(4 * 1 + 8 / 3) / (1 + 1 / 3)])


def test_executing_several_steps_per_chunk_and_per_env_state():
    ens = ChunkExecutor(ensemble=1)
    ens.add(0, chunk(1, 2))
    ens.add(1, chunk(7, 8))
    assert [ens.pop(0)[0], ens.pop(0)[0]] == [1, 2]
    assert ens.needs_chunk(0) and not ens.needs_chunk(1)
    ens.reset([1])
    assert ens.needs_chunk(1)
    with pytest.raises(RuntimeError):
        ens.pop(0)


def test_n_action_steps_makes_a_chunk_due_before_the_old_one_runs_out():
    ens = ChunkExecutor(ensemble=2, n_action_steps=2)
    ens.add(0, chunk(1, 2, 3, 4))
    assert not ens.needs_chunk(0) and ens.steps_since_chunk(0) == 0
    ens.pop(0)
    assert not ens.needs_chunk(0) and ens.steps_since_chunk(0) == 1
    ens.pop(0)
    assert ens.needs_chunk(0) and ens.steps_since_chunk(0) == 2  # rows 3, 4 left, but 2 steps executed
    ens.add(0, chunk(30, 40, 50, 60))
    assert ens.steps_since_chunk(0) == 0 and ens.pop(0) == pytest.approx([(3 + 30) / 2])
    assert ChunkExecutor(ensemble=2).steps_since_chunk(5) == 0
    with pytest.raises(ValueError, match="n_action_steps must be >= 1"):
        ChunkExecutor(n_action_steps=0)


def test_check_execution_names_the_bad_setting():
    check_execution(4, 1, 4)
    with pytest.raises(ValueError, match=r"n_action_steps must be in 1..4 \(the chunk_size\), got 5"):
        check_execution(5, 1, 4)
    with pytest.raises(ValueError, match="ensemble must be >= 1, got 0"):
        check_execution(1, 0, 4)


def test_select_action_predicts_only_due_envs_and_clips():
    ex = ChunkExecutor(ensemble=1, n_action_steps=2, bounds=(np.array([-1.0]), np.array([1.0])))
    calls = []

    def predict(obs, env_ids):
        calls.append((list(obs["task"]), env_ids))
        return [chunk(5, -0.5, 0.0) * (i + 1) for i in env_ids]

    obs = {"task": ["a", "b", "c"], "observation.state": np.zeros((3, 2))}
    first = ex.select_action(obs, [0, 1, 2], predict)
    assert calls == [(["a", "b", "c"], [0, 1, 2])] and first.tolist() == [[1.0]] * 3  # 5, 10, 15 clipped to 1
    ex.reset([1])
    second = ex.select_action(obs, [0, 1, 2], predict)
    assert calls[1] == (["b"], [1])  # only env 1 (reset) needs a chunk; 0 and 2 are mid-chunk
    assert second.ravel().tolist() == [-0.5, 1.0, -1.0]  # -1.5 clipped to -1


def test_vla0_released_weights_newest_one_older_half():
    ens = ChunkExecutor(ensemble=3, weights="vla0")
    ens.add(0, chunk(1, 2, 3))
    assert ens.pop(0) == pytest.approx([1])  # alone: weight 1
    ens.add(0, chunk(20, 30, 40))
    assert ens.pop(0) == pytest.approx([(0.5 * 2 + 1.0 * 20) / 1.5])
    ens.add(0, chunk(300, 400, 500))
    assert ens.pop(0) == pytest.approx([(0.5 * 3 + 0.5 * 30 + 1.0 * 300) / 2.0])
    with pytest.raises(ValueError, match="ensemble weights must be one of"):
        ChunkExecutor(weights="linear")
