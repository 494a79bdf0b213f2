"""``linear_attention`` / ``LinearAttention`` against a per-query float64 NumPy loop.

Tolerances: 1e-5 (absolute and relative) for the float32 core, 1e-6 for leak/padding
invariance, 2e-3 relative for gradients against float64 central differences of the reference,
5e-2 for mixed_bfloat16 against float32.
"""

import keras
from keras import ops
import numpy as np
import pytest

from keraformer.attentions import LinearAttention, linear_attention
from keraformer.masks import padding_mask


def numpy_linear_attention(q, k, v, keep=None, causal=False, feature_map="elu"):
    """Query by query: explicit sums over the allowed keys, in float64."""
    q, k, v = (np.asarray(x, "float64") for x in (q, k, v))
    batch, q_len, heads, _ = q.shape
    k_len = k.shape[1]
    keep = np.ones((batch, k_len)) if keep is None else np.asarray(keep, "float64")
    out = np.zeros((batch, q_len, heads, v.shape[-1]))
    for b in range(batch):
        for h in range(heads):
            for i in range(q_len):
                keys = [j for j in range(k_len) if keep[b, j] and (not causal or j <= i)]
                if not keys:
                    continue
                if feature_map == "elu":
                    phi = lambda x: np.where(x > 0, x + 1.0, np.exp(x))  # noqa: E731
                    weights = np.array([phi(q[b, i, h]) @ phi(k[b, j, h]) for j in keys])
                    out[b, i, h] = weights @ v[b, keys, h] / weights.sum()
                else:
                    fq = np.exp(q[b, i, h]) / np.exp(q[b, i, h]).sum()
                    ek = np.exp(k[b, keys, h])           # (keys, d)
                    fk = ek / ek.sum(axis=0)             # softmax over positions
                    out[b, i, h] = fq @ (fk.T @ v[b, keys, h])
    return out


def random_qkv(seed, batch, q_len, k_len, heads, d, e):
    rng = np.random.RandomState(seed)
    return (rng.randn(batch, q_len, heads, d).astype("float32"),
            rng.randn(batch, k_len, heads, d).astype("float32"),
            rng.randn(batch, k_len, heads, e).astype("float32"))


def random_keep(seed, batch, length):
    """Right-padded key mask with random real lengths >= 1."""
    lengths = np.random.RandomState(seed).randint(1, length + 1, batch)
    lengths[0] = length
    return np.arange(length)[None] < lengths[:, None]


SHAPES = [  # batch, q_len, k_len, heads, d, e, chunk_size
    (1, 1, 1, 1, 4, 3, 4),
    (2, 5, 5, 2, 4, 3, 4),
    (2, 13, 13, 3, 8, 5, 4),
    (1, 9, 9, 2, 6, 6, 64),
]


