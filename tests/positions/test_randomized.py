"""Random positions: sorted distinct draws from ``[0, N)``, uniform over the range, the plain
``0..n−1`` at inference, and what RoPE does with them (the rotary products of two tokens
depend on the difference of their drawn positions only).

Tolerances: the uniformity test allows 5 standard deviations of a binomial count; 1e-5 on
attention outputs.
"""

import numpy as np
import pytest

from keraformer.attentions import MultiHeadAttention
from keraformer.positions import RandomPositions, RotaryEmbedding, random_positions


def test_rows_are_sorted_distinct_and_in_range():
    positions = np.asarray(random_positions(64, 10, 40, seed=3))
    assert positions.shape == (64, 10) and positions.dtype == np.int32
    assert (np.diff(positions, axis=1) > 0).all()
    assert positions.min() >= 0 and positions.max() < 40
    assert len({tuple(row) for row in positions}) > 60  # rows are drawn independently


def test_every_position_is_equally_likely():
    rows, length, n = 4000, 8, 32
    positions = np.asarray(random_positions(rows, length, n, seed=0))
    counts = np.bincount(positions.ravel(), minlength=n)
    p = length / n
    expected, spread = rows * p, np.sqrt(rows * p * (1 - p))
    assert np.abs(counts - expected).max() < 5 * spread


def test_all_positions_when_length_is_the_range():
    positions = np.asarray(random_positions(3, 6, 6, seed=1))
    np.testing.assert_array_equal(positions, np.tile(np.arange(6), (3, 1)))


def test_layer_draws_in_training_only(tmp_path):
    layer = RandomPositions(50, seed=2)
    x = np.zeros((3, 7, 4), "float32")
    np.testing.assert_array_equal(np.asarray(layer(x)), np.tile(np.arange(7), (3, 1)))
    drawn = np.asarray(layer(x, training=True))
    assert (np.diff(drawn, axis=1) > 0).all() and drawn.max() < 50
    assert not (drawn == np.arange(7)).all()
    assert RandomPositions.from_config(layer.get_config()).max_position == 50


def test_longer_input_than_the_range_is_refused():
    with pytest.raises(ValueError, match="`max_position`"):
        random_positions(1, 9, 8)
    with pytest.raises(ValueError, match="`max_position`"):
        RandomPositions(0)
    with pytest.raises(TypeError, match="`max_position`"):
        RandomPositions(8.0)


def test_rope_sees_only_differences_of_drawn_positions():
    """Attention with RoPE at positions ``p`` equals attention at ``p − p_0``: a drawn
    subset trains the relative distances it contains, wherever it starts."""
    x = np.random.RandomState(0).randn(2, 6, 8).astype("float32")
    layer = MultiHeadAttention(2, 4, rotary=RotaryEmbedding())
    positions = np.asarray(random_positions(2, 6, 100, seed=4))
    got = np.asarray(layer(x, positions=positions, causal=True))
    want = np.asarray(layer(x, positions=positions - positions[:, :1], causal=True))
    np.testing.assert_allclose(got, want, atol=1e-5)
    default = np.asarray(layer(x, causal=True))
    np.testing.assert_allclose(np.asarray(layer(x, positions=np.arange(6), causal=True)),
                               default, atol=1e-6)
    assert np.abs(got - default).max() > 1e-3
