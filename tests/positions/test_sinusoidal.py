"""Sinusoidal encodings against the formula of Vaswani et al., computed in NumPy."""

import keras
import numpy as np
import pytest

from keraformer.positions import SinusoidalPositionEmbedding


def numpy_sinusoidal(length, dim):
    pe = np.zeros((length, dim))
    for p in range(length):
        for i in range(dim // 2):
            pe[p, 2 * i] = np.sin(p / 10000 ** (2 * i / dim))
            pe[p, 2 * i + 1] = np.cos(p / 10000 ** (2 * i / dim))
    return pe


@pytest.mark.parametrize("mode", ["add", "mul", "zero"])
def test_modes_match_formula(mode, tmp_path):
    x = np.random.RandomState(0).randn(2, 9, 6).astype("float32")
    pe = numpy_sinusoidal(9, 6)[None]
    want = {"add": x + pe, "mul": x * (1 + pe), "zero": pe}[mode]
    layer = SinusoidalPositionEmbedding(6, merge_mode=mode)
    np.testing.assert_allclose(np.asarray(layer(x)), want, atol=1e-5)
    inputs = keras.Input((None, 6))
    model = keras.Model(inputs, layer(inputs))
    model.save(str(tmp_path / "sin.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "sin.keras"))
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="merge_mode"):
        SinusoidalPositionEmbedding(4, merge_mode="concat")
    with pytest.raises(ValueError, match="output_dim"):
        SinusoidalPositionEmbedding(5)
    with pytest.raises(ValueError, match="output_dim"):
        SinusoidalPositionEmbedding(4)(np.zeros((1, 3, 6), "float32"))