@pytest.mark.parametrize("feature_map", ["elu", "softmax"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_numpy_reference(shape, masked, causal, feature_map):
    batch, q_len, k_len, heads, d, e, chunk = shape
    q, k, v = random_qkv(q_len, batch, q_len, k_len, heads, d, e)
    keep = random_keep(k_len, batch, k_len) if masked else None
    got = linear_attention(q, k, v, keep, causal, feature_map, chunk_size=chunk)
    want = numpy_linear_attention(q, k, v, keep, causal, feature_map)
    if masked and causal:  # queries before their first real key see nothing: compare real rows
        got, want = np.asarray(got) * keep[:, :, None, None], want * keep[:, :, None, None]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("feature_map", ["elu", "softmax"])
def test_cross_attention_lengths(feature_map):
    q, k, v = random_qkv(3, 2, 4, 11, 2, 4, 3)
    keep = padding_mask(np.array([[1] * 11, [1] * 6 + [0] * 5]))  # the 4-D form
    got = linear_attention(q, k, v, keep, feature_map=feature_map)
    want = numpy_linear_attention(q, k, v, np.asarray(keep)[:, 0, 0], feature_map=feature_map)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("feature_map", ["elu", "softmax"])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_causal_does_not_leak(feature_map, chunk):
    q, k, v = random_qkv(4, 1, 10, 10, 2, 4, 4)
    base = np.asarray(linear_attention(q, k, v, causal=True, feature_map=feature_map,
                                       chunk_size=chunk))
    for t in (0, 4, 9):
        q2, k2, v2 = (x.copy() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[:, t + 1:] = np.random.RandomState(t).randn(*x[:, t + 1:].shape)
        out = np.asarray(linear_attention(q2, k2, v2, causal=True, feature_map=feature_map,
                                          chunk_size=chunk))
        np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-6)
        if t < 9:
            assert np.abs(out[:, t + 1:] - base[:, t + 1:]).max() > 1e-3


@pytest.mark.parametrize("feature_map", ["elu", "softmax"])
@pytest.mark.parametrize("causal", [False, True])
def test_padding_never_changes_real_outputs(feature_map, causal):
    q, k, v = random_qkv(5, 1, 7, 7, 2, 4, 4)
    short = np.asarray(linear_attention(q, k, v, causal=causal, feature_map=feature_map,
                                        chunk_size=3))
    junk = [np.random.RandomState(i).randn(1, 5, 2, 4).astype("float32") * 10 for i in range(3)]
    q2, k2, v2 = (np.concatenate([x, j], axis=1) for x, j in zip((q, k, v), junk))
    keep = np.arange(12)[None] < 7
    padded = np.asarray(linear_attention(q2, k2, v2, keep, causal, feature_map, chunk_size=3))
    np.testing.assert_allclose(padded[:, :7], short, atol=1e-6)


@pytest.mark.parametrize("feature_map", ["elu", "softmax"])
@pytest.mark.parametrize("causal", [False, True])
def test_gradient_matches_finite_differences(feature_map, causal, gradients, numeric_gradient):
    q, k, v = random_qkv(6, 1, 5, 5, 1, 3, 2)
    weights = np.random.RandomState(7).randn(1, 5, 1, 2).astype("float32")
    grads = gradients(lambda *t: ops.sum(linear_attention(
        *t, causal=causal, feature_map=feature_map, chunk_size=2) * weights), q, k, v)
    for index, grad in enumerate(grads):
        def loss_of(x, index=index):
            args = [np.asarray(a, "float64") for a in (q, k, v)]
            args[index] = x
            return np.sum(numpy_linear_attention(*args, causal=causal,
                                                 feature_map=feature_map) * weights)
        want = numeric_gradient(loss_of, np.asarray((q, k, v)[index], "float64"))
        np.testing.assert_allclose(np.asarray(grad), want, rtol=2e-3, atol=2e-4)


def test_bad_inputs_raise():
    q, k, v = random_qkv(0, 1, 4, 4, 1, 2, 2)
    with pytest.raises(ValueError, match="mask"):
        linear_attention(q, k, v, mask=np.ones((1, 4, 4), bool))
    with pytest.raises(ValueError, match="feature_map"):
        linear_attention(q, k, v, feature_map="relu")
    with pytest.raises(ValueError, match="q_len"):
        linear_attention(q[:, :2], k, v, causal=True)


@pytest.fixture(scope="module")
def layer_and_input():
    layer = LinearAttention(heads=2, head_size=4, feature_map="elu", chunk_size=3)
    x = np.random.RandomState(8).randn(2, 7, 6).astype("float32")
    layer(x)
    return layer, x


def test_layer_matches_projection_reference(layer_and_input):
    layer, x = layer_and_input
    keep = random_keep(2, 2, 7)
    got = np.asarray(layer(x, mask=keep, causal=True))
    wq, bq = (np.asarray(w) for w in layer.query_dense.weights)
    wk, bk = (np.asarray(w) for w in layer.key_dense.weights)
    wv, bv = (np.asarray(w) for w in layer.value_dense.weights)
    wo, bo = (np.asarray(w) for w in layer.output_dense.weights)
    q, k, v = ((x @ w + b).reshape(2, 7, 2, 4) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
    want = numpy_linear_attention(q, k, v, keep, causal=True).reshape(2, 7, 8) @ wo + bo
    np.testing.assert_allclose(got * keep[..., None], want * keep[..., None], atol=1e-5)


def test_layer_serialization_round_trip(layer_and_input, tmp_path):
    layer, x = layer_and_input
    clone = LinearAttention.from_config(layer.get_config())
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(np.asarray(clone(x)), np.asarray(layer(x)))
    inputs = keras.Input((7, 6))
    model = keras.Model(inputs, layer(inputs, causal=True))
    path = str(tmp_path / "linear.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_layer_mixed_bfloat16_close_to_float32(layer_and_input):
    layer, x = layer_and_input
    half = LinearAttention.from_config({**layer.get_config(), "dtype": "mixed_bfloat16"})
    half(x)
    half.set_weights(layer.get_weights())
    for causal in (False, True):
        out = np.asarray(keras.ops.cast(half(x, causal=causal), "float32"))
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, np.asarray(layer(x, causal=causal)), atol=5e-2)
