"""``vq_attention`` / ``VQAttention`` against NumPy nearest-codeword quantisation followed by a
per-query softmax loop, in float64.

Tolerances: 1e-5 (absolute and relative) for float32 outputs, 1e-6 for leak/padding
invariance, 2e-3 relative for straight-through gradients against float64 central differences
of softmax attention over the quantised keys, 1e-6 for the EMA/commitment bookkeeping,
5e-2 (relative to the output scale) for mixed_bfloat16.
"""

import keras
from keras import ops
import numpy as np
import pytest

from keraformer.attentions import VQAttention, dot_product_attention, quantize, vq_attention


def numpy_quantize(k, codebook):
    """Key by key: the codeword at the smallest squared distance."""
    k, codebook = np.asarray(k, "float64"), np.asarray(codebook, "float64")
    out = np.empty_like(k)
    codes = np.empty(k.shape[:3], int)
    for b, n, h in np.ndindex(k.shape[:3]):
        distances = [np.sum((k[b, n, h] - c) ** 2) for c in codebook[h]]
        codes[b, n, h] = int(np.argmin(distances))
        out[b, n, h] = codebook[h, codes[b, n, h]]
    return out, codes


def numpy_attention(q, k, v, keep=None, causal=False):
    q, k, v = (np.asarray(x, "float64") for x in (q, k, v))
    batch, q_len, heads, d = q.shape
    keep = np.ones((batch, k.shape[1]), bool) if keep is None else keep
    out = np.zeros((batch, q_len, heads, v.shape[-1]))
    for b, i, h in np.ndindex(batch, q_len, heads):
        keys = [j for j in range(k.shape[1]) if keep[b, j] and (not causal or j <= i)]
        s = np.array([q[b, i, h] @ k[b, j, h] for j in keys]) / np.sqrt(d)
        w = np.exp(s - s.max())
        out[b, i, h] = w @ v[b, keys, h] / w.sum()
    return out


def random_inputs(seed, batch, length, heads, d, e, codes):
    rng = np.random.RandomState(seed)
    return (rng.randn(batch, length, heads, d).astype("float32"),
            rng.randn(batch, length, heads, d).astype("float32"),
            rng.randn(batch, length, heads, e).astype("float32"),
            rng.randn(heads, codes, d).astype("float32"))


def random_keep(seed, batch, length):
    lengths = np.random.RandomState(seed).randint(1, length + 1, batch)
    lengths[0] = length
    return np.arange(length)[None] < lengths[:, None]


