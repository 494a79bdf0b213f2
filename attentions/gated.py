"""Gated Attention Unit (Hua et al. 2022, "Transformer Quality in Linear Time"; Su's GAU-α).

One Dense layer maps ``x`` to gates ``U``, values ``V`` and a shared ``Z`` (widths ``units``,
``units``, ``key_size``); per-dimension scale-offsets turn ``Z`` into ``Q`` and ``K``; one
attention head mixes ``V`` and the output is ``(U ⊙ A·V)·W_o``. The attention weights ``A``
are ``softmax``, ``softmax_plus`` = ``softmax(log_b(n)·QKᵀ/√s)`` (entropy-invariant, ``b`` =
``scaling_base``) or ``relu2`` = ``relu(QKᵀ/√s)²/n``, ``n`` the number of keys a query may
attend to (padding and future keys excluded). With ``chunk_size`` FLASH's mixed-chunk
attention replaces the quadratic product: ``relu2`` inside chunks plus the linear kernel
``QKᵀ/√s`` across chunks (earlier chunks only when causal), so the cost is ``O(n)``.
"""

import math

import keras
from keras import ops

from keraformer.attentions.chunks import (allowed_key_counts, chunk_length, exclusive_cumsum,
                                          full_key_weights, key_padding_weights, merge_chunks,
                                          split_chunks)
from keraformer.attentions.dot_product import entropy_scale
from keraformer.checks import check_broadcastable, check_choice, check_positive_ints
from keraformer.feedforward import activation_by_name
from keraformer.masks import (apply_mask, causal_mask, combine_masks, count_keys,
                              zero_unseen_keys)
from keraformer.positions.rotary import rotary_argument, rotary_config

NORMALIZATIONS = ("softmax_plus", "softmax", "relu2")


def single_head_mask(mask, q_len, k_len, causal, batch=None):
    """A boolean key mask ``(batch, k)`` or 4-D mask ``(batch, 1, q|1, k)`` combined with the
    causal mask, as ``(batch|1, q|1, k)``; ``None`` when nothing is masked."""
    if mask is not None:
        if len(mask.shape) == 2:
            check_broadcastable("mask", mask, (("batch", batch), ("k_len", k_len)),
                                exact=("k_len",))
            mask = ops.cast(mask, "bool")[:, None, :]
        elif len(mask.shape) == 4 and mask.shape[1] == 1:
            check_broadcastable("mask", mask, (("batch", batch), ("heads", 1), ("q_len", q_len),
                                               ("k_len", k_len)), exact=("k_len",))
            mask = ops.cast(mask, "bool")[:, 0]
        else:
            raise ValueError(f"`mask` must have shape (batch, k_len) or (batch, 1, q_len|1, "
                             f"k_len); received shape {tuple(mask.shape)}")
    causal = causal_mask(q_len, k_len)[0] if causal else None
    return combine_masks(mask, causal)


def gau_attention_weights(q, k, mask=None, causal=False, normalization="softmax_plus",
                          min_length=None, scaling_base=512):
    """Single-head attention weights ``(batch, q_len, k_len)`` in float32 from ``q``, ``k``
    ``(batch, length, key_size)``. ``mask`` as in :func:`single_head_mask`; ``min_length``
    floors ``n`` in ``softmax_plus`` (GAU-α uses 16)."""
    check_choice("normalization", normalization, NORMALIZATIONS)
    q, k = ops.cast(q, "float32"), ops.cast(k, "float32")
    scores = ops.einsum("bqd,bkd->bqk", q, k) / math.sqrt(q.shape[-1])
    mask = single_head_mask(mask, q.shape[1], k.shape[1], causal, q.shape[0])
    if normalization == "relu2":
        weights = ops.square(ops.relu(scores)) / ops.maximum(count_keys(mask, k.shape[1]), 1.0)
        return weights if mask is None else weights * ops.cast(mask, "float32")
    if normalization == "softmax_plus":
        n = count_keys(mask, k.shape[1])
        if min_length is not None:
            n = ops.maximum(n, float(min_length))
        scores = scores * entropy_scale(n, scaling_base)
    return ops.softmax(apply_mask(scores, mask), axis=-1)


