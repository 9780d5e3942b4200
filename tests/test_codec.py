import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vla0.codec import ActionCodec


@st.composite
def codec_and_chunk(draw):
    H = draw(st.integers(1, 6))
    D = draw(st.integers(1, 5))
    B = draw(st.sampled_from([1, 7, 100, 250, 1000, 4000]))
    low = draw(arrays(np.float64, D, elements=st.floats(-10, 10)))
    span = draw(arrays(np.float64, D, elements=st.floats(0, 5)))
    codec = ActionCodec(low, low + span, H, B)
    unit = draw(arrays(np.float64, (H, D), elements=st.floats(0, 1)))
    return codec, low + unit * span


@settings(max_examples=200, deadline=None)
@given(codec_and_chunk())
def test_round_trip_error_at_most_half_a_bin(case):
    codec, chunk = case
    text = codec.encode(chunk)
    decoded = codec.decode(text)
    assert decoded.well_formed
    half_bin = (codec.high - codec.low) / codec.num_bins / 2
    assert np.all(np.abs(decoded.actions - chunk) <= half_bin + 1e-5 * (1 + np.abs(chunk)))


@settings(max_examples=100, deadline=None)
@given(codec_and_chunk())
def test_text_format_is_space_separated_integers_in_range(case):
    codec, chunk = case
    parts = codec.encode(chunk).split(" ")
    assert len(parts) == codec.num_values
    assert all(p.isdigit() and 0 <= int(p) <= codec.num_bins for p in parts)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_decode_never_raises_on_arbitrary_text(text):
    codec = ActionCodec(np.zeros(3), np.ones(3), chunk_size=2, num_bins=100)
    out = codec.decode(text)
    assert out.actions.shape == (2, 3) and out.bins.min() >= 0 and out.bins.max() <= 100


def test_values_outside_the_stats_are_clipped():
    codec = ActionCodec(np.array([-1.0]), np.array([1.0]), chunk_size=2, num_bins=100)
    assert codec.encode(np.array([[-5.0], [5.0]])) == "0 100"


def test_short_chunk_is_padded_with_last_complete_step_and_flagged():
    codec = ActionCodec(np.zeros(2), np.full(2, 100.0), chunk_size=3, num_bins=100)
    out = codec.decode("10 20 30 40 50")
    assert not out.well_formed
    np.testing.assert_array_equal(out.bins, [[10, 20], [30, 40], [30, 40]])


def test_long_chunk_is_truncated_and_large_numbers_clamped():
    codec = ActionCodec(np.zeros(2), np.full(2, 100.0), chunk_size=1, num_bins=100)
    out = codec.decode("7 9999 1 2")
    assert not out.well_formed
    np.testing.assert_array_equal(out.bins, [[7, 100]])


def test_garbage_gives_centre_actions():
    codec = ActionCodec(np.zeros(2), np.full(2, 100.0), chunk_size=2, num_bins=100)
    out = codec.decode("hello")
    assert not out.well_formed
    np.testing.assert_array_equal(out.bins, [[50, 50], [50, 50]])


@pytest.mark.parametrize("text,ok", [("1 2 3 4", True), ("1 2 3 4 ", True), ("1  2 3 4", False),
                                     ("1 2 3", False), ("1 2 3 101", False), ("1,2,3,4", False)])
def test_well_formed_flag(text, ok):
    codec = ActionCodec(np.zeros(2), np.ones(2), chunk_size=2, num_bins=100)
    assert codec.decode(text).well_formed == ok


def test_quantile_normalization_uses_q01_q99():
    stats = {"min": [-9.0], "max": [9.0], "q01": [-1.0], "q99": [1.0]}
    codec = ActionCodec.from_stats(stats, chunk_size=1, num_bins=10, normalization="quantile")
    assert codec.encode(np.array([[0.0]])) == "5"
    with pytest.raises(ValueError, match="q01"):
        ActionCodec.from_stats({"min": [0.0], "max": [1.0]}, 1, 10, "quantile")


def test_constant_dimension_round_trips_exactly():
    codec = ActionCodec(np.array([0.5, 0.0]), np.array([0.5, 1.0]), chunk_size=1, num_bins=10)
    out = codec.decode(codec.encode(np.array([[0.5, 0.3]])))
    np.testing.assert_allclose(out.actions, [[0.5, 0.3]], atol=1e-6)
