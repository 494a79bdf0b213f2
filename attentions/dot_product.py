"""Softmax attention, with optional entropy-invariant scaling, and the multi-head layer.

Tensors are ``(batch, length, heads, head_dim)`` as in ``keras.ops.dot_product_attention``.
Entropy scaling (Su 2021, "entropy-invariant softmax") multiplies the logits by
``log(n) / log(base)``, ``n`` being the number of keys each query may attend to, so that
attention entropy stays near its training-length value when inputs get longer.
Local attention (``window=w``) lets query ``i`` see key ``j`` only when ``|i − j| < w``
(causal: ``0 ≤ i − j < w``); with entropy scaling ``n`` is then the number of keys in the
window, so the factor stops growing once the input is longer than the window.
"""

import math

import keras
from keras import ops

from keraformer.attentions.projection import ProjectedHeads
from keraformer.checks import check_attention_inputs, check_broadcastable, check_positive_ints
from keraformer.masks import (apply_mask, causal_mask, combine_masks, count_keys,
                              position_window_mask, window_mask, zero_unseen_keys)
from keraformer.positions.rerope import check_rerope_options, rerope_scores


def entropy_scale(length, base=512):
    """``log(length) / log(base)``; ``length`` may be a number or a tensor (clipped at 1).

    Example:

        >>> from keraformer.attentions import entropy_scale
        >>> # log n / log 512
        >>> round(float(entropy_scale(512)), 4), round(float(entropy_scale(4096)), 4)
        (1.0, 1.3333)
    """
    if isinstance(length, (int, float)):
        return math.log(max(length, 1)) / math.log(base)
    length = ops.maximum(ops.cast(length, "float32"), 1.0)
    return ops.log(length) / math.log(base)


def length(x):
    """Axis 1 of ``x``: a Python int when static, else a scalar tensor (traced graphs)."""
    return x.shape[1] if x.shape[1] is not None else ops.shape(x)[1]


def check_window(window):
    """``window`` is ``None`` (full attention) or an integer >= 1 (``TypeError``/``ValueError``
    naming it otherwise)."""
    if window is not None:
        check_positive_ints(window=window)


def attention_mask(q_len, k_len, mask=None, causal=False, window=None):
    """Combine a user mask with the causal and window masks; ``None`` when nothing is masked.

    The causal and window masks align the queries with the last keys (``k_len - q_len``
    cached keys).
    """
    causal = causal_mask(q_len, k_len, k_len - q_len) if causal else None
    local = None if window is None else window_mask(q_len, k_len, window, k_len - q_len)
    return combine_masks(mask, causal, local)


def fused_kernel_compiles(x):
    """Whether ``keras.ops.dot_product_attention`` compiles for ``x``'s dtype here: JAX
    multiplies float16 queries and keys with float32 accumulation, which XLA refuses on CPU
    under ``jit`` ("precision 'F16_F16_F32' is not supported by dot_general on CPU"), so a
    ``mixed_float16`` model would fail in ``fit`` and ``predict``."""
    return not (keras.backend.backend() == "jax"
                and keras.backend.standardize_dtype(x.dtype) == "float16"
                and keras.distribution.list_devices()[0].startswith("cpu"))


def check_mask_and_bias(q, k, mask, bias):
    """``mask`` and ``bias`` must broadcast to the logits ``(batch, heads, q_len, k_len)``;
    a mask must cover every key (a key axis of length 1 would mask all keys or none)."""
    axes = (("batch", q.shape[0]), ("heads", q.shape[2]), ("q_len", q.shape[1]),
            ("k_len", k.shape[1]))
    if mask is not None:
        check_broadcastable("mask", mask, axes, exact=("k_len",))
    if bias is not None:
        check_broadcastable("bias", bias, axes)


def check_scores(q, k, scores):
    """``scores`` (products computed elsewhere) must be ``(batch, heads, q_len, k_len)``."""
    want = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    if len(scores.shape) != 4 or any(a is not None and b is not None and a != b
                                     for a, b in zip(scores.shape, want)):
        raise ValueError(f"`scores` must have shape (batch, heads, q_len, k_len) = {want}; "
                         f"received shape {tuple(scores.shape)}")