def mixed_chunk_attention(q, k, v, mask=None, causal=False, chunk_size=128):
    """FLASH mixed-chunk attention ``(batch, length, d_v)``, float32, ``O(length)``.

    For query ``i`` in chunk ``g``: ``Σ_{j∈g} relu(q_i·k_j/√s)² v_j`` plus the linear term
    ``Σ_{j∈other chunks} (q_i·k_j/√s) v_j`` (chunks before ``g`` when causal), divided by the
    number ``n_i`` of keys ``i`` may attend to. Each key is counted once, so with
    ``chunk_size >= length`` this is exactly ``relu2`` attention. ``mask``: key padding mask
    ``(batch, length)`` or ``(batch, 1, 1, length)``.
    """
    k, v = zero_unseen_keys(mask, k, v)  # 0 · NaN at padding would reach every query
    q, k, v = (ops.cast(x, "float32") for x in (q, k, v))
    batch, length = ops.shape(q)[0], ops.shape(q)[1]
    keep = full_key_weights(key_padding_weights(mask, k.shape[1], q.shape[0]), batch, length)
    counts = allowed_key_counts(keep, length, causal)
    size = chunk_length(length, chunk_size)
    q = q / math.sqrt(q.shape[-1])
    qc, kc, vc, kept = (split_chunks(x, size) for x in (q, k, v, keep))
    local = ops.square(ops.relu(ops.einsum("bcid,bcjd->bcij", qc, kc))) * kept[:, :, None, :]
    if causal:
        local = local * ops.tril(ops.ones((size, size), "float32"))
    out = ops.einsum("bcij,bcje->bcie", local, vc)
    states = ops.einsum("bcjd,bcje->bcde", kc * kept[..., None], vc)
    if causal:
        others = exclusive_cumsum(states, axis=1)
    else:
        others = ops.sum(states, axis=1, keepdims=True) - states
    out = out + ops.einsum("bcid,bcde->bcie", qc, others)
    return merge_chunks(out, length) / ops.maximum(counts, 1.0)[..., None]


@keras.saving.register_keras_serializable(package="keraformer")
class ScaleOffset(keras.layers.Layer):
    """``x·gamma (+ beta)`` per feature: GAU's cheap map from the shared ``Z`` to ``Q``/``K``.

    Input and output ``(..., dim)``; weights ``gamma`` (ones) and, with ``offset=True``,
    ``beta`` (zeros).

    Example:

        >>> import numpy as np
        >>> from keraformer.attentions import ScaleOffset
        >>> layer = ScaleOffset()
        >>> np.asarray(layer(np.array([[1.0, 2.0]], "float32"))).tolist()  # gamma = 1, beta = 0
        [[1.0, 2.0]]
    """

    def __init__(self, offset=True, **kwargs):
        super().__init__(**kwargs)
        self.offset = offset

    def build(self, input_shape):
        self.gamma = self.add_weight(name="gamma", shape=(input_shape[-1],), initializer="ones")
        if self.offset:
            self.beta = self.add_weight(name="beta", shape=(input_shape[-1],),
                                        initializer="zeros")

    def call(self, x):
        x = x * ops.cast(self.gamma, x.dtype)
        return x + ops.cast(self.beta, x.dtype) if self.offset else x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "offset": self.offset}


