"""T5 relative position buckets against an independent NumPy implementation of the formula."""

import math

import keras
import numpy as np
import pytest

from keraformer.positions import RelativePositionBias, relative_position_bucket


def numpy_bucket(relative, bidirectional, num_buckets, max_distance):
    """T5's bucket of one offset ``key − query``, written with Python scalars."""
    bucket = 0
    n = -relative
    if bidirectional:
        num_buckets //= 2
        if n < 0:
            bucket += num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return bucket + n
    large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                            * (num_buckets - max_exact))
    return bucket + min(large, num_buckets - 1)


OFFSETS = [-1000, -300, -129, -128, -127, -64, -17, -16, -15, -9, -8, -7, -1, 0, 1, 2, 7, 8,
           9, 15, 16, 31, 64, 127, 128, 129, 500, 5000]


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (16, 64), (8, 20)])
def test_buckets_match_formula(bidirectional, num_buckets, max_distance):
    got = np.asarray(relative_position_bucket(np.array(OFFSETS), bidirectional, num_buckets,
                                              max_distance))
    want = [numpy_bucket(r, bidirectional, num_buckets, max_distance) for r in OFFSETS]
    np.testing.assert_array_equal(got, want)


def test_bias_layer_and_offset_rows():
    layer = RelativePositionBias(heads=3, num_buckets=8, max_distance=20, bidirectional=False,
                                 embeddings_initializer="random_normal")
    q = np.zeros((1, 6, 4), "float32")
    full = np.asarray(layer(q, q))
    assert full.shape == (1, 3, 6, 6)
    table = np.asarray(layer.embeddings)
    for i in range(6):
        for j in range(6):
            np.testing.assert_allclose(full[0, :, i, j],
                                       table[numpy_bucket(j - i, False, 8, 20)])
    step = np.asarray(layer(q[:, :1], q, offset=4))
    np.testing.assert_allclose(step[0, :, 0], full[0, :, 4])


@pytest.mark.parametrize("bidirectional", [True, False])
def test_offset_rows_equal_the_full_bias(bidirectional):
    layer = RelativePositionBias(heads=2, num_buckets=16, max_distance=12,
                                 bidirectional=bidirectional,
                                 embeddings_initializer="random_normal")
    k = np.zeros((2, 30, 4), "float32")
    full = np.asarray(layer(k, k))
    for offset, q_len in [(0, 3), (5, 4), (20, 10), (29, 1)]:
        rows = np.asarray(layer(k[:, :q_len], k, offset=offset))
        assert rows.shape == (1, 2, q_len, 30)
        np.testing.assert_array_equal(rows[0], full[0, :, offset:offset + q_len])


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="heads"):
        RelativePositionBias(heads=0)
    with pytest.raises(ValueError, match="num_buckets"):
        RelativePositionBias(heads=2, num_buckets=2)
    with pytest.raises(ValueError, match="max_distance"):
        RelativePositionBias(heads=2, num_buckets=32, max_distance=8)


def test_layer_round_trips_through_keras_file(tmp_path):
    q = keras.Input((None, 4))
    k = keras.Input((None, 4))
    layer = RelativePositionBias(heads=2, num_buckets=16, max_distance=32,
                                 embeddings_initializer="random_normal")
    model = keras.Model([q, k], layer(q, k))
    x = np.zeros((1, 5, 4), "float32")
    model.save(str(tmp_path / "bias.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "bias.keras"))
    np.testing.assert_array_equal(np.asarray(model([x, x])), np.asarray(loaded([x, x])))
