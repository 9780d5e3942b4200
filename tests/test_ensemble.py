import numpy as np
import pytest

from vla0.ensemble import TemporalEnsembler


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
