"""Softmax attention, with optional entropy-invariant scaling, and the multi-head layer.

Tensors are ``(batch, length, heads, head_dim)`` as in ``keras.ops.dot_product_attention``.
Entropy scaling (Su 2021, "entropy-invariant softmax") multiplies the logits by
``log(n) / log(base)``, ``n`` being the number of keys each query may attend to, so that
attention entropy stays near its training-length value when inputs get longer.
"""

import math

import keras
from keras import ops

from keraformer.checks import check_attention_inputs, check_broadcastable, check_positive_ints
from keraformer.masks import apply_mask, causal_mask, combine_masks, count_keys


def entropy_scale(length, base=512):
    """``log(length) / log(base)``; ``length`` may be a number or a tensor (clipped at 1)."""
    if isinstance(length, (int, float)):
        return math.log(max(length, 1)) / math.log(base)
    length = ops.maximum(ops.cast(length, "float32"), 1.0)
    return ops.log(length) / math.log(base)


def length(x):
    """Axis 1 of ``x``: a Python int when static, else a scalar tensor (traced graphs)."""
    return x.shape[1] if x.shape[1] is not None else ops.shape(x)[1]


def attention_mask(q_len, k_len, mask=None, causal=False):
    """Combine a user mask with the causal mask; ``None`` when nothing is masked.

    The causal mask aligns the queries with the last keys (``k_len - q_len`` cached keys).
    """
    causal = causal_mask(q_len, k_len, k_len - q_len) if causal else None
    return combine_masks(mask, causal)


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


def attention_probabilities(q, k, mask=None, bias=None, causal=False, scale=None,
                            entropy_scaling=False, scaling_base=512):
    """Softmax weights ``(batch, heads, q_len, k_len)`` in float32.

    ``mask`` is boolean and broadcasts to ``(batch, heads, q_len, k_len)`` (``True`` attends;
    its key axis has length ``k_len``); ``bias`` is added to the logits (relative positions,
    ALiBi...).
    """
    check_mask_and_bias(q, k, mask, bias)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = ops.einsum("bqhd,bkhd->bhqk", ops.cast(q, "float32"), ops.cast(k, "float32"))
    logits = logits * scale
    mask = attention_mask(length(q), length(k), mask, causal)
    if entropy_scaling:
        logits = logits * entropy_scale(count_keys(mask, length(k)), scaling_base)
    if bias is not None:
        logits = logits + ops.cast(bias, "float32")
    return ops.softmax(apply_mask(logits, mask), axis=-1)


def weighted_values(probs, v):
    """``(batch, heads, q_len, k_len)`` weights times ``(batch, k_len, heads, d)`` values."""
    return ops.einsum("bhqk,bkhd->bqhd", ops.cast(probs, v.dtype), v)


def dot_product_attention(q, k, v, mask=None, bias=None, causal=False, scale=None,
                          entropy_scaling=False, scaling_base=512):
    """Softmax attention ``softmax(s·q kᵀ + bias)·v``, output ``(batch, q_len, heads, d_v)``.

    ``scale`` defaults to ``1/sqrt(head_dim)``; ``causal`` lets query ``i`` see keys ``j <= i``
    (queries aligned with the last keys when ``q_len < k_len``); ``entropy_scaling`` multiplies
    the logits by ``log(n)/log(scaling_base)``. Without entropy scaling this is
    ``keras.ops.dot_product_attention``, which uses fused kernels where the backend has them
    (those need equal query and value head sizes; otherwise the product is written out).
    """
    check_attention_inputs(q, k, v)
    check_mask_and_bias(q, k, mask, bias)
    if (entropy_scaling or (causal and q.shape[1] != k.shape[1]) or q.shape[-1] != v.shape[-1]
            or not fused_kernel_compiles(q)):
        probs = attention_probabilities(q, k, mask, bias, causal, scale, entropy_scaling,
                                        scaling_base)
        return weighted_values(probs, v)
    if mask is not None:
        mask = ops.broadcast_to(ops.cast(mask, "bool"), (ops.shape(q)[0], q.shape[2],
                                                         length(q), length(k)))
    return ops.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale,
                                     is_causal=causal)


