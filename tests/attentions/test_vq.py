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
from keraformer.positions import RotaryEmbedding
from tests.references import (allowed_keys, assert_causal_no_leak, assert_mixed_bfloat16_close,
                              assert_padding_invariant, assert_round_trips, copy_layer,
                              numpy_quantize, numpy_rope, numpy_softmax_attention,
                              project_heads, random_keep)


def numpy_attention(q, k, v, keep=None, causal=False, entropy_base=None):
    """Softmax attention over the keys ``keep`` (and ``causal``) allow."""
    allowed = allowed_keys(q.shape[0], q.shape[1], k.shape[1], keep, causal)
    return numpy_softmax_attention(q, k, v, allowed, entropy_base=entropy_base)


def random_inputs(seed, batch, length, heads, d, e, codes):
    rng = np.random.RandomState(seed)
    return (rng.randn(batch, length, heads, d).astype("float32"),
            rng.randn(batch, length, heads, d).astype("float32"),
            rng.randn(batch, length, heads, e).astype("float32"),
            rng.randn(heads, codes, d).astype("float32"))


CASES = [  # batch, length, heads, d, e, codes, block_size
    (1, 1, 1, 4, 3, 1, 4),
    (2, 7, 2, 4, 3, 3, 3),
    (2, 10, 2, 4, 5, 16, 4),
    (1, 9, 3, 6, 4, 5, 1),
    (2, 5, 1, 4, 4, 8, None),
]


@pytest.mark.parametrize("entropy_scaling", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_equals_softmax_over_quantised_keys(case, masked, causal, entropy_scaling):
    batch, length, heads, d, e, codes, block = case
    q, k, v, codebook = random_inputs(length * codes, batch, length, heads, d, e, codes)
    keep = random_keep(length, batch, length) if masked else None
    got = np.asarray(vq_attention(q, k, v, codebook, keep, causal, block,
                                  entropy_scaling=entropy_scaling, scaling_base=8))
    quantized, _ = numpy_quantize(k, codebook)
    want = numpy_attention(q, quantized, v, keep, causal, 8 if entropy_scaling else None)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    mask = None if keep is None else keep[:, None, None, :]
    exact = np.asarray(dot_product_attention(q, quantize(k, codebook)[0], v, mask,
                                             causal=causal, entropy_scaling=entropy_scaling,
                                             scaling_base=8))
    np.testing.assert_allclose(got, exact, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("entropy_scaling", [False, True])
@pytest.mark.parametrize("block", [1, 3, 8])
def test_causal_does_not_leak(block, entropy_scaling):
    q, k, v, codebook = random_inputs(1, 1, 9, 2, 4, 4, 6)
    assert_causal_no_leak(
        lambda *qkv: vq_attention(*qkv, codebook, causal=True, block_size=block,
                                  entropy_scaling=entropy_scaling), (q, k, v), times=(0, 4, 7))


@pytest.mark.parametrize("entropy_scaling", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_padding_never_changes_real_outputs(causal, entropy_scaling):
    q, k, v, codebook = random_inputs(2, 1, 6, 2, 4, 4, 5)
    assert_padding_invariant(
        lambda q, k, v, keep: vq_attention(q, k, v, codebook, keep, causal, block_size=4,
                                           entropy_scaling=entropy_scaling),
        (q, k, v), extra=5, seed=3)


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
    with pytest.raises(ValueError, match="key_size.*even"):
        VQAttention(2, 3, rotary=RotaryEmbedding())


def test_entropy_scaled_straight_through_gradient(gradients):
    """With entropy scaling the straight-through terms see the scaled queries: the key
    gradient equals that of softmax attention over ``k̂`` with scaled logits."""
    q, k, v, codebook = random_inputs(8, 1, 6, 1, 4, 3, 4)
    quantized = quantize(k, codebook)[0]
    weights = np.random.RandomState(9).randn(1, 6, 1, 3).astype("float32")
    for causal in (False, True):
        [got] = gradients(lambda key: ops.sum(vq_attention(
            q, key, v, codebook, causal=causal, block_size=4, straight_through=True,
            entropy_scaling=True) * weights), k)
        [want] = gradients(lambda key: ops.sum(dot_product_attention(
            q, key, v, causal=causal, entropy_scaling=True) * weights),
            np.asarray(quantized))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


HEADS, SIZE, CODES, DIM = 2, 4, 6, 8


@pytest.fixture(scope="module")
def layer_and_input():
    layer = VQAttention(HEADS, SIZE, codes=CODES, block_size=3, commitment=0.25, decay=0.9)
    x = np.random.RandomState(7).randn(2, 7, DIM).astype("float32")
    layer(x)
    return layer, x


def numpy_layer(layer, x, codebook, keep=None, causal=False, rotary=False, entropy_base=None):
    """The layer in NumPy: projections, RoPE on queries and keys (``rotary``), quantisation
    of the (rotated) keys, softmax attention, output projection."""
    q, k, v, output = project_heads(layer, x, HEADS, SIZE, SIZE)
    if rotary:
        q, k = numpy_rope(q), numpy_rope(k)
    quantized, codes = numpy_quantize(k, codebook)
    out = numpy_attention(q, quantized, v, keep, causal, entropy_base)
    return output(out), k, quantized, codes


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
    assert_round_trips(layer, x, str(tmp_path / "vq.keras"), causal=True)


@pytest.mark.parametrize("causal", [False, True])
def test_layer_with_rotary_and_entropy_scaling_matches_reference(layer_and_input, causal):
    """Queries and keys rotated before the keys are quantised (see ``attentions/vq.py``)."""
    layer, x = layer_and_input
    rotated = copy_layer(layer, x, rotary=RotaryEmbedding(), entropy_scaling=True,
                         scaling_base=8)
    keep = np.array([[True] * 7, [True] * 5 + [False] * 2])
    codebook = np.asarray(layer.codebook, "float64")
    want = numpy_layer(rotated, x, codebook, keep, causal, rotary=True, entropy_base=8)[0]
    got = np.asarray(rotated(x, mask=keep, causal=causal))
    np.testing.assert_allclose(got * keep[..., None], want * keep[..., None], atol=1e-5)
    unrotated = numpy_layer(layer, x, codebook, keep, causal, entropy_base=8)[0]
    assert np.abs((want - unrotated) * keep[..., None]).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(copy_layer(rotated, x)(x, causal=causal)),
                                  np.asarray(rotated(x, causal=causal)))


def test_layer_mixed_bfloat16(layer_and_input):
    layer, x = layer_and_input
    assert_mixed_bfloat16_close(layer, x, calls=({"causal": False}, {"causal": True}))