@keras.saving.register_keras_serializable(package="keraformer")
class GatedAttentionUnit(keras.layers.Layer):
    """Gated Attention Unit: ``(U ⊙ A·V)·W_o``, one attention head over ``Q``, ``K`` from ``Z``.

    Call ``gau(x, mask=None, causal=False, positions=None, training=None)`` with ``x``
    ``(batch, length, dim)``, a boolean key ``mask`` ``(batch, length)`` or 4-D
    ``(batch, 1, length|1, length)`` (e.g. a UniLM mask; only key padding masks with
    ``chunk_size``) and rotary ``positions``; returns ``(batch, length, output_dim or dim)``.
    Sublayers: ``i_dense`` (output split as ``u``, ``v``, ``qk`` of widths ``units``,
    ``units``, ``key_size``), ``q_scaleoffset``/``k_scaleoffset`` (``gamma``, plus ``beta``
    when ``use_bias``) and ``o_dense``, as GAU-α checkpoints name them.

    Args:
        units: width of the gates ``U`` and values ``V``.
        key_size: width of the shared ``Z`` (and of ``Q``, ``K``).
        activation: activation of ``i_dense``.
        normalization: ``"softmax_plus"``, ``"softmax"`` or ``"relu2"`` (module docstring).
        use_bias: biases in the Dense layers and offsets ``beta`` in the scale-offsets.
        rotary: a ``keraformer.positions.RotaryEmbedding`` (or its config) applied to ``Q``
            and ``K``.
        chunk_size: ``relu2`` only; switches to :func:`mixed_chunk_attention`, whose ``Q``/``K``
            are the same as the quadratic ones so a trained unit can switch modes.
        min_length: floor of ``n`` in ``softmax_plus`` (GAU-α uses 16).
        scaling_base: the base ``b`` of ``softmax_plus``.
        output_dim: width of ``o_dense`` (default: the input width).
        dropout_rate: dropout on the quadratic attention weights.
        kernel_initializer: initializer of the Dense kernels.

    Example:

        >>> import numpy as np
        >>> from keraformer.attentions import GatedAttentionUnit
        >>> from keraformer.positions import RotaryEmbedding
        >>> gau = GatedAttentionUnit(units=32, key_size=8, rotary=RotaryEmbedding())
        >>> x = np.random.default_rng(0).normal(size=(2, 6, 16)).astype("float32")
        >>> tuple(gau(x, mask=np.array([[1] * 6, [1] * 4 + [0] * 2], bool), causal=True).shape)
        (2, 6, 16)
    """

    def __init__(self, units, key_size=128, activation="swish", normalization="softmax_plus",
                 use_bias=True, rotary=None, chunk_size=None, min_length=None,
                 scaling_base=512, output_dim=None, dropout_rate=0.0,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        check_positive_ints(units=units, key_size=key_size)
        self.units, self.key_size, self.activation = units, key_size, activation
        self.normalization = check_choice("normalization", normalization, NORMALIZATIONS)
        if chunk_size is not None:
            check_positive_ints(chunk_size=chunk_size)
            if normalization != "relu2":
                raise ValueError(f"`chunk_size` (mixed-chunk attention) needs "
                                 f"normalization='relu2'; received {normalization!r}")
        self.use_bias, self.chunk_size, self.min_length = use_bias, chunk_size, min_length
        self.scaling_base, self.output_dim = scaling_base, output_dim
        self.dropout_rate = dropout_rate
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.rotary = rotary_argument(rotary, key_size)
        self.supports_masking = True  # `mask` is the attention mask, not a Keras input mask

    def _dense(self, units, name, activation=None):
        return keras.layers.Dense(units, activation=activation, use_bias=self.use_bias,
                                  name=name, kernel_initializer=self.kernel_initializer,
                                  dtype=self.dtype_policy)

    def build(self, input_shape):
        self.i_dense = self._dense(2 * self.units + self.key_size, "i_dense",
                                   activation_by_name(self.activation))
        self.i_dense.build(input_shape)
        self.q_scaleoffset = ScaleOffset(self.use_bias, name="q_scaleoffset",
                                         dtype=self.dtype_policy)
        self.k_scaleoffset = ScaleOffset(self.use_bias, name="k_scaleoffset",
                                         dtype=self.dtype_policy)
        self.q_scaleoffset.build((self.key_size,))
        self.k_scaleoffset.build((self.key_size,))
        self.o_dense = self._dense(self.output_dim or input_shape[-1], "o_dense")
        self.o_dense.build(tuple(input_shape[:-1]) + (self.units,))
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def call(self, x, mask=None, causal=False, positions=None, training=None):
        hidden = self.i_dense(x)
        u = hidden[..., :self.units]
        v = hidden[..., self.units:2 * self.units]
        z = hidden[..., 2 * self.units:]
        q, k = self.q_scaleoffset(z), self.k_scaleoffset(z)
        if self.rotary is not None:
            q = self.rotary(q, positions=positions)
            k = self.rotary(k, positions=positions)
        if mask is not None:  # refused by name (shape, batch) before any use
            single_head_mask(mask, q.shape[1], k.shape[1], False, q.shape[0])
        k, v = zero_unseen_keys(mask, k, v)  # 0 · NaN at padding would reach every query
        if self.chunk_size is not None:
            mixed = mixed_chunk_attention(q, k, v, mask, causal, self.chunk_size)
        else:
            weights = gau_attention_weights(q, k, mask, causal, self.normalization,
                                            self.min_length, self.scaling_base)
            weights = self.dropout(weights, training=training)
            mixed = ops.einsum("bqk,bke->bqe", weights, ops.cast(v, "float32"))
        return self.o_dense(u * ops.cast(mixed, u.dtype))

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return tuple(input_shape[:-1]) + (self.output_dim or input_shape[-1],)

    def compute_mask(self, *args, **kwargs):
        return None

    def get_config(self):
        return {**super().get_config(), "units": self.units, "key_size": self.key_size,
                "activation": self.activation, "normalization": self.normalization,
                "use_bias": self.use_bias, "rotary": rotary_config(self.rotary),
                "chunk_size": self.chunk_size, "min_length": self.min_length,
                "scaling_base": self.scaling_base, "output_dim": self.output_dim,
                "dropout_rate": self.dropout_rate,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}
