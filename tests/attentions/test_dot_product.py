"""``dot_product_attention`` / ``MultiHeadAttention`` against a per-query float64 NumPy softmax.

Tolerances: 1e-5 (absolute and relative) for float32 outputs, 1e-6 for leak/padding
invariance, 5e-2 (relative to the output scale) for mixed_bfloat16. The entropy test states
the growth ratio it measured.
"""

import math

import numpy as np
import pytest

from keraformer.attentions import (MultiHeadAttention, attention_probabilities,
                                   dot_product_attention, entropy_scale)
from keraformer.positions import RotaryEmbedding
from tests.references import (assert_causal_no_leak, assert_mixed_bfloat16_close,
                              assert_padding_invariant, assert_round_trips, causal_allowed,
                              numpy_rope, numpy_softmax_attention, project_heads, random_keep,
                              random_qkv)


SHAPES = [(1, 1, 1, 1, 4, 3), (2, 5, 5, 2, 4, 4), (2, 3, 8, 3, 8, 5), (1, 9, 9, 2, 6, 2)]


@pytest.mark.parametrize("entropy_scaling", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_numpy_reference(shape, masked, causal, with_bias, entropy_scaling):
    batch, q_len, k_len, heads, d, e = shape
    q, k, v = random_qkv(q_len + k_len, *shape)
    keep = random_keep(k_len, batch, k_len) if masked else None
    mask = None if keep is None else keep[:, None, None, :]
    bias = (np.random.RandomState(1).randn(1, heads, q_len, k_len).astype("float32")
            if with_bias else None)
    got = dot_product_attention(q, k, v, mask, bias, causal, entropy_scaling=entropy_scaling)
    allowed = np.ones((1, 1, q_len, k_len), bool) if mask is None else mask
    if causal:
        allowed = allowed & causal_allowed(q_len, k_len)
    want = numpy_softmax_attention(q, k, v, allowed, bias,
                                   entropy_base=512 if entropy_scaling else None)
    if masked and causal:  # rows that can see no real key are uniform by convention: skip them
        real = (allowed.sum(-1) > 0).transpose(0, 2, 1)[..., None]
        got, want = np.asarray(got) * real, want * real
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_custom_scale_and_base():
    q, k, v = random_qkv(2, 2, 4, 6, 2, 4, 3)
    got = dot_product_attention(q, k, v, scale=0.3, entropy_scaling=True, scaling_base=64)
    want = numpy_softmax_attention(q, k, v, scale=0.3, entropy_base=64)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_entropy_scale_values():
    assert entropy_scale(512) == pytest.approx(1.0)
    assert entropy_scale(8, base=2) == pytest.approx(3.0)
    assert entropy_scale(0) == 0.0  # clipped at one key
    np.testing.assert_allclose(np.asarray(entropy_scale(np.array([1.0, 64.0, 4096.0]))),
                               np.log([1.0, 64.0, 4096.0]) / np.log(512), rtol=1e-6)


@pytest.mark.parametrize("entropy_scaling", [False, True])
def test_causal_does_not_leak(entropy_scaling):
    assert_causal_no_leak(
        lambda *qkv: dot_product_attention(*qkv, causal=True, entropy_scaling=entropy_scaling),
        random_qkv(3, 1, 8, 8, 2, 4, 4), times=(0, 3, 6))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("entropy_scaling", [False, True])
def test_padding_never_changes_real_outputs(causal, entropy_scaling):
    assert_padding_invariant(
        lambda q, k, v, keep: dot_product_attention(
            q, k, v, mask=None if keep is None else keep[:, None, None, :], causal=causal,
            entropy_scaling=entropy_scaling),
        random_qkv(4, 1, 5, 5, 2, 4, 4), extra=4, seed=5)


def mean_entropy(probs):
    probs = np.asarray(probs, "float64")
    return float(-(probs * np.log(np.maximum(probs, 1e-30))).sum(-1).mean())


def test_entropy_scaling_keeps_entropy_nearly_invariant():
    """A 128-key pattern (one key at logit gap log(512) above 127 distractors) repeated to
    n = 8192 keys. Without scaling the entropy grows by exactly log(64) (each key is split
    over 64 copies); with entropy scaling the growth measured 0.26 of that."""
    rng = np.random.RandomState(0)
    d = 64
    q = rng.randn(1, 1, 1, d).astype("float32")
    pattern = 0.5 * rng.randn(1, 128, 1, d).astype("float32")
    pattern[0, 0, 0] = q[0, 0, 0] / np.sum(q ** 2) * math.log(512) * math.sqrt(d)
    growth = {}
    for scaled in (False, True):
        low, high = (mean_entropy(attention_probabilities(
            q, np.tile(pattern, (1, n // 128, 1, 1)), entropy_scaling=scaled))
            for n in (128, 8192))
        growth[scaled] = high - low
    np.testing.assert_allclose(growth[False], math.log(64), rtol=1e-4)
    assert growth[True] / growth[False] < 0.35  # measured 0.261


HEADS, HEAD, KEY, DIM = 2, 4, 6, 8


@pytest.fixture(scope="module")
def mha_and_input():
    layer = MultiHeadAttention(HEADS, HEAD, key_size=KEY, output_dim=5,
                               rotary=RotaryEmbedding(), entropy_scaling=True)
    x = np.random.RandomState(6).randn(2, 7, DIM).astype("float32")
    layer(x)
    return layer, x


@pytest.mark.parametrize("causal", [False, True])
def test_mha_matches_numpy_reference(mha_and_input, causal):
    layer, x = mha_and_input
    keep = random_keep(1, 2, 7)
    mask = keep[:, None, None, :]
    got = np.asarray(layer(x, mask=mask, causal=causal))
    q, k, v, output = project_heads(layer, x, HEADS, KEY, HEAD)
    q, k = numpy_rope(q), numpy_rope(k)
    allowed = mask & causal_allowed(7, 7) if causal else mask
    want = output(numpy_softmax_attention(q, k, v, allowed, entropy_base=512))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_mha_dropout_path_without_dropout_equals_inference(mha_and_input):
    layer, x = mha_and_input
    dropout = MultiHeadAttention.from_config({**layer.get_config(), "dropout_rate": 0.5})
    dropout(x)
    dropout.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(dropout(x, causal=True)),
                               np.asarray(layer(x, causal=True)), atol=1e-6)
    noisy = np.asarray(dropout(x, causal=True, training=True))
    assert np.isfinite(noisy).all() and not np.allclose(noisy, np.asarray(layer(x, causal=True)))


def test_mha_serialization_and_mixed_precision(mha_and_input, tmp_path):
    layer, x = mha_and_input
    assert_round_trips(layer, x, str(tmp_path / "mha.keras"), causal=True)
    assert_mixed_bfloat16_close(layer, x, calls=({"causal": True},))


def test_mha_cached_steps_match_numpy_reference(mha_and_input):
    """Decoding ``x`` one position at a time through a cache of 9 columns, position ``i``
    written at column ``2 + i`` (columns 0-1 and those not yet written hidden by the mask),
    gives the causal NumPy reference at every position, rotary at the given positions and
    entropy scaling counting the visible columns."""
    layer, x = mha_and_input
    q, k, v, output = project_heads(layer, x, HEADS, KEY, HEAD)
    want = output(numpy_softmax_attention(numpy_rope(q), numpy_rope(k), v,
                                          causal_allowed(7, 7), entropy_base=512))
    cache = (np.zeros((2, 9, HEADS, KEY), "float32"), np.zeros((2, 9, HEADS, HEAD), "float32"))
    for i in range(7):
        visible = (np.arange(9) >= 2) & (np.arange(9) <= 2 + i)
        out, cache = layer(x[:, i:i + 1], mask=visible[None, None, None], cache=cache,
                           cache_update_index=2 + i, positions=np.array([i]))
        np.testing.assert_allclose(np.asarray(out)[:, 0], want[:, i], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(cache[0])[:, :2], 0.0)  # never written


def test_mha_cross_attention_cache_equals_the_uncached_call(mha_and_input):
    layer, x = mha_and_input
    context = np.random.RandomState(8).randn(2, 5, DIM).astype("float32")
    keep = random_keep(3, 2, 5)[:, None, None, :]
    out, cache = layer(x, mask=keep, cache=layer.project_key_value(context, context))
    np.testing.assert_allclose(np.asarray(out), np.asarray(layer(x, context, mask=keep)),
                               atol=1e-6)
    assert cache[0].shape == (2, 5, HEADS, KEY)


def test_mha_cache_refuses_causal(mha_and_input):
    layer, x = mha_and_input
    cache = (np.zeros((2, 7, HEADS, KEY), "float32"), np.zeros((2, 7, HEADS, HEAD), "float32"))
    with pytest.raises(ValueError, match="causal"):
        layer(x, causal=True, cache=cache, cache_update_index=0)
