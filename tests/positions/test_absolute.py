"""Learned and hierarchical position embeddings against the formula in NumPy."""

import keras
import numpy as np
import pytest

from keraformer.positions import PositionEmbedding


def numpy_hierarchical(table, length, alpha):
    n = table.shape[0]
    u = (table - alpha * table[0]) / (1 - alpha)
    return np.stack([alpha * u[p // n] + (1 - alpha) * u[p % n] for p in range(length)])


@pytest.mark.parametrize("alpha", [0.4, 0.2])
def test_hierarchical_positions(alpha):
    layer = PositionEmbedding(8, 4, merge_mode="zero", hierarchical=True, alpha=alpha,
                              embeddings_initializer="random_normal")
    short = np.asarray(layer(np.zeros((1, 8, 4), "float32")))[0]
    table = np.asarray(layer.embeddings)
    np.testing.assert_array_equal(short, table)  # positions below N keep trained vectors
    long = np.asarray(layer(np.zeros((1, 64, 4), "float32")))[0]
    np.testing.assert_allclose(long, numpy_hierarchical(table, 64, alpha), atol=1e-6)
    np.testing.assert_allclose(long[:8], table, atol=1e-6)
    with pytest.raises(ValueError, match="65"):
        layer(np.zeros((1, 65, 4), "float32"))


@pytest.mark.parametrize("hierarchical", [False, True])
def test_given_positions_pick_those_rows(hierarchical):
    """``positions`` (a decoding step's, per row) add the vectors of those positions: the
    table's rows, or the NumPy hierarchical formula beyond them."""
    layer = PositionEmbedding(8, 4, hierarchical=hierarchical,
                              embeddings_initializer="random_normal")
    x = np.random.RandomState(0).randn(2, 3, 4).astype("float32")
    layer(x)
    positions = np.array([[5, 0, 7], [2, 2, 6]]) + (20 if hierarchical else 0)
    table = np.asarray(layer.embeddings)
    vectors = numpy_hierarchical(table, 30, 0.4) if hierarchical else table
    np.testing.assert_allclose(np.asarray(layer(x, positions=positions)),
                               x + vectors[positions], atol=1e-6)


def test_too_long_without_hierarchical_names_the_length():
    layer = PositionEmbedding(8, 4)
    with pytest.raises(ValueError, match="9.*8"):
        layer(np.zeros((1, 9, 4), "float32"))


def test_add_mode_and_keras_file(tmp_path):
    layer = PositionEmbedding(16, 4, hierarchical=True, embeddings_initializer="random_normal")
    inputs = keras.Input((None, 4))
    model = keras.Model(inputs, layer(inputs))
    x = np.random.RandomState(0).randn(2, 20, 4).astype("float32")
    want = x + numpy_hierarchical(np.asarray(layer.embeddings), 20, 0.4)[None]
    np.testing.assert_allclose(np.asarray(model(x)), want, atol=1e-5)
    model.save(str(tmp_path / "pos.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "pos.keras"))
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    with pytest.raises(ValueError, match="merge_mode"):
        PositionEmbedding(4, 4, merge_mode="mul")
