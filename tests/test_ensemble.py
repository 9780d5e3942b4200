import numpy as np
import pytest

from vla0.ensemble import TemporalEnsembler, check_execution


def chunk(*rows):
    return np.array(rows, dtype=np.float64)[:, None]  # (H, 1)


def test_uniform_average_of_chunks_covering_the_step():
    ens = TemporalEnsembler(ensemble=3)
    ens.add(0, chunk(1, 2, 3))      # predicted at step 0
    assert ens.pop(0) == pytest.approx([1])
    ens.add(0, chunk(20, 30, 40))   # step 1: old says 2, new says 20
    assert ens.pop(0) == pytest.approx([(2 + 20) / 2])
    ens.add(0, chunk(300, 400, 500))  # step 2: 3, 30, 300
    assert ens.pop(0) == pytest.approx([(3 + 30 + 300) / 3])
    ens.add(0, chunk(4000, 5000, 6000))  # step 3: first chunk no longer covers; 40, 400, 4000
    assert ens.pop(0) == pytest.approx([(40 + 400 + 4000) / 3])


def test_window_limits_the_number_of_voting_chunks():
    ens = TemporalEnsembler(ensemble=2)
    ens.add(0, chunk(1, 2, 3))
    ens.pop(0)
    ens.add(0, chunk(10, 20, 30))
    ens.pop(0)
    ens.add(0, chunk(100, 200, 300))  # only the 2 newest vote: 20 and 100
    assert ens.pop(0) == pytest.approx([60])


def test_exponential_weights_favour_the_oldest_as_in_aloha():
    ens = TemporalEnsembler(ensemble=2, decay=np.log(3.0))  # weights 1, 1/3
    ens.add(0, chunk(0, 4))
    ens.pop(0)
    ens.add(0, chunk(8, 8))
    assert ens.pop(0) == pytest.approx([(4 * 1 + 8 / 3) / (1 + 1 / 3)])


def test_executing_several_steps_per_chunk_and_per_env_state():
    ens = TemporalEnsembler(ensemble=1)
    ens.add(0, chunk(1, 2))
    ens.add(1, chunk(7, 8))
    assert [ens.pop(0)[0], ens.pop(0)[0]] == [1, 2]
    assert ens.needs_chunk(0) and not ens.needs_chunk(1)
    ens.reset([1])
    assert ens.needs_chunk(1)
    with pytest.raises(RuntimeError):
        ens.pop(0)


def test_action_horizon_makes_a_chunk_due_before_the_old_one_runs_out():
    ens = TemporalEnsembler(ensemble=2, action_horizon=2)
    ens.add(0, chunk(1, 2, 3, 4))
    assert not ens.needs_chunk(0) and ens.steps_since_chunk(0) == 0
    ens.pop(0)
    assert not ens.needs_chunk(0) and ens.steps_since_chunk(0) == 1
    ens.pop(0)
    assert ens.needs_chunk(0) and ens.steps_since_chunk(0) == 2  # rows 3, 4 left, but 2 steps executed
    ens.add(0, chunk(30, 40, 50, 60))
    assert ens.steps_since_chunk(0) == 0 and ens.pop(0) == pytest.approx([(3 + 30) / 2])
    assert TemporalEnsembler(ensemble=2).steps_since_chunk(5) == 0
    with pytest.raises(ValueError, match="action_horizon must be >= 1"):
        TemporalEnsembler(action_horizon=0)


def test_check_execution_names_the_bad_setting():
    check_execution(4, 1, 4)
    with pytest.raises(ValueError, match=r"action_horizon must be in 1..4 \(the chunk length\), got 5"):
        check_execution(5, 1, 4)
    with pytest.raises(ValueError, match="ensemble must be >= 1, got 0"):
        check_execution(1, 0, 4)
