"""Kernelised linear attention (Katharopoulos et al. 2020; Shen et al. 2021), O(n) in length.

Softmax attention ``softmax(q kᵀ) v`` costs ``O(n²)``. Replacing the exponential kernel by a
feature map ``φ`` gives ``out_i = φ(q_i)·S / φ(q_i)·z`` with ``S = Σ_j φ(k_j) v_jᵀ`` and
``z = Σ_j φ(k_j)``, which is linear in the length. ``feature_map="elu"`` is
``φ(x) = elu(x) + 1`` ("Transformers are RNNs"); ``feature_map="softmax"`` is Efficient
Attention: a softmax over the features of each query and over the positions of each key feature.
Causal attention sums over ``j <= i`` with chunked prefix sums: quadratic inside chunks of
``chunk_size`` positions and one ``(d, d_v)`` state per chunk, so memory is
``O(n·(chunk_size + d·d_v/chunk_size))`` per head instead of ``O(n·d·d_v)``.

Rotary positions (Su et al. 2021, "RoFormer", section 3.3 on linear attention) rotate the
feature maps in the numerator only: ``out_i = Σ_j (R_i φ(q_i))·(R_j φ(k_j)) v_j /
Σ_j φ(q_i)·φ(k_j)``. The rotation keeps the kernel a dot product of per-position vectors, so
the prefix-sum states still apply; the denominator stays unrotated because the rotated kernel
can be negative and would no longer be a normaliser.
"""

import keras
from keras import ops

from keraformer.attentions.chunks import (chunk_length, exclusive_cumsum, heads_first,
                                          key_padding_weights, merge_chunks, split_chunks)
from keraformer.attentions.projection import ProjectedHeads
from keraformer.checks import check_attention_inputs, check_choice, check_positive_ints
from keraformer.masks import mask_value, zero_unseen_keys

FEATURE_MAPS = ("elu", "softmax")
TINY = 1e-30  # floor of a normaliser that is zero only when every key is masked


def kernel_products(a, b, v, causal=False, chunk_size=64):
    """Unnormalised kernel attention ``out_i = Σ_j (a_i·b_j) v_j`` over ``j <= i`` if causal.

    ``a`` ``(batch, q_len, heads, d)``, ``b`` ``(batch, k_len, heads, d)``, ``v``
    ``(batch, k_len, heads, e)``; returns ``(batch, q_len, heads, e)``. The causal form splits
    the sequence into chunks: exact lower-triangular products inside a chunk plus the prefix
    state ``Σ b_j v_jᵀ`` of the previous chunks. It works heads-first, so every product is a
    batched matrix product over ``(batch, heads, chunk)`` without transposes in between.
    """
    if not causal:
        state = ops.einsum("bkhd,bkhe->bhde", b, v)
        return ops.einsum("bqhd,bhde->bqhe", a, state)
    length = ops.shape(a)[1]
    size = chunk_length(length, chunk_size)
    a, b, v = (split_chunks(heads_first(x), size, axis=2) for x in (a, b, v))
    lower = ops.cast(ops.tril(ops.ones((size, size))), a.dtype)
    scores = ops.matmul(a, ops.swapaxes(b, -1, -2)) * lower          # (b, h, c, i, j)
    states = exclusive_cumsum(ops.matmul(ops.swapaxes(b, -1, -2), v), axis=2)  # (b, h, c, d, e)
    out = ops.matmul(scores, v) + ops.matmul(a, states)              # (b, h, c, i, e)
    return heads_first(merge_chunks(out, length, axis=2))


def elu_features(x):
    """``φ(x) = elu(x) + 1 > 0`` (Katharopoulos et al. 2020)."""
    return ops.elu(x) + 1.0


def with_ones(v):
    """Append a constant-one feature to ``v`` so one pass yields numerator and normaliser."""
    return ops.concatenate([v, ops.ones_like(v[..., :1])], axis=-1)


