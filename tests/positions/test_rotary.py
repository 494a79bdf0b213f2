"""``apply_rotary`` / ``RotaryEmbedding`` against an independent NumPy rotation (atol 1e-6)."""

import keras
import numpy as np
import pytest

from keraformer.positions import RotaryEmbedding, apply_rotary


def numpy_rotary(x, positions, base=10000.0, interleaved=True, scaling=None, factor=1.0):
    """Rotate feature pairs by position·θ_i, pair by pair with explicit 2×2 matrices."""
    x = np.asarray(x, "float64")
    dim = x.shape[-1]
    if scaling == "ntk":
        base = base * factor ** (dim / (dim - 2))
    out = np.empty_like(x)
    for i in range(dim // 2):
        theta = base ** (-2.0 * i / dim)
        if scaling == "linear":
            theta /= factor
        a_idx, b_idx = (2 * i, 2 * i + 1) if interleaved else (i, i + dim // 2)
        for t in range(x.shape[1]):
            pos = positions[t] if np.ndim(positions) == 1 else positions[:, t]
            angle = np.asarray(pos, "float64") * theta
            c, s = np.cos(angle), np.sin(angle)
            if x.ndim == 4:
                c, s = np.reshape(c, (-1, 1)), np.reshape(s, (-1, 1))
            a, b = x[:, t, ..., a_idx], x[:, t, ..., b_idx]
            out[:, t, ..., a_idx] = a * c - b * s
            out[:, t, ..., b_idx] = a * s + b * c
    return out


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("rank", [3, 4])
@pytest.mark.parametrize("scaling, factor", [(None, 1.0), ("linear", 4.0), ("ntk", 8.0)])
def test_matches_numpy_reference(interleaved, rank, scaling, factor):
    rng = np.random.RandomState(rank)
    shape = (2, 7, 3, 8) if rank == 4 else (2, 7, 8)
    x = rng.randn(*shape).astype("float32")
    got = np.asarray(apply_rotary(x, interleaved=interleaved, scaling=scaling, factor=factor))
    want = numpy_rotary(x, np.arange(7), interleaved=interleaved, scaling=scaling,
                        factor=factor)
    np.testing.assert_allclose(got, want, atol=1e-6)
    positions = rng.randint(0, 50, (2, 7))
    got = np.asarray(apply_rotary(x, positions, interleaved=interleaved))
    np.testing.assert_allclose(got, numpy_rotary(x, positions, interleaved=interleaved),
                               atol=1e-5)


def test_precision_at_small_positions():
    x = np.random.RandomState(0).randn(1, 4, 2, 16).astype("float32")
    np.testing.assert_allclose(np.asarray(apply_rotary(x)), numpy_rotary(x, np.arange(4)),
                               atol=1e-6)


@pytest.mark.parametrize("interleaved", [True, False])
def test_score_depends_only_on_offset(interleaved):
    rng = np.random.RandomState(1)
    q, k = rng.randn(1, 1, 1, 16).astype("float32"), rng.randn(1, 1, 1, 16).astype("float32")
    scores = {}
    for m in range(0, 40, 3):
        for n in range(0, 40, 5):
            qm = np.asarray(apply_rotary(q, np.array([m]), interleaved=interleaved))
            kn = np.asarray(apply_rotary(k, np.array([n]), interleaved=interleaved))
            scores.setdefault(m - n, []).append(float((qm * kn).sum()))
    assert sum(len(v) > 1 for v in scores.values()) >= 10
    for offset, values in scores.items():
        assert np.ptp(values) < 1e-4, (offset, values)


def test_offset_positions_equal_the_step_inside_the_sequence():
    x = np.random.RandomState(2).randn(2, 9, 2, 8).astype("float32")
    full = np.asarray(apply_rotary(x))
    step = np.asarray(apply_rotary(x[:, 6:7], positions=np.array([6])))
    np.testing.assert_allclose(step, full[:, 6:7], atol=1e-6)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="even"):
        apply_rotary(np.zeros((1, 2, 3), "float32"))
    with pytest.raises(ValueError, match="scaling"):
        RotaryEmbedding(scaling="yarn")
    with pytest.raises(ValueError, match="factor"):
        RotaryEmbedding(scaling="linear", factor=0)
    with pytest.raises(ValueError, match="shape"):
        apply_rotary(np.zeros((4, 8), "float32"))
    with pytest.raises(ValueError, match="positions"):
        apply_rotary(np.zeros((1, 4, 8), "float32"), positions=np.zeros((1, 1, 4)))


def test_half_precision_input_keeps_its_dtype():
    x = np.random.RandomState(4).randn(2, 6, 8).astype("float16")
    positions = np.array([0, 1, 2, 300, 301, 302])
    got = apply_rotary(x, positions)
    assert keras.backend.standardize_dtype(got.dtype) == "float16"
    want = numpy_rotary(x.astype("float32"), positions)
    np.testing.assert_allclose(np.asarray(got, "float32"), want, atol=5e-3)


def test_layer_round_trips_through_keras_file(tmp_path):
    inputs = keras.Input((None, 2, 8))
    layer = RotaryEmbedding(base=500, interleaved=False, scaling="ntk", factor=2.0)
    model = keras.Model(inputs, layer(inputs))
    x = np.random.RandomState(3).randn(2, 5, 2, 8).astype("float32")
    model.save(str(tmp_path / "rotary.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "rotary.keras"))
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(loaded(x)))
    assert RotaryEmbedding.from_config(layer.get_config()).get_config() == layer.get_config()