def attention_probabilities(q, k, mask=None, bias=None, causal=False, scale=None,
                            entropy_scaling=False, scaling_base=512, window=None, scores=None):
    """Softmax weights ``(batch, heads, q_len, k_len)`` in float32.

    ``mask`` is boolean and broadcasts to ``(batch, heads, q_len, k_len)`` (``True`` attends;
    its key axis has length ``k_len``); ``bias`` is added to the logits (relative positions,
    ALiBi...); ``window`` keeps the keys within ``window`` positions of each query.
    ``scores``: the products ``q·k`` ``(batch, heads, q_len, k_len)`` when they are computed
    otherwise than ``q kᵀ`` (ReRoPE, ``keraformer.positions.rerope_scores``); they are
    scaled, masked and normalised as ``q kᵀ`` would be.

    Example:

        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> q, k, v = (rng.normal(size=(2, 6, 2, 4)).astype("float32") for _ in range(3))
        >>> from keraformer.attentions import attention_probabilities
        >>> probs = np.asarray(attention_probabilities(q, k, causal=True))
        >>> probs.shape, bool(np.allclose(probs.sum(-1), 1)), float(probs[0, 0, 0, 1])
        ((2, 2, 6, 6), True, 0.0)
        >>> local = np.asarray(attention_probabilities(q, k, window=2))   # |i − j| < 2
        >>> (local[0, 0] > 0).astype(int).tolist()
        [[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0],
         [0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]]
    """
    check_mask_and_bias(q, k, mask, bias)
    check_window(window)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if scores is None:
        scores = ops.einsum("bqhd,bkhd->bhqk", ops.cast(q, "float32"), ops.cast(k, "float32"))
    else:
        check_scores(q, k, scores)
    logits = ops.cast(scores, "float32") * scale
    mask = attention_mask(length(q), length(k), mask, causal, window)
    if entropy_scaling:
        logits = logits * entropy_scale(count_keys(mask, length(k)), scaling_base)
    if bias is not None:
        logits = logits + ops.cast(bias, "float32")
    return ops.softmax(apply_mask(logits, mask), axis=-1)


def weighted_values(probs, v):
    """``(batch, heads, q_len, k_len)`` weights times ``(batch, k_len, heads, d)`` values."""
    return ops.einsum("bhqk,bkhd->bqhd", ops.cast(probs, v.dtype), v)


def dot_product_attention(q, k, v, mask=None, bias=None, causal=False, scale=None,
                          entropy_scaling=False, scaling_base=512, window=None, scores=None):
    """Softmax attention ``softmax(s·q kᵀ + bias)·v``, output ``(batch, q_len, heads, d_v)``.

    ``scale`` defaults to ``1/sqrt(head_dim)``; ``causal`` lets query ``i`` see keys ``j <= i``
    (queries aligned with the last keys when ``q_len < k_len``); ``window=w`` lets it see only
    keys with ``|i − j| < w`` (local attention; causal: ``0 ≤ i − j < w``); ``entropy_scaling``
    multiplies the logits by ``log(n)/log(scaling_base)``, ``n`` the visible keys.
    ``scores`` replaces ``q kᵀ`` (see :func:`attention_probabilities`). Without entropy
    scaling or ``scores`` this is ``keras.ops.dot_product_attention``, which uses fused
    kernels where the backend has them (those need equal query and value head sizes;
    otherwise the product is written out).

    Example:

        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> q, k, v = (rng.normal(size=(2, 6, 2, 4)).astype("float32") for _ in range(3))
        >>> from keraformer.attentions import dot_product_attention
        >>> keep = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], bool)   # row 2: 2 padded keys
        >>> out = dot_product_attention(q, k, v, mask=keep[:, None, None, :])
        >>> logits = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0        # scale 1/sqrt(4)
        >>> logits += np.where(keep, 0, -1e9)[:, None, None]
        >>> weights = np.exp(logits - logits.max(-1, keepdims=True))
        >>> weights /= weights.sum(-1, keepdims=True)
        >>> bool(np.allclose(out, np.einsum("bhqk,bkhd->bqhd", weights, v), atol=1e-5))
        True
        >>> tuple(dot_product_attention(q, k, v, causal=True, entropy_scaling=True).shape)
        (2, 6, 2, 4)
    """
    check_attention_inputs(q, k, v)
    check_mask_and_bias(q, k, mask, bias)
    check_window(window)
    k, v = zero_unseen_keys(mask, k, v)  # a NaN at padding must not reach real positions
    if (entropy_scaling or scores is not None or (causal and q.shape[1] != k.shape[1])
            or q.shape[-1] != v.shape[-1] or not fused_kernel_compiles(q)):
        probs = attention_probabilities(q, k, mask, bias, causal, scale, entropy_scaling,
                                        scaling_base, window, scores)
        return weighted_values(probs, v)
    if window is not None:
        mask = attention_mask(length(q), length(k), mask, False, window)
    if mask is not None:
        mask = ops.broadcast_to(ops.cast(mask, "bool"), (ops.shape(q)[0], q.shape[2],
                                                         length(q), length(k)))
    return ops.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale,
                                     is_causal=causal)