CASES = [  # batch, length, heads, d, e, codes, block_size
    (1, 1, 1, 4, 3, 1, 4),
    (2, 7, 2, 4, 3, 3, 3),
    (2, 10, 2, 4, 5, 16, 4),
    (1, 9, 3, 6, 4, 5, 1),
    (2, 5, 1, 4, 4, 8, None),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_equals_softmax_over_quantised_keys(case, masked, causal):
    batch, length, heads, d, e, codes, block = case
    q, k, v, codebook = random_inputs(length * codes, batch, length, heads, d, e, codes)
    keep = random_keep(length, batch, length) if masked else None
    got = np.asarray(vq_attention(q, k, v, codebook, keep, causal, block))
    quantized, _ = numpy_quantize(k, codebook)
    np.testing.assert_allclose(got, numpy_attention(q, quantized, v, keep, causal),
                               atol=1e-5, rtol=1e-5)
    mask = None if keep is None else keep[:, None, None, :]
    exact = dot_product_attention(q, quantize(k, codebook)[0], v, mask, causal=causal)
    np.testing.assert_allclose(got, np.asarray(exact), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block", [1, 3, 8])
def test_causal_does_not_leak(block):
    q, k, v, codebook = random_inputs(1, 1, 9, 2, 4, 4, 6)
    base = np.asarray(vq_attention(q, k, v, codebook, causal=True, block_size=block))
    for t in (0, 4, 7):
        changed = [x.copy() for x in (q, k, v)]
        for x in changed:
            x[:, t + 1:] = np.random.RandomState(t).randn(*x[:, t + 1:].shape)
        out = np.asarray(vq_attention(*changed, codebook, causal=True, block_size=block))
        np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-6)
        assert np.abs(out[:, t + 1:] - base[:, t + 1:]).max() > 1e-3


@pytest.mark.parametrize("causal", [False, True])
def test_padding_never_changes_real_outputs(causal):
    q, k, v, codebook = random_inputs(2, 1, 6, 2, 4, 4, 5)
    short = np.asarray(vq_attention(q, k, v, codebook, causal=causal, block_size=4))
    junk = random_inputs(3, 1, 5, 2, 4, 4, 5)[:3]
    padded = [np.concatenate([x, 10 * j], axis=1) for x, j in zip((q, k, v), junk)]
    keep = np.arange(11)[None] < 6
    out = np.asarray(vq_attention(*padded, codebook, keep, causal, block_size=4))
    np.testing.assert_allclose(out[:, :6], short, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_straight_through_gradient_matches_finite_differences(causal, gradients,
                                                              numeric_gradient):
    q, k, v, codebook = random_inputs(4, 1, 5, 1, 3, 2, 3)
    keep = np.array([[True, True, True, True, False]])
    weights = np.random.RandomState(5).randn(1, 5, 1, 2).astype("float32")
    grads = gradients(lambda *t: ops.sum(vq_attention(
        *t, codebook, keep, causal, block_size=2, straight_through=True) * weights), q, k, v)
    quantized, _ = numpy_quantize(k, codebook)
    point = [np.asarray(q, "float64"), quantized, np.asarray(v, "float64")]
    for index, grad in enumerate(grads):
        def loss_of(x, index=index):
            args = list(point)
            args[index] = x
            return np.sum(numpy_attention(*args, keep, causal) * weights)
        want = numeric_gradient(loss_of, point[index])
        np.testing.assert_allclose(np.asarray(grad), want, rtol=2e-3, atol=2e-4)


def test_keys_get_no_gradient_without_straight_through(gradients):
    q, k, v, codebook = random_inputs(6, 1, 4, 1, 3, 2, 3)
    [grad] = gradients(lambda key: ops.sum(vq_attention(q, key, v, codebook, causal=True,
                                                        block_size=2)), k)
    assert grad is None or not np.any(grad)


def test_bad_inputs_raise():
    q, k, v, codebook = random_inputs(0, 1, 4, 2, 4, 4, 3)
    with pytest.raises(ValueError, match="codebook"):
        vq_attention(q, k, v, codebook[:1])
    with pytest.raises(ValueError, match="mask"):
        vq_attention(q, k, v, codebook, mask=np.ones((1, 1, 4, 4), bool))
    with pytest.raises(ValueError, match="decay"):
        VQAttention(2, 4, decay=1.5)


HEADS, SIZE, CODES, DIM = 2, 4, 6, 8


@pytest.fixture(scope="module")
def layer_and_input():
    layer = VQAttention(HEADS, SIZE, codes=CODES, block_size=3, commitment=0.25, decay=0.9)
    x = np.random.RandomState(7).randn(2, 7, DIM).astype("float32")
    layer(x)
    return layer, x


def numpy_layer(layer, x, codebook, keep=None, causal=False):
    dense = {name: [np.asarray(w, "float64") for w in sub.weights] for name, sub in
             (("q", layer.query_dense), ("k", layer.key_dense), ("v", layer.value_dense),
              ("o", layer.output_dense))}
    q, k, v = ((x @ dense[n][0] + dense[n][1]).reshape(x.shape[0], x.shape[1], HEADS, SIZE)
               for n in "qkv")
    quantized, codes = numpy_quantize(k, codebook)
    out = numpy_attention(q, quantized, v, keep, causal).reshape(x.shape[0], x.shape[1], -1)
    return out @ dense["o"][0] + dense["o"][1], k, quantized, codes


def training_call(layer, x, **kwargs):
    """One ``training=True`` call: output, d Σout / d key kernel and the commitment loss, with
    the codebook's EMA update applied to the layer (statelessly on JAX, then assigned)."""
    if keras.backend.backend() == "jax":
        import jax
        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]

        def total(weights):
            out, state, losses = layer.stateless_call(weights, non_trainable, x, training=True,
                                                      return_losses=True, **kwargs)
            return ops.sum(out), (out, state, losses)
        grads, (out, state, losses) = jax.grad(total, has_aux=True)(trainable)
        for variable, value in zip(layer.non_trainable_variables, state):
            variable.assign(value)
        index = [v.path for v in layer.trainable_variables].index(layer.key_dense.kernel.path)
        return np.asarray(out), np.asarray(grads[index]), float(losses[-1])
    import tensorflow as tf
    with tf.GradientTape() as tape:
        out = layer(x, training=True, **kwargs)
        loss = tf.reduce_sum(out)
    grad = tape.gradient(loss, layer.key_dense.kernel)
    return np.asarray(out), np.asarray(grad), float(layer.losses[-1])


def test_layer_training_step(layer_and_input):
    layer, x = layer_and_input
    keep = np.array([[True] * 7, [True] * 4 + [False] * 3])
    codebook = np.asarray(layer.codebook, "float64")
    counts0 = np.asarray(layer.codebook_counts, "float64")
    sums0 = np.asarray(layer.codebook_sums, "float64")
    want, k, quantized, codes = numpy_layer(layer, x, codebook, keep, causal=True)
    np.testing.assert_allclose(np.asarray(layer(x, mask=keep, causal=True)), want, atol=1e-5)
    out, kernel_grad, commitment = training_call(layer, x, mask=keep, causal=True)
    np.testing.assert_allclose(out, want, atol=1e-5)
    assert np.abs(kernel_grad).max() > 1e-4
    error = ((k - quantized) ** 2).sum(axis=(2, 3))[keep]
    np.testing.assert_allclose(commitment, 0.25 * error.mean(), rtol=1e-5)
    hot = np.eye(CODES)[codes] * keep[:, :, None, None]
    np.testing.assert_allclose(np.asarray(layer.codebook_counts),
                               0.9 * counts0 + 0.1 * hot.sum(axis=(0, 1)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.codebook_sums),
                               0.9 * sums0 + 0.1 * np.einsum("bnhc,bnhd->hcd", hot, k),
                               atol=1e-6)


def test_layer_fits_and_round_trips(layer_and_input, tmp_path):
    layer, x = layer_and_input
    inputs = keras.Input((7, DIM))
    model = keras.Model(inputs, layer(inputs, causal=True))
    model.compile("sgd", "mse")
    counts = np.asarray(layer.codebook_counts).copy()
    model.fit(x, np.zeros((2, 7, DIM)), epochs=1, verbose=0)
    assert not np.allclose(np.asarray(layer.codebook_counts), counts)  # EMA ran inside fit
    path = str(tmp_path / "vq.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    clone = VQAttention.from_config(layer.get_config())
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(np.asarray(clone(x)), np.asarray(layer(x)))


def test_layer_mixed_bfloat16(layer_and_input):
    layer, x = layer_and_input
    half = VQAttention.from_config({**layer.get_config(), "dtype": "mixed_bfloat16"})
    half(x)
    half.set_weights(layer.get_weights())
    for causal in (False, True):
        out = np.asarray(keras.ops.cast(half(x, causal=causal), "float32"))
        reference = np.asarray(layer(x, causal=causal))
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, reference, atol=5e-2 * np.abs(reference).max())
