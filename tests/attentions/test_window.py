"""Local attention (``window=``) against the per-query float64 NumPy softmax over the keys with
``|i − j| < window`` (causal: ``0 ≤ i − j < window``), and its ties to full attention.

Tolerances: 1e-5 (absolute and relative) against the reference, 1e-6 between two float32
computations of the same thing and for leak/padding invariance.
"""

import numpy as np
import pytest

from keraformer.attentions import MultiHeadAttention, dot_product_attention
from keraformer.masks import window_mask
from tests.references import (assert_causal_no_leak, assert_padding_invariant,
                              assert_round_trips, causal_allowed, numpy_softmax_attention,
                              project_heads, random_keep, random_qkv, window_allowed)

SHAPES = [(2, 7, 7, 2, 4, 3), (1, 3, 9, 2, 4, 4)]  # q_len < k_len: queries are the last keys


def test_window_mask_is_the_band():
    got = np.asarray(window_mask(3, 6, window=2, offset=3))[0, 0]
    want = np.array([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("entropy_scaling", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_numpy_reference(shape, window, masked, causal, entropy_scaling):
    batch, q_len, k_len, heads, d, e = shape
    q, k, v = random_qkv(window + q_len, *shape)
    keep = random_keep(k_len + 1, batch, k_len) if masked else np.ones((batch, k_len), bool)
    got = dot_product_attention(q, k, v, keep[:, None, None, :], causal=causal,
                                entropy_scaling=entropy_scaling, scaling_base=8,
                                window=window)
    allowed = keep[:, None, None, :] & window_allowed(q_len, k_len, window)
    if causal:
        allowed = allowed & causal_allowed(q_len, k_len)
    want = numpy_softmax_attention(q, k, v, allowed, entropy_base=8 if entropy_scaling else None)
    # rows that can see no real key are uniform by convention: compare the others
    real = (allowed.sum(-1) > 0).transpose(0, 2, 1)[..., None]
    np.testing.assert_allclose(np.asarray(got) * real, want * real, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("entropy_scaling", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_window_at_least_the_length_is_full_attention(causal, entropy_scaling):
    q, k, v = random_qkv(1, 2, 6, 6, 2, 4, 4)
    keep = random_keep(2, 2, 6)[:, None, None, :]
    full = dot_product_attention(q, k, v, keep, causal=causal, entropy_scaling=entropy_scaling)
    for window in (6, 7, 100):
        local = dot_product_attention(q, k, v, keep, causal=causal, window=window,
                                      entropy_scaling=entropy_scaling)
        np.testing.assert_allclose(np.asarray(local), np.asarray(full), atol=1e-6)


def test_shorter_window_changes_the_output():
    q, k, v = random_qkv(2, 1, 6, 6, 1, 4, 4)
    full = np.asarray(dot_product_attention(q, k, v, causal=True))
    local = np.asarray(dot_product_attention(q, k, v, causal=True, window=5))
    np.testing.assert_allclose(local[:, :5], full[:, :5], atol=1e-6)  # all keys still visible
    assert np.abs(local[:, 5] - full[:, 5]).max() > 1e-3


def test_entropy_scaling_counts_the_keys_in_the_window():
    """Queries far from the edges see exactly ``2w − 1`` keys, so their factor is
    ``log(2w − 1)/log(base)`` whatever the input length."""
    q, k, v = random_qkv(3, 1, 12, 12, 1, 4, 4)
    got = np.asarray(dot_product_attention(q, k, v, window=3, entropy_scaling=True,
                                           scaling_base=5))
    plain = np.asarray(dot_product_attention(q, k, v, window=3, scale=0.5))  # log 5/log 5 = 1
    np.testing.assert_allclose(got[:, 2:10], plain[:, 2:10], atol=1e-6)


def test_causal_window_does_not_leak():
    assert_causal_no_leak(
        lambda *qkv: dot_product_attention(*qkv, causal=True, window=3, entropy_scaling=True),
        random_qkv(3, 1, 8, 8, 2, 4, 4), times=(0, 3, 6))


@pytest.mark.parametrize("causal", [False, True])
def test_padding_never_changes_real_outputs(causal):
    assert_padding_invariant(
        lambda q, k, v, keep: dot_product_attention(
            q, k, v, mask=None if keep is None else keep[:, None, None, :], causal=causal,
            window=3, entropy_scaling=True),
        random_qkv(4, 1, 6, 6, 2, 4, 4), extra=4, seed=5)


def test_last_query_alone_equals_the_last_row():
    """Decoding one token against all the keys (``q_len = 1``) gives the last row of the full
    computation: the window is aligned with the last key, as the cache aligns it."""
    q, k, v = random_qkv(5, 2, 7, 7, 2, 4, 4)
    full = np.asarray(dot_product_attention(q, k, v, causal=True, window=3))
    last = np.asarray(dot_product_attention(q[:, -1:], k, v, causal=True, window=3))
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-6)


@pytest.mark.parametrize("window", [0, -2, 1.5, True, "3"])
def test_bad_window_is_refused_by_name(window):
    q, k, v = random_qkv(0, 1, 3, 3, 1, 2, 2)
    with pytest.raises((TypeError, ValueError), match="`window`"):
        dot_product_attention(q, k, v, window=window)
    with pytest.raises((TypeError, ValueError), match="`window`"):
        MultiHeadAttention(2, 4, window=window)


@pytest.mark.parametrize("causal", [False, True])
def test_mha_window_matches_numpy_reference(causal, tmp_path):
    x = np.random.RandomState(0).randn(2, 7, 8).astype("float32")
    layer = MultiHeadAttention(2, 4, window=3, entropy_scaling=True)
    got = np.asarray(layer(x, causal=causal))
    q, k, v, output = project_heads(layer, x, 2, 4, 4)
    allowed = window_allowed(7, 7, 3) & (causal_allowed(7, 7) if causal else True)
    want = output(numpy_softmax_attention(q, k, v, allowed, entropy_base=512))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert layer.get_config()["window"] == 3
    assert_round_trips(layer, x, str(tmp_path / "window.keras"), causal=causal)