def elu_linear_attention(q, k, v, keep, causal, chunk_size, rotary=None):
    """``φ(q_i)·Σ_j φ(k_j) v_jᵀ / φ(q_i)·Σ_j φ(k_j)`` with ``φ = elu + 1``; with ``rotary`` the
    numerator takes ``R_i φ(q_i)`` and ``R_j φ(k_j)`` (RoFormer's linear attention)."""
    a, b = elu_features(q), elu_features(k)
    if keep is not None:
        b = b * keep[:, :, None, None]
    if rotary is None:
        both = kernel_products(a, b, with_ones(v), causal, chunk_size)
        return both[..., :-1] / ops.maximum(both[..., -1:], TINY)
    numerator = kernel_products(rotary(a), rotary(b), v, causal, chunk_size)
    denominator = kernel_products(a, b, ops.ones_like(v[..., :1]), causal, chunk_size)
    return numerator / ops.maximum(denominator, TINY)


def softmax_linear_attention(q, k, v, keep, causal, chunk_size):
    """Efficient Attention: ``softmax_features(q_i) · Σ_j softmax_positions(k)_j v_jᵀ``.

    The softmax over key positions runs over unmasked keys (``j <= i`` when causal: the
    normaliser becomes a running sum, folded into the query side). A single shift by the
    largest key feature keeps the exponentials finite.
    """
    a = ops.softmax(q, axis=-1)
    if keep is not None:
        k = ops.where(keep[:, :, None, None] > 0, k, mask_value("float32"))
    b = ops.exp(k - ops.stop_gradient(ops.max(k, axis=1, keepdims=True)))
    if keep is not None:
        b = b * keep[:, :, None, None]
    if causal:
        a = a / ops.maximum(ops.cumsum(b, axis=1), TINY)
        return kernel_products(a, b, v, causal, chunk_size)
    b = b / ops.maximum(ops.sum(b, axis=1, keepdims=True), TINY)
    return kernel_products(a, b, v)


def check_rotary_feature_map(feature_map, rotary):
    """RoPE needs a scalar denominator ``φ(q_i)·Σ_j φ(k_j)`` to leave unrotated; Efficient
    Attention normalises every key feature separately over positions, which a rotation (it
    mixes pairs of features) does not commute with."""
    if rotary is not None and feature_map != "elu":
        raise ValueError(f"`rotary` needs feature_map='elu' (a scalar normaliser that stays "
                         f"unrotated); received feature_map={feature_map!r}")


def linear_attention(q, k, v, mask=None, causal=False, feature_map="elu", chunk_size=64,
                     rotary=None):
    """Linear attention on ``(batch, length, heads, head_dim)`` tensors, in float32.

    ``mask``: boolean key padding mask ``(batch, k_len)`` or ``(batch, 1, 1, k_len)``; masked
    keys never contribute. ``causal``: query ``i`` sees keys ``j <= i`` (needs
    ``q_len == k_len``), computed chunk by chunk (``chunk_size``). ``feature_map``: ``"elu"``
    (``φ = elu + 1``, Katharopoulos et al. 2020) or ``"softmax"`` (Shen et al. 2021).
    ``rotary``: ``None`` or a callable that rotates ``(batch, length, heads, d)`` by position
    (a ``keraformer.positions.RotaryEmbedding``), applied to ``φ(q)`` and ``φ(k)`` in the
    numerator only (``"elu"`` only; see the module docstring). Returns
    ``(batch, q_len, heads, d_v)`` in ``v``'s dtype.

    Example:

        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> q, k, v = (rng.normal(size=(2, 6, 2, 4)).astype("float32") for _ in range(3))
        >>> from keraformer.attentions import linear_attention
        >>> phi = lambda x: np.where(x > 0, x + 1, np.exp(x))                 # elu + 1
        >>> numerator = np.einsum("bqhd,bkhd,bkhe->bqhe", phi(q), phi(k), v)
        >>> denominator = np.einsum("bqhd,bkhd->bqh", phi(q), phi(k))[..., None]
        >>> bool(np.allclose(linear_attention(q, k, v), numerator / denominator, atol=1e-5))
        True
        >>> tuple(linear_attention(q, k, v, causal=True, chunk_size=4).shape)   # O(n) prefix sums
        (2, 6, 2, 4)
    """
    check_choice("feature_map", feature_map, FEATURE_MAPS)
    check_rotary_feature_map(feature_map, rotary)
    check_positive_ints(chunk_size=chunk_size)
    check_attention_inputs(q, k, v)
    if causal and q.shape[1] != k.shape[1]:
        raise ValueError(f"causal linear attention needs q_len == k_len; received "
                         f"{q.shape[1]} and {k.shape[1]}")
    keep = key_padding_weights(mask, k.shape[1], q.shape[0])
    k, v = zero_unseen_keys(mask, k, v)  # 0 · NaN at padding would reach every query
    q32, k32, v32 = (ops.cast(x, "float32") for x in (q, k, v))
    if feature_map == "elu":
        out = elu_linear_attention(q32, k32, v32, keep, causal, chunk_size, rotary)
    else:
        out = softmax_linear_attention(q32, k32, v32, keep, causal, chunk_size)
    return ops.cast(out, v.dtype)