def write_key_value(cache, key, value, index):
    """``cache = (keys, values)`` ``(batch, cache_len, heads, size)`` with ``key``/``value``
    ``(batch, n, heads, size)`` written into columns ``index ... index + n - 1``."""
    def write(slots, update):
        start = (0, index, 0, 0)
        return ops.slice_update(slots, start, ops.cast(update, slots.dtype))
    return write(cache[0], key), write(cache[1], value)


@keras.saving.register_keras_serializable(package="keraformer")
class MultiHeadAttention(ProjectedHeads, keras.layers.Layer):
    """Multi-head softmax attention with separate query/key and value head sizes.

    Call with ``query (batch, q_len, dim)`` and optional ``key``/``value`` (default:
    ``query``), a boolean ``mask`` broadcasting to ``(batch, heads, q_len, k_len)``, an
    additive ``bias`` and ``causal``; returns ``(batch, q_len, output_dim)``. The sublayers
    ``query``, ``key``, ``value`` and ``output`` are described in
    ``keraformer.attentions.projection``.

    Cached decoding runs the same call: ``cache=(key, value)``, each ``(batch, cache_len,
    heads, size)`` in projected, rotated form, makes the call return ``(output, cache)``.
    With ``cache_update_index`` (self-attention) the call projects its own keys and values
    from ``query`` and writes them into the cache's columns ``cache_update_index ...
    cache_update_index + q_len`` first; without it (cross-attention) the cache is used as it
    is, computed once per source by :meth:`project_key_value`. Queries then attend to every
    column of the cache that ``mask`` (which must cover ``cache_len`` keys) lets them see:
    the caller decides which columns hold which tokens (``keraformer.models.decoding`` keeps
    one column per beam and step), so ``causal`` is refused there. ``positions``
    (``(q_len,)`` or ``(batch, q_len)``) places the rotary embedding of this call's queries
    and keys (default ``0..q_len-1``); ``key_positions`` (``(cache_len,)`` or ``(batch,
    cache_len)``) are the positions of the cache's columns, which ``window`` (a key is seen
    when ``|query position − key position| < window``) and ReRoPE (whose cache holds
    unrotated keys, rotated per pair) read.

    Args:
        heads: number of heads.
        head_size: value size per head.
        key_size: query/key size per head (default ``head_size``).
        output_dim: width of the output projection (default: the query width).
        use_bias: whether the projections have biases.
        dropout_rate: dropout on the attention probabilities (training only).
        scale: logit scale (default ``1/sqrt(key_size)``).
        entropy_scaling: multiply the logits by ``log(n)/log(scaling_base)``.
        scaling_base: see ``entropy_scaling``.
        rotary: a ``keraformer.positions.RotaryEmbedding`` (or its config) that rotates
            queries and keys before the product.
        kernel_initializer: initializer of the projection kernels.
        window: local attention: query ``i`` sees key ``j`` only when ``|i − j| < window``
            (``None``: every key).
        rerope_window: ReRoPE (needs ``rotary``): relative positions beyond this distance
            are clipped to it (``keraformer.positions.rerope``); ``None``: plain RoPE.
        rerope_leak: Leaky ReRoPE: beyond ``rerope_window`` relative positions grow by
            ``1/rerope_leak`` per token instead of staying (``None``: ReRoPE; ``1``: RoPE).
        value_initializer: initializer of the value kernel (default
            ``kernel_initializer``; DeepNorm scales it by ``β``).
        output_initializer: initializer of the output kernel (default
            ``kernel_initializer``; DeepNorm scales it by ``β``).

    ``call(query, key=None, value=None, mask=None, bias=None, causal=False,
    training=None, positions=None)``: ``positions`` ``(length,)`` or ``(batch, length)``
    are the rotary positions of the queries and keys (default ``0..length−1``; random
    positions in training).

    Example:

        >>> import numpy as np
        >>> from keraformer.attentions import MultiHeadAttention
        >>> from keraformer.positions import RotaryEmbedding
        >>> layer = MultiHeadAttention(heads=2, head_size=8, rotary=RotaryEmbedding())
        >>> x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype("float32")
        >>> keep = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
        >>> tuple(layer(x, mask=keep[:, None, None, :], causal=True).shape)
        (2, 5, 16)
    """

    def __init__(self, heads, head_size, key_size=None, output_dim=None, use_bias=True,
                 dropout_rate=0.0, scale=None, entropy_scaling=False, scaling_base=512,
                 rotary=None, kernel_initializer="glorot_uniform", window=None,
                 rerope_window=None, rerope_leak=None, value_initializer=None,
                 output_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.init_heads(heads, head_size, key_size, output_dim, use_bias, kernel_initializer,
                        rotary, value_initializer, output_initializer)
        self.dropout_rate = dropout_rate
        self.scale, self.entropy_scaling, self.scaling_base = scale, entropy_scaling, scaling_base
        check_window(window)
        if rerope_window is not None:
            check_rerope_options(rerope_window, rerope_leak)
            if self.rotary is None:
                raise ValueError(f"`rerope_window={rerope_window}` rectifies rotary "
                                 f"positions and needs `rotary`; received rotary=None")
        elif rerope_leak is not None:
            raise ValueError(f"`rerope_leak={rerope_leak!r}` needs `rerope_window` (the "
                             f"distance beyond which positions leak); received "
                             f"rerope_window=None")
        self.window, self.rerope_window, self.rerope_leak = window, rerope_window, rerope_leak

    def build(self, query_shape, key_shape=None, value_shape=None):
        self.build_projections(query_shape, key_shape, value_shape)
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def project_query(self, query, positions=None):
        return self.rotate(self.split_heads(self.query_dense(query), self.key_size), positions)

    def project_key_value(self, key, value, positions=None):
        k = self.rotate(self.split_heads(self.key_dense(key), self.key_size), positions)
        return k, self.split_heads(self.value_dense(value), self.head_size)

    def attend(self, q, k, v, mask=None, bias=None, causal=False, training=None, scores=None,
               window="layer"):
        """Attention over projected heads; merges the heads and applies the output projection.
        ``scores``: the query-key products when not ``q kᵀ`` (ReRoPE); ``window``: the
        layer's own by default (a cached call puts its window in ``mask`` instead)."""
        window = self.window if window == "layer" else window
        if training and self.dropout_rate > 0:
            probs = attention_probabilities(q, k, mask, bias, causal, self.scale,
                                            self.entropy_scaling, self.scaling_base,
                                            window, scores)
            out = weighted_values(self.dropout(probs, training=training),
                                  zero_unseen_keys(mask, v))
        else:
            out = dot_product_attention(q, k, v, mask, bias, causal, self.scale,
                                        self.entropy_scaling, self.scaling_base, window,
                                        scores)
        return self.merge_heads(out)

    def rectified_scores(self, q, k, causal, q_positions=None, k_positions=None):
        """ReRoPE products of unrotated heads (``None`` without ``rerope_window``)."""
        if self.rerope_window is None:
            return None
        return rerope_scores(q, k, self.rerope_window, self.rerope_leak, q_positions,
                             k_positions, causal, rotate=self.rotary)

    def call(self, query, key=None, value=None, mask=None, bias=None, causal=False,
             training=None, cache=None, cache_update_index=None, positions=None,
             key_positions=None):
        key = query if key is None else key
        value = key if value is None else value
        rectified = self.rerope_window is not None
        if cache is None:
            if rectified:
                q, k, v = self.project(query, key, value)
                scores = self.rectified_scores(q, k, causal, positions, positions)
                return self.attend(q, k, v, mask, bias, causal, training, scores)
            q = self.project_query(query, positions)
            k, v = self.project_key_value(key, value, positions)
            return self.attend(q, k, v, mask, bias, causal, training)
        if causal:
            raise ValueError("`causal`=True cannot be combined with `cache`: the cache's "
                             "columns are laid out by the caller, so pass the causal part "
                             "in `mask`; received causal=True")
        if (self.window is not None or rectified) and key_positions is None:
            raise ValueError(f"a cached call of attention with window={self.window} / "
                             f"rerope_window={self.rerope_window} needs `key_positions` (the "
                             f"positions of the cache columns); received None")
        # ReRoPE rotates queries and keys per pair, so its cache holds unrotated keys
        q = (self.split_heads(self.query_dense(query), self.key_size) if rectified
             else self.project_query(query, positions))
        if cache_update_index is not None:  # self-attention: write this call's keys, values
            new = (self.project(query, key, value)[1:] if rectified
                   else self.project_key_value(key, value, positions))
            cache = write_key_value(cache, *new, cache_update_index)
        keys, values = cache
        if self.window is not None:
            mask = combine_masks(mask, position_window_mask(
                self.query_positions(query, positions), key_positions, self.window))
        scores = (self.rectified_scores(q, keys, False, self.query_positions(query, positions),
                                        key_positions) if rectified else None)
        return self.attend(q, keys, values, mask, bias, False, training, scores,
                           window=None), cache

    def query_positions(self, query, positions):
        """``positions``, or ``0..q_len−1`` without them."""
        if positions is not None:
            return positions
        return ops.arange(ops.shape(query)[1])

    def get_config(self):
        return {**super().get_config(), **self.heads_config(),
                "dropout_rate": self.dropout_rate, "scale": self.scale,
                "entropy_scaling": self.entropy_scaling, "scaling_base": self.scaling_base,
                "window": self.window, "rerope_window": self.rerope_window,
                "rerope_leak": self.rerope_leak}