@keras.saving.register_keras_serializable(package="keraformer")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head softmax attention with separate query/key and value head sizes.

    ``heads`` heads; queries and keys have ``key_size`` dims per head (default ``head_size``),
    values ``head_size``; the output projection maps back to ``output_dim`` (default: the query
    width). ``rotary`` (a ``keraformer.positions.RotaryEmbedding`` or its config) rotates
    queries and keys before the product. Call with ``query (batch, q_len, dim)`` and optional
    ``key``/``value`` (default: ``query``), a boolean ``mask`` broadcasting to
    ``(batch, heads, q_len, k_len)``, an additive ``bias`` and ``causal``; returns
    ``(batch, q_len, output_dim)``. The sublayers are named ``query``, ``key``, ``value`` and
    ``output`` (Dense kernels ``(dim, heads·size)``), as BERT checkpoints lay them out.
    """

    def __init__(self, heads, head_size, key_size=None, output_dim=None, use_bias=True,
                 dropout_rate=0.0, scale=None, entropy_scaling=False, scaling_base=512,
                 rotary=None, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        check_positive_ints(heads=heads, head_size=head_size)
        check_positive_ints(**{name: value for name, value in (("key_size", key_size),
                                                                ("output_dim", output_dim))
                               if value is not None})
        self.heads, self.head_size = heads, head_size
        self.key_size = key_size or head_size
        self.output_dim, self.use_bias, self.dropout_rate = output_dim, use_bias, dropout_rate
        self.scale, self.entropy_scaling, self.scaling_base = scale, entropy_scaling, scaling_base
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        if isinstance(rotary, dict):
            rotary = keras.saving.deserialize_keras_object(rotary)
        if rotary is not None and self.key_size % 2:
            raise ValueError(f"`key_size` (default `head_size`) must be even to rotate queries "
                             f"and keys with `rotary`; received {self.key_size}")
        self.rotary = rotary
        self.supports_masking = True  # `mask` is the attention mask, not a Keras input mask

    def _dense(self, units, name):
        return keras.layers.Dense(units, use_bias=self.use_bias, name=name,
                                  kernel_initializer=self.kernel_initializer,
                                  dtype=self.dtype_policy)

    def build(self, query_shape, key_shape=None, value_shape=None):
        key_shape = key_shape or query_shape
        value_shape = value_shape or key_shape
        output_dim = self.output_dim or query_shape[-1]
        self.query_dense = self._dense(self.heads * self.key_size, "query")
        self.key_dense = self._dense(self.heads * self.key_size, "key")
        self.value_dense = self._dense(self.heads * self.head_size, "value")
        self.output_dense = self._dense(output_dim, "output")
        self.query_dense.build(query_shape)
        self.key_dense.build(key_shape)
        self.value_dense.build(value_shape)
        self.output_dense.build(tuple(query_shape[:-1]) + (self.heads * self.head_size,))
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def split_heads(self, x, size):
        """``(batch, length, heads·size)`` to ``(batch, length, heads, size)``."""
        return ops.reshape(x, (ops.shape(x)[0], ops.shape(x)[1], self.heads, size))

    def project_query(self, query, positions=None):
        q = self.split_heads(self.query_dense(query), self.key_size)
        return q if self.rotary is None else self.rotary(q, positions=positions)

    def project_key_value(self, key, value, positions=None):
        k = self.split_heads(self.key_dense(key), self.key_size)
        v = self.split_heads(self.value_dense(value), self.head_size)
        k = k if self.rotary is None else self.rotary(k, positions=positions)
        return k, v

    def attend(self, q, k, v, mask=None, bias=None, causal=False, training=None):
        """Attention over projected heads; merges the heads and applies the output projection."""
        if training and self.dropout_rate > 0:
            probs = attention_probabilities(q, k, mask, bias, causal, self.scale,
                                            self.entropy_scaling, self.scaling_base)
            out = weighted_values(self.dropout(probs, training=training), v)
        else:
            out = dot_product_attention(q, k, v, mask, bias, causal, self.scale,
                                        self.entropy_scaling, self.scaling_base)
        out = ops.reshape(out, (ops.shape(out)[0], ops.shape(out)[1], -1))
        return self.output_dense(out)

    def call(self, query, key=None, value=None, mask=None, bias=None, causal=False,
             training=None):
        key = query if key is None else key
        value = key if value is None else value
        q = self.project_query(query)
        k, v = self.project_key_value(key, value)
        return self.attend(q, k, v, mask, bias, causal, training)

    def compute_output_shape(self, query_shape, *args, **kwargs):
        return tuple(query_shape[:-1]) + (self.output_dim or query_shape[-1],)

    def compute_mask(self, *args, **kwargs):
        return None

    def get_config(self):
        rotary = None if self.rotary is None else keras.saving.serialize_keras_object(self.rotary)
        return {**super().get_config(), "heads": self.heads, "head_size": self.head_size,
                "key_size": self.key_size, "output_dim": self.output_dim,
                "use_bias": self.use_bias, "dropout_rate": self.dropout_rate,
                "scale": self.scale, "entropy_scaling": self.entropy_scaling,
                "scaling_base": self.scaling_base, "rotary": rotary,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}