@keras.saving.register_keras_serializable(package="keraformer")
class LinearAttention(ProjectedHeads, keras.layers.Layer):
    """Multi-head linear attention: the projections of ``keraformer.attentions.projection``
    (sublayers ``query``, ``key``, ``value``, ``output``) around :func:`linear_attention`.

    Call with ``query (batch, q_len, dim)``, optional ``key``/``value`` (default ``query``), a
    boolean key padding ``mask`` ``(batch, k_len)`` or ``(batch, 1, 1, k_len)`` and ``causal``;
    returns ``(batch, q_len, output_dim)``.

    Args:
        heads: number of heads (the projections are those of :class:`MultiHeadAttention`).
        head_size: value size per head.
        key_size: query/key size per head (default ``head_size``).
        output_dim: width of the output projection (default: the query width).
        use_bias: whether the projections have biases.
        feature_map: ``"elu"`` (``elu + 1``) or ``"softmax"`` (Efficient Attention).
        chunk_size: positions per chunk of the causal prefix sums.
        rotary: a ``keraformer.positions.RotaryEmbedding`` (or its config; ``"elu"`` only)
            that rotates the feature-mapped queries and keys of the numerator, as in
            RoFormer's linear attention.
        kernel_initializer: initializer of the projection kernels.

    Example:

        >>> import numpy as np
        >>> from keraformer.attentions import LinearAttention
        >>> layer = LinearAttention(heads=2, head_size=8, feature_map="softmax")
        >>> x = np.random.default_rng(0).normal(size=(2, 7, 16)).astype("float32")
        >>> tuple(layer(x, mask=np.array([[1] * 7, [1] * 5 + [0] * 2], bool)).shape)
        (2, 7, 16)
    """

    def __init__(self, heads, head_size, key_size=None, output_dim=None, use_bias=True,
                 feature_map="elu", chunk_size=64, rotary=None,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.feature_map = check_choice("feature_map", feature_map, FEATURE_MAPS)
        check_positive_ints(chunk_size=chunk_size)
        self.chunk_size = chunk_size
        self.init_heads(heads, head_size, key_size, output_dim, use_bias, kernel_initializer,
                        rotary)
        check_rotary_feature_map(self.feature_map, self.rotary)

    def build(self, query_shape, key_shape=None, value_shape=None):
        self.build_projections(query_shape, key_shape, value_shape)

    def call(self, query, key=None, value=None, mask=None, causal=False):
        q, k, v = self.project(query, key, value)
        return self.merge_heads(linear_attention(q, k, v, mask, causal, self.feature_map,
                                                 self.chunk_size, self.rotary))

    def get_config(self):
        return {**super().get_config(), **self.heads_config(), "feature_map": self.feature_map,
                "chunk_size": self.chunk_size}
