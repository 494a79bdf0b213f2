"""``linear_attention`` / ``LinearAttention`` against a per-query float64 NumPy loop
(``tests/references.py``), with and without rotary positions.

Tolerances: 1e-5 (absolute and relative) for the float32 core, also with RoPE (the rotated
numerator and the unrotated denominator are float32 sums of O(10) terms of size O(1); the
worst error measured is 2.4e-7), 1e-6 for leak/padding invariance, 2e-3 relative for
gradients against float64 central differences of the reference, 5e-2 (relative to the
output scale) for mixed_bfloat16 against float32.
"""

from keras import ops
import numpy as np
import pytest

from keraformer.attentions import LinearAttention, linear_attention
from keraformer.masks import padding_mask
from keraformer.positions import RotaryEmbedding
from tests.references import (assert_causal_no_leak, assert_mixed_bfloat16_close,
                              assert_padding_invariant, assert_round_trips,
                              numpy_linear_attention, project_heads, random_keep, random_qkv)


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


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_rotary_matches_numpy_reference(shape, masked, causal):
    """RoPE on the feature maps of the numerator, the denominator unrotated."""
    batch, q_len, k_len, heads, d, e, chunk = shape
    q, k, v = random_qkv(q_len + 1, batch, q_len, k_len, heads, d, e)
    keep = random_keep(k_len + 1, batch, k_len) if masked else None
    got = linear_attention(q, k, v, keep, causal, chunk_size=chunk, rotary=RotaryEmbedding())
    want = numpy_linear_attention(q, k, v, keep, causal, rotary=True)
    if masked and causal:
        got, want = np.asarray(got) * keep[:, :, None, None], want * keep[:, :, None, None]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)
    plain = numpy_linear_attention(q, k, v, keep, causal)
    if q_len > 1:  # the rotation really acts (positions 0 only: nothing to rotate)
        assert np.abs(want - plain).max() > 1e-2


def test_rotary_cross_attention_lengths():
    q, k, v = random_qkv(3, 2, 4, 11, 2, 4, 3)
    keep = random_keep(4, 2, 11)
    got = linear_attention(q, k, v, keep, rotary=RotaryEmbedding())
    want = numpy_linear_attention(q, k, v, keep, rotary=True)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("feature_map", ["elu", "softmax"])
def test_cross_attention_lengths(feature_map):
    q, k, v = random_qkv(3, 2, 4, 11, 2, 4, 3)
    keep = padding_mask(np.array([[1] * 11, [1] * 6 + [0] * 5]))  # the 4-D form
    got = linear_attention(q, k, v, keep, feature_map=feature_map)
    want = numpy_linear_attention(q, k, v, np.asarray(keep)[:, 0, 0], feature_map=feature_map)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


LEAK_CASES = [("elu", None), ("softmax", None), ("elu", RotaryEmbedding())]


@pytest.mark.parametrize("feature_map, rotary", LEAK_CASES, ids=["elu", "softmax", "rope"])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_causal_does_not_leak(feature_map, rotary, chunk):
    assert_causal_no_leak(
        lambda *qkv: linear_attention(*qkv, causal=True, feature_map=feature_map,
                                      chunk_size=chunk, rotary=rotary),
        random_qkv(4, 1, 10, 10, 2, 4, 4), times=(0, 4, 9))


@pytest.mark.parametrize("feature_map, rotary", LEAK_CASES, ids=["elu", "softmax", "rope"])
@pytest.mark.parametrize("causal", [False, True])
def test_padding_never_changes_real_outputs(feature_map, rotary, causal):
    assert_padding_invariant(
        lambda q, k, v, keep: linear_attention(q, k, v, keep, causal, feature_map,
                                               chunk_size=3, rotary=rotary),
        random_qkv(5, 1, 7, 7, 2, 4, 4), extra=5)


@pytest.mark.parametrize("feature_map, rotary", LEAK_CASES, ids=["elu", "softmax", "rope"])
@pytest.mark.parametrize("causal", [False, True])
def test_gradient_matches_finite_differences(feature_map, rotary, causal, gradients,
                                             numeric_gradient):
    q, k, v = random_qkv(6, 1, 5, 5, 1, 4, 2)
    weights = np.random.RandomState(7).randn(1, 5, 1, 2).astype("float32")
    grads = gradients(lambda *t: ops.sum(linear_attention(
        *t, causal=causal, feature_map=feature_map, chunk_size=2, rotary=rotary) * weights),
        q, k, v)
    for index, grad in enumerate(grads):
        def loss_of(x, index=index):
            args = [np.asarray(a, "float64") for a in (q, k, v)]
            args[index] = x
            return np.sum(numpy_linear_attention(*args, causal=causal, feature_map=feature_map,
                                                 rotary=rotary is not None) * weights)
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
    with pytest.raises(ValueError, match="rotary.*feature_map='softmax'"):
        linear_attention(q, k, v, feature_map="softmax", rotary=RotaryEmbedding())
    with pytest.raises(ValueError, match="rotary.*feature_map='softmax'"):
        LinearAttention(2, 4, feature_map="softmax", rotary=RotaryEmbedding())
    with pytest.raises(ValueError, match="key_size.*even"):
        LinearAttention(2, 3, rotary=RotaryEmbedding())


@pytest.fixture(scope="module")
def layer_and_input():
    layer = LinearAttention(heads=2, head_size=4, feature_map="elu", chunk_size=3,
                            rotary=RotaryEmbedding())
    x = np.random.RandomState(8).randn(2, 7, 6).astype("float32")
    layer(x)
    return layer, x


def test_layer_matches_projection_reference(layer_and_input):
    layer, x = layer_and_input
    keep = random_keep(2, 2, 7)
    got = np.asarray(layer(x, mask=keep, causal=True))
    q, k, v, output = project_heads(layer, x, 2, 4, 4)
    want = output(numpy_linear_attention(q, k, v, keep, causal=True, rotary=True))
    np.testing.assert_allclose(got * keep[..., None], want * keep[..., None], atol=1e-5)


def test_layer_serialization_round_trip(layer_and_input, tmp_path):
    layer, x = layer_and_input
    assert_round_trips(layer, x, str(tmp_path / "linear.keras"), causal=True)


def test_layer_mixed_bfloat16_close_to_float32(layer_and_input):
    layer, x = layer_and_input
    assert_mixed_bfloat16_close(layer, x, calls=({"causal": False}, {"causal": True}))
