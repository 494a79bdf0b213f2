"""``GatedAttentionUnit`` against a float64 NumPy re-implementation from its weights.

Tolerances: 1e-5 for the float32 layer, 1e-6 for leak/padding invariance, 2e-3 relative for
input gradients against float64 central differences of the reference, 5e-2 for
mixed_bfloat16 against float32.
"""

from keras import ops
import numpy as np
import pytest

from keraformer.attentions import GatedAttentionUnit
from keraformer.masks import unilm_mask
from keraformer.positions import RotaryEmbedding
from tests.references import (assert_causal_no_leak, assert_mixed_bfloat16_close,
                              assert_padding_invariant, assert_round_trips, numpy_rope,
                              random_keep)

DIM, UNITS, KEY = 6, 8, 4


def numpy_gau(layer, x, keep=None, causal=False, allowed=None, rotary=False):
    """Reference forward pass; ``allowed`` (batch, q, k) overrides keep/causal when given."""
    x = np.asarray(x, "float64")
    weights = [np.asarray(w, "float64") for w in layer.i_dense.weights]
    hidden = x @ weights[0] + (weights[1] if len(weights) > 1 else 0)
    hidden = hidden / (1 + np.exp(-hidden))  # swish
    u, v, z = hidden[..., :UNITS], hidden[..., UNITS:2 * UNITS], hidden[..., 2 * UNITS:]
    q_so = [np.asarray(w, "float64") for w in layer.q_scaleoffset.weights]
    k_so = [np.asarray(w, "float64") for w in layer.k_scaleoffset.weights]
    q = z * q_so[0] + (q_so[1] if len(q_so) > 1 else 0)
    k = z * k_so[0] + (k_so[1] if len(k_so) > 1 else 0)
    if rotary:
        q, k = numpy_rope(q), numpy_rope(k)
    batch, length = x.shape[:2]
    if allowed is None:
        keep = np.ones((batch, length), bool) if keep is None else keep
        allowed = np.repeat(keep[:, None, :], length, axis=1)
        if causal:
            allowed = allowed & np.tril(np.ones((length, length), bool))[None]
    mixed = np.zeros((batch, length, UNITS))
    for b in range(batch):
        for i in range(length):
            keys = np.flatnonzero(allowed[b, i])
            n = len(keys)
            if n == 0:
                continue
            s = np.array([q[b, i] @ k[b, j] for j in keys]) / np.sqrt(KEY)
            if layer.chunk_size is not None:
                c = layer.chunk_size
                same = keys // c == i // c
                w = np.where(same, np.maximum(s, 0) ** 2, s) / n
            elif layer.normalization == "relu2":
                w = np.maximum(s, 0) ** 2 / n
            else:
                if layer.normalization == "softmax_plus":
                    s = s * np.log(max(n, layer.min_length or 1)) / np.log(512)
                w = np.exp(s - s.max())
                w = w / w.sum()
            mixed[b, i] = w @ v[b, keys]
    out_weights = [np.asarray(w, "float64") for w in layer.o_dense.weights]
    return (u * mixed) @ out_weights[0] + (out_weights[1] if len(out_weights) > 1 else 0)


def make_gau(x, **kwargs):
    layer = GatedAttentionUnit(UNITS, key_size=KEY, **kwargs)
    layer.build(x.shape)
    rng = np.random.RandomState(11)
    # random scale-offsets so that Q != K
    layer.set_weights([rng.randn(*w.shape).astype("float32") * 0.7 for w in layer.weights])
    return layer


def random_x(seed, batch, length):
    return np.random.RandomState(seed).randn(batch, length, DIM).astype("float32")


VARIANTS = [
    {"normalization": "softmax_plus"},
    {"normalization": "softmax_plus", "min_length": 16, "use_bias": False},
    {"normalization": "softmax"},
    {"normalization": "relu2"},
    {"normalization": "relu2", "chunk_size": 3},
    {"normalization": "relu2", "chunk_size": 4, "use_bias": False},
]


