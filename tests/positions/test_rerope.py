"""ReRoPE and Leaky ReRoPE against a float64 NumPy reference that builds each query-key pair's
clipped/compressed relative position explicitly and rotates the query by it; and their ties to
plain RoPE (``rerope_window ≥ length``, ``rerope_leak = 1``).

Tolerances: 1e-4 absolute on products of size ~10 (float32 angles of positions up to 40), 1e-5
on attention outputs, 1e-6 for leak/padding invariance.
"""

import numpy as np
import pytest

from keraformer.attentions import MultiHeadAttention, dot_product_attention
from keraformer.positions import RotaryEmbedding, apply_rotary, rerope_scores
from tests.references import (assert_causal_no_leak, assert_padding_invariant,
                              assert_round_trips, causal_allowed, numpy_rerope_scores,
                              numpy_softmax_attention, project_heads, random_qkv)


def rope_products(q, k):
    return np.einsum("bqhd,bkhd->bhqk", np.asarray(apply_rotary(q)), np.asarray(apply_rotary(k)))


@pytest.mark.parametrize("leak", [None, 2.0, 16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("q_len", [9, 2])
def test_matches_numpy_reference(q_len, causal, leak):
    q, k, _ = random_qkv(q_len, 2, q_len, 9, 2, 6, 1)
    got = np.asarray(rerope_scores(q, k, 3, leak, causal=causal))
    want = numpy_rerope_scores(q, k, 3, leak)
    if causal:  # keys after the query are masked anyway and are not computed
        keep = causal_allowed(q_len, 9)
        got, want = got * keep, want * keep
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_matches_numpy_reference_at_given_positions():
    """Per-row positions (packed sequences, random positions) and large offsets."""
    q, k, _ = random_qkv(7, 2, 4, 5, 1, 4, 1)
    q_positions = np.array([[10, 14, 20, 33], [0, 1, 2, 40]], "int32")
    k_positions = np.array([[0, 9, 13, 20, 31], [3, 4, 5, 6, 39]], "int32")
    for leak in (None, 3.0):
        got = np.asarray(rerope_scores(q, k, 4, leak, q_positions, k_positions))
        want = numpy_rerope_scores(q, k, 4, leak, q_positions, k_positions)
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_window_at_least_the_length_is_plain_rope(causal):
    q, k, _ = random_qkv(1, 2, 8, 8, 2, 6, 1)
    want = rope_products(q, k)
    keep = causal_allowed(8, 8) if causal else True
    for window, leak in ((8, None), (50, None), (8, 4.0)):
        got = np.asarray(rerope_scores(q, k, window, leak, causal=causal))
        np.testing.assert_allclose(got * keep, want * keep, atol=1e-5)


@pytest.mark.parametrize("window", [1, 3])
def test_leak_one_is_plain_rope(window):
    q, k, _ = random_qkv(2, 2, 8, 8, 2, 6, 1)
    got = np.asarray(rerope_scores(q, k, window, 1))
    np.testing.assert_allclose(got, rope_products(q, k), atol=1e-4)


def test_short_window_differs_from_rope():
    q, k, _ = random_qkv(3, 1, 8, 8, 1, 6, 1)
    got = np.asarray(rerope_scores(q, k, 2))
    assert np.abs(got - rope_products(q, k)).max() > 1e-2


@pytest.mark.parametrize("leak", [None, 2.5])
def test_shifting_every_position_changes_nothing(leak):
    """Relative: the products of tokens at positions ``p`` and ``p + s`` are the same."""
    q, k, _ = random_qkv(4, 1, 6, 6, 2, 6, 1)
    positions = np.array([0, 2, 3, 7, 8, 12])
    base = np.asarray(rerope_scores(q, k, 3, leak, positions, positions))
    moved = np.asarray(rerope_scores(q, k, 3, leak, positions + 17, positions + 17))
    np.testing.assert_allclose(moved, base, atol=1e-4)


def test_permuting_tokens_permutes_the_products():
    """Bidirectional products depend on the tokens and their positions, not on the order in
    which the pairs are stored."""
    q, k, _ = random_qkv(5, 1, 6, 6, 1, 4, 1)
    order = np.array([3, 0, 5, 1, 4, 2])
    positions = np.arange(6)
    base = np.asarray(rerope_scores(q, k, 2, 2.0, positions, positions))
    permuted = np.asarray(rerope_scores(q[:, order], k[:, order], 2, 2.0, positions[order],
                                        positions[order]))
    np.testing.assert_allclose(permuted, base[:, :, order][:, :, :, order], atol=1e-5)


def rerope_layer(window, leak=None, **kwargs):
    layer = MultiHeadAttention(2, 4, rotary=RotaryEmbedding(), rerope_window=window,
                               rerope_leak=leak, **kwargs)
    layer.build((2, 9, 8))
    return layer


@pytest.mark.parametrize("leak", [None, 3.0])
@pytest.mark.parametrize("causal", [False, True])
def test_mha_matches_numpy_reference(causal, leak):
    x = np.random.RandomState(0).randn(2, 9, 8).astype("float32")
    layer = rerope_layer(2, leak)
    got = np.asarray(layer(x, causal=causal))
    q, k, v, output = project_heads(layer, x, 2, 4, 4)
    allowed = causal_allowed(9, 9) if causal else None
    want = output(numpy_softmax_attention(q, k, v, allowed,
                                          scores=numpy_rerope_scores(q, k, 2, leak)))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_mha_equals_rope_on_the_same_weights(causal):
    x = np.random.RandomState(1).randn(2, 9, 8).astype("float32")
    rope = MultiHeadAttention(2, 4, rotary=RotaryEmbedding())
    want = np.asarray(rope(x, causal=causal))
    for window, leak in ((9, None), (20, 2.0), (2, 1)):
        layer = rerope_layer(window, leak)
        layer.set_weights(rope.get_weights())
        np.testing.assert_allclose(np.asarray(layer(x, causal=causal)), want, atol=1e-5)


def test_mha_causal_does_not_leak():
    layer = rerope_layer(2, 2.0)
    assert_causal_no_leak(lambda x: layer(x, causal=True),
                          [np.random.RandomState(2).randn(1, 8, 8).astype("float32")],
                          times=(0, 4, 6))


@pytest.mark.parametrize("causal", [False, True])
def test_mha_padding_never_changes_real_outputs(causal):
    layer = rerope_layer(2)
    assert_padding_invariant(
        lambda x, keep: layer(x, mask=None if keep is None else keep[:, None, None, :],
                              causal=causal),
        [np.random.RandomState(3).randn(2, 6, 8).astype("float32")], extra=5)


def test_mha_last_query_with_offset_equals_last_row():
    """The scores of a decoded query (positions continuing after the cached keys) equal the
    last row of the whole-sequence computation."""
    q, k, v = random_qkv(6, 1, 9, 9, 2, 4, 4)
    full = np.asarray(dot_product_attention(q, k, v, causal=True,
                                            scores=rerope_scores(q, k, 3, causal=True)))
    last = np.asarray(dot_product_attention(q[:, -1:], k, v, causal=True,
                                            scores=rerope_scores(q[:, -1:], k, 3, causal=True)))
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-6)


def test_mha_round_trips(tmp_path):
    layer = rerope_layer(3, 2.0)
    x = np.random.RandomState(4).randn(2, 9, 8).astype("float32")
    assert layer.get_config()["rerope_window"] == 3 and layer.get_config()["rerope_leak"] == 2.0
    assert_round_trips(layer, x, str(tmp_path / "rerope.keras"), causal=True)


@pytest.mark.parametrize("kwargs, error, name", [
    ({"rerope_window": 0}, ValueError, "rerope_window"),
    ({"rerope_window": 2.0}, TypeError, "rerope_window"),
    ({"rerope_window": 2, "rerope_leak": 0.5}, ValueError, "rerope_leak"),
    ({"rerope_window": 2, "rerope_leak": "2"}, TypeError, "rerope_leak"),
    ({"rerope_leak": 2.0}, ValueError, "rerope_leak"),
])
def test_bad_options_are_refused_by_name(kwargs, error, name):
    with pytest.raises(error, match=f"`{name}"):
        MultiHeadAttention(2, 4, rotary=RotaryEmbedding(), **kwargs)


def test_rerope_without_rotary_is_refused():
    with pytest.raises(ValueError, match="`rerope_window=2`.*needs `rotary`"):
        MultiHeadAttention(2, 4, rerope_window=2)