@pytest.mark.parametrize("length", [1, 7])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_matches_numpy_reference(variant, masked, causal, length):
    x = random_x(length, 2, length)
    layer = make_gau(x, **variant)
    keep = random_keep(length + 1, 2, length) if masked else None
    got = np.asarray(layer(x, mask=keep, causal=causal))
    want = numpy_gau(layer, x, keep, causal)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_unilm_mask_and_rotary():
    x = random_x(1, 2, 6)
    segments = np.array([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    mask = unilm_mask(segments)
    layer = make_gau(x, rotary=RotaryEmbedding())
    got = np.asarray(layer(x, mask=mask))
    want = numpy_gau(layer, x, allowed=np.asarray(mask)[:, 0], rotary=True)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_chunk_covering_the_sequence_equals_relu2():
    x = random_x(2, 2, 5)
    quadratic = make_gau(x, normalization="relu2")
    chunked = make_gau(x, normalization="relu2", chunk_size=8)
    keep = random_keep(3, 2, 5)
    for causal in (False, True):
        np.testing.assert_allclose(np.asarray(chunked(x, mask=keep, causal=causal)),
                                   np.asarray(quadratic(x, mask=keep, causal=causal)), atol=1e-6)


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[3], VARIANTS[4]],
                         ids=["softmax_plus", "relu2", "chunked"])
def test_causal_does_not_leak(variant):
    x = random_x(4, 1, 9)
    layer = make_gau(x, **variant)
    assert_causal_no_leak(lambda h: layer(h, causal=True), (x,), times=(0, 3, 7), moved=1e-4)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant", [VARIANTS[1], VARIANTS[3], VARIANTS[4]],
                         ids=["softmax_plus", "relu2", "chunked"])
def test_padding_never_changes_real_outputs(variant, causal):
    x = random_x(5, 1, 5)
    layer = make_gau(x, **variant)
    assert_padding_invariant(lambda h, keep: layer(h, mask=keep, causal=causal), (x,), extra=4,
                             seed=6)


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[4]], ids=["softmax_plus", "chunked"])
def test_input_gradient_matches_finite_differences(variant, gradients, numeric_gradient):
    x = random_x(7, 1, 5)
    layer = make_gau(x, **variant)
    keep = np.array([[True, True, True, True, False]])
    weights = np.random.RandomState(8).randn(1, 5, DIM).astype("float32")
    [grad] = gradients(lambda t: ops.sum(layer(t, mask=keep, causal=True) * weights), x)
    want = numeric_gradient(
        lambda value: np.sum(numpy_gau(layer, value, keep, causal=True) * weights),
        x.astype("float64"))
    np.testing.assert_allclose(grad, want, rtol=2e-3, atol=2e-4)


def test_sublayer_and_weight_names():
    x = random_x(0, 1, 3)
    layer = make_gau(x, use_bias=False)
    assert tuple(layer.i_dense.kernel.shape) == (DIM, 2 * UNITS + KEY)
    assert layer.o_dense.name == "o_dense"
    for sub in (layer.q_scaleoffset, layer.k_scaleoffset):
        assert [w.path.split("/")[-1] for w in sub.weights] == ["gamma"]
    assert [w.path.split("/")[-1] for w in make_gau(x).q_scaleoffset.weights] == ["gamma", "beta"]


def test_bad_options_raise():
    with pytest.raises(ValueError, match="normalization"):
        GatedAttentionUnit(8, normalization="sigmoid")
    with pytest.raises(ValueError, match="chunk_size"):
        GatedAttentionUnit(8, normalization="softmax", chunk_size=4)
    x = random_x(0, 1, 4)
    layer = make_gau(x, normalization="relu2", chunk_size=2)
    with pytest.raises(ValueError, match="mask"):
        layer(x, mask=np.ones((1, 1, 4, 4), bool))


@pytest.mark.parametrize("variant", [{"rotary": RotaryEmbedding(), "min_length": 16},
                                     {"normalization": "relu2", "chunk_size": 3}],
                         ids=["softmax_plus_rotary", "chunked"])
def test_serialization_and_mixed_precision(variant, tmp_path):
    x = random_x(9, 2, 7)
    layer = make_gau(x, **variant)
    assert_round_trips(layer, x, str(tmp_path / "gau.keras"), causal=True)
    assert_mixed_bfloat16_close(layer, x, calls=({"causal": True},))
