"""VQ-key attention (Lingle 2023, "Transformer-VQ: Linear-Time Transformers via Vector
Quantization").

Keys are replaced by their nearest codeword ``k̂_j = C[z_j]`` (L2) from a per-head codebook
``C`` ``(heads, codes, head_dim)``. Softmax attention over ``k̂`` then only needs, per code,
the count ``N_c`` and the sum ``S_c`` of the values whose keys chose it:
``out_i = Σ_c exp(s·q_i·C_c)·S_c / Σ_c exp(s·q_i·C_c)·N_c``, which is ``O(n·codes)`` and never
forms an ``n × n`` matrix. Causal attention walks blocks of ``block_size`` positions: exact
softmax over the quantised keys inside the block plus the per-code counts and sums of all
earlier blocks (the block-recurrent cache), one softmax over both, ``O(n·(block_size +
codes))``. The result equals ``dot_product_attention(q, quantize(k), v)`` exactly, also with
``entropy_scaling`` (the logits times ``log(n_i)/log(base)``, ``n_i`` the keys query ``i`` may
see): the factor depends on the query only, so it scales ``q_i`` and the caches are unchanged.

Positions. ``VQAttention(rotary=...)`` rotates the queries and the keys *before* the keys are
quantised: ``softmax_j((R_i q_i)·VQ(R_j k_j))``. Rotating after quantising (``R_j C[z_j]``,
as RoPE on softmax attention would) makes each key's logit depend on its own position, so the
keys that share a code could no longer share one cached count and value sum and the cost
would return to ``O(n²)``. Rotating first keeps every cached term a function of the code
alone: the key's position reaches the logits through the codeword it picks (the codebook is
learned on rotated keys) and the query's through ``R_i``. The logits are then only
approximately a function of ``i − j`` (exactly so as the quantisation error goes to zero).
"""

import math

import keras
from keras import ops

from keraformer.attentions.chunks import (allowed_key_counts, chunk_length, exclusive_cumsum,
                                          full_key_weights, heads_first, key_padding_weights,
                                          merge_chunks, split_chunks)
from keraformer.attentions.dot_product import entropy_scale
from keraformer.attentions.projection import ProjectedHeads
from keraformer.checks import check_attention_inputs, check_positive_ints
from keraformer.masks import apply_mask, zero_unseen_keys


def quantize(k, codebook):
    """Nearest codeword (squared L2) of each key: ``(k̂, one_hot)``.

    ``k`` ``(batch, length, heads, d)``, ``codebook`` ``(heads, codes, d)``; returns ``k̂``
    ``(batch, length, heads, d)`` and the float32 one-hot codes ``(batch, length, heads, codes)``.

    Example:

        >>> import numpy as np
        >>> from keraformer.attentions import quantize
        >>> codebook = np.array([[[0.0, 0.0], [1.0, 1.0]]], "float32")   # (heads, codes, d)
        >>> k = np.array([[[[0.9, 0.8]], [[0.1, -0.2]]]], "float32")    # (batch, length, heads, d)
        >>> k_hat, codes = quantize(k, codebook)
        >>> np.asarray(k_hat)[0, :, 0].tolist(), np.asarray(codes)[0, :, 0].tolist()
        ([[1.0, 1.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]])
    """
    k = ops.cast(k, "float32")
    codebook = ops.cast(codebook, "float32")
    distances = (ops.sum(ops.square(codebook), axis=-1)
                 - 2.0 * ops.einsum("bnhd,hcd->bnhc", k, codebook))
    one_hot = ops.one_hot(ops.argmin(distances, axis=-1), codebook.shape[1], dtype="float32")
    return ops.einsum("bnhc,hcd->bnhd", one_hot, codebook), one_hot


def code_logits(q, codebook, counts, scale):
    """``s·q·C_c + log N_c`` with codes that no key chose masked out."""
    logits = ops.einsum("...hd,hcd->...hc", q, codebook) * scale
    return apply_mask(logits + ops.log(ops.maximum(counts, 1.0)), counts > 0)


def straight_through_terms(q, weights, delta_values, delta_counts, scale):
    """First-order terms that carry the straight-through gradient of the cached keys.

    ``delta`` is ``k - stop_gradient(k)``: zero in value, so attention over the codes equals
    attention over ``k̂ + delta`` to first order in ``delta``. ``weights`` are ``P_c / N_c``;
    returns the extra numerator ``s Σ_c w_c q·D_c`` and denominator ``s Σ_c w_c q·Δ_c``.
    """
    weighted_q = ops.einsum("bqhc,bqhd->bqhcd", weights, q) * scale
    numerator = ops.einsum("bqhcd,bhcde->bqhe", weighted_q, delta_values)
    denominator = ops.einsum("bqhcd,bhcd->bqh", weighted_q, delta_counts)
    return numerator, denominator[..., None]


def vq_attention_global(q, k, v, codebook, keep, scale, straight_through):
    """Non-causal VQ attention from per-code value sums and counts, ``O(n·codes)``."""
    _, one_hot = quantize(k, codebook)
    if keep is not None:
        one_hot = one_hot * keep[:, :, None, None]
    counts = ops.sum(one_hot, axis=1)                         # (b, h, c)
    sums = ops.einsum("bjhc,bjhe->bhce", one_hot, v)
    probs = ops.softmax(code_logits(q, codebook, counts[:, None], scale), axis=-1)
    weights = probs / ops.maximum(counts[:, None], 1.0)       # P_c / N_c
    out = ops.einsum("bqhc,bhce->bqhe", weights, sums)
    if not straight_through:
        return out
    delta = k - ops.stop_gradient(k)
    delta_values = ops.einsum("bjhc,bjhd,bjhe->bhcde", one_hot, delta, v)
    delta_counts = ops.einsum("bjhc,bjhd->bhcd", one_hot, delta)
    extra, norm = straight_through_terms(q, weights, delta_values, delta_counts, scale)
    return (out + extra) / (1.0 + norm)


def vq_attention_causal(q, k, v, codebook, keep, scale, block_size, straight_through):
    """Causal VQ attention, block by block with a per-code cache of earlier blocks.

    Works heads-first, ``(batch, heads, block, position, ·)``, so the products are batched
    matrix products without transposes in between.
    """
    batch, length = ops.shape(q)[0], ops.shape(q)[1]
    codes = codebook.shape[1]
    size = chunk_length(length, block_size)
    quantized, one_hot = quantize(k, codebook)
    keep = full_key_weights(keep, batch, length)
    one_hot = one_hot * keep[:, :, None, None]
    if straight_through:
        quantized = quantized + (k - ops.stop_gradient(k))

    def blocks(x):
        return split_chunks(heads_first(x), size, axis=2)

    qb, kb, vb, hot = (blocks(x) for x in (q, quantized, v, one_hot))
    kept = split_chunks(keep, size)[:, None, :, None, :]                  # (b, 1, g, 1, j)
    hot_t = ops.swapaxes(hot, -1, -2)                                     # (b, h, g, c, j)
    counts = exclusive_cumsum(ops.sum(hot, axis=3), axis=2)[:, :, :, None]  # (b, h, g, 1, c)
    sums = exclusive_cumsum(ops.matmul(hot_t, vb), axis=2)                # (b, h, g, c, e)
    codewords = ops.swapaxes(codebook, -1, -2)[None, :, None]             # (1, h, 1, d, c)
    cached = apply_mask(ops.matmul(qb, codewords) * scale
                        + ops.log(ops.maximum(counts, 1.0)), counts > 0)  # (b, h, g, i, c)
    local = ops.matmul(qb, ops.swapaxes(kb, -1, -2)) * scale             # (b, h, g, i, j)
    allowed = ops.logical_and(ops.tril(ops.ones((size, size), "bool")), kept > 0)
    probs = ops.softmax(ops.concatenate([cached, apply_mask(local, allowed)], axis=-1), axis=-1)
    weights = probs[..., :codes] / ops.maximum(counts, 1.0)
    out = ops.matmul(weights, sums) + ops.matmul(probs[..., codes:], vb)  # (b, h, g, i, e)
    if straight_through:
        delta = blocks(k - ops.stop_gradient(k))
        delta_values = exclusive_cumsum(
            ops.einsum("bhgjc,bhgjd,bhgje->bhgcde", hot, delta, vb), axis=2)
        delta_counts = exclusive_cumsum(ops.matmul(hot_t, delta), axis=2)
        weighted_q = ops.einsum("bhgic,bhgid->bhgicd", weights, qb) * scale
        extra = ops.einsum("bhgicd,bhgcde->bhgie", weighted_q, delta_values)
        norm = ops.einsum("bhgicd,bhgcd->bhgi", weighted_q, delta_counts)[..., None]
        out = (out + extra) / (1.0 + norm)
    return heads_first(merge_chunks(out, length, axis=2))


def check_vq_inputs(q, k, v, codebook):
    check_attention_inputs(q, k, v)
    expected = (k.shape[2], None, k.shape[3])
    if len(codebook.shape) != 3 or codebook.shape[0] != expected[0] \
            or codebook.shape[2] != expected[2]:
        raise ValueError(f"`codebook` must have shape (heads={expected[0]}, codes, "
                         f"head_dim={expected[2]}); received shape {tuple(codebook.shape)}")


def vq_attention(q, k, v, codebook, mask=None, causal=False, block_size=None, scale=None,
                 straight_through=False, entropy_scaling=False, scaling_base=512):
    """Softmax attention over nearest-codeword keys, linear in length; ``(batch, q_len, heads,
    d_v)`` in ``v``'s dtype.

    ``codebook`` ``(heads, codes, head_dim)``; ``mask`` a boolean key padding mask
    ``(batch, k_len)`` or ``(batch, 1, 1, k_len)``; ``causal`` (needs ``q_len == k_len``) uses
    blocks of ``block_size`` (default 64); ``scale`` defaults to ``1/sqrt(head_dim)``.
    Keys get no gradient from the ``argmin`` itself; ``straight_through=True`` gives them the
    straight-through estimate (the gradient that softmax attention over ``k̂`` would give
    ``k̂``), at an extra ``O(n·codes·d·d_v)`` cost, for training. ``entropy_scaling``
    multiplies the logits by ``log(n_i)/log(scaling_base)`` as in
    :func:`dot_product_attention`.

    Example:

        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> q, k, v = (rng.normal(size=(2, 6, 2, 4)).astype("float32") for _ in range(3))
        >>> from keraformer.attentions import dot_product_attention, quantize, vq_attention
        >>> codebook = rng.normal(size=(2, 3, 4)).astype("float32")  # (heads, codes, head_dim)
        >>> k_hat, _ = quantize(k, codebook)
        >>> reference = dot_product_attention(q, k_hat, v, causal=True)     # softmax over k̂
        >>> bool(np.allclose(vq_attention(q, k, v, codebook, causal=True, block_size=3), reference,
        ...                  atol=1e-5))
        True
    """
    check_vq_inputs(q, k, v, codebook)
    block_size = 64 if block_size is None else block_size
    check_positive_ints(block_size=block_size)
    if causal and q.shape[1] != k.shape[1]:
        raise ValueError(f"causal VQ attention needs q_len == k_len; received {q.shape[1]} "
                         f"and {k.shape[1]}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    keep = key_padding_weights(mask, k.shape[1], q.shape[0])
    k, v = zero_unseen_keys(mask, k, v)  # 0 · NaN at padding would reach every query
    q32, k32, v32 = (ops.cast(x, "float32") for x in (q, k, v))
    codebook = ops.cast(codebook, "float32")
    if entropy_scaling:
        counts = allowed_key_counts(keep, k.shape[1], causal)
        q32 = q32 * entropy_scale(counts, scaling_base)[:, :, None, None]
    if causal:
        out = vq_attention_causal(q32, k32, v32, codebook, keep, scale, block_size,
                                  straight_through)
    else:
        out = vq_attention_global(q32, k32, v32, codebook, keep, scale, straight_through)
    return ops.cast(out, v.dtype)


@keras.saving.register_keras_serializable(package="keraformer")
class VQAttention(ProjectedHeads, keras.layers.Layer):
    """Multi-head attention with vector-quantised keys (Transformer-VQ), linear in length.

    The projections of ``keraformer.attentions.projection`` (sublayers ``query``, ``key``,
    ``value``, ``output``) around :func:`vq_attention` with a learned codebook of ``codes``
    codewords per head. Training (``training=True``) passes straight-through gradients to the
    keys, adds the commitment loss ``commitment·mean‖k − sg(k̂)‖²`` with ``add_loss`` and
    updates the codebook by exponential-moving-average k-means, as Transformer-VQ and
    VQ-VAE-2 do: the EMA update is the k-means step itself, needs no learning rate, does not
    depend on the optimizer and avoids the dead codes that a gradient-trained codebook gets.
    The codebook is ``codebook_sums / codebook_counts`` (non-trainable weights). Call
    ``layer(query, key=None, value=None, mask=None, causal=False, training=None)``; returns
    ``(batch, q_len, output_dim or dim)``.

    Args:
        heads: number of heads.
        head_size: value size per head.
        codes: codewords per head.
        key_size: query/key (and codeword) size per head (default ``head_size``).
        output_dim: width of the output projection (default: the query width).
        use_bias: whether the projections have biases.
        block_size: positions per block of the causal recurrence.
        commitment: weight of the commitment loss.
        decay: EMA decay of the codebook statistics, in ``[0, 1)``.
        epsilon: Laplace smoothing of the codeword counts.
        rotary: a ``keraformer.positions.RotaryEmbedding`` (or its config) that rotates
            queries and keys before the keys are quantised (see the module docstring).
        entropy_scaling: multiply the logits by ``log(n)/log(scaling_base)``.
        scaling_base: see ``entropy_scaling``.
        kernel_initializer: initializer of the projection kernels.

    Example:

        >>> import numpy as np
        >>> from keraformer.attentions import VQAttention
        >>> layer = VQAttention(heads=2, head_size=8, codes=16, block_size=4)
        >>> x = np.random.default_rng(0).normal(size=(2, 8, 16)).astype("float32")
        >>> # (heads, codes, key_size)
        >>> tuple(layer(x, causal=True).shape), tuple(layer.codebook.shape)
        ((2, 8, 16), (2, 16, 8))
    """

    def __init__(self, heads, head_size, codes=64, key_size=None, output_dim=None,
                 use_bias=True, block_size=64, commitment=1e-4, decay=0.99, epsilon=1e-5,
                 rotary=None, entropy_scaling=False, scaling_base=512,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        check_positive_ints(codes=codes, block_size=block_size)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"`decay` must lie in [0, 1); received {decay!r}")
        self.init_heads(heads, head_size, key_size, output_dim, use_bias, kernel_initializer,
                        rotary)
        self.codes, self.block_size = codes, block_size
        self.commitment, self.decay, self.epsilon = commitment, decay, epsilon
        self.entropy_scaling, self.scaling_base = entropy_scaling, scaling_base

    def build(self, query_shape, key_shape=None, value_shape=None):
        self.build_projections(query_shape, key_shape, value_shape)
        shape = (self.heads, self.codes, self.key_size)
        # float32 statistics, not cast to a mixed policy's float16 (the EMA adds float32)
        self.codebook_sums = self.add_weight(name="codebook_sums", shape=shape,
                                             initializer="random_normal", trainable=False,
                                             dtype="float32", autocast=False)
        self.codebook_counts = self.add_weight(name="codebook_counts", shape=shape[:2],
                                               initializer="ones", trainable=False,
                                               dtype="float32", autocast=False)

    @property
    def codebook(self):
        """Codewords ``(heads, codes, key_size)``: EMA sums over Laplace-smoothed EMA counts."""
        counts = self.codebook_counts
        total = ops.sum(counts, axis=-1, keepdims=True)
        smoothed = (counts + self.epsilon) / (total + self.codes * self.epsilon) * total
        return self.codebook_sums / smoothed[..., None]

    def call(self, query, key=None, value=None, mask=None, causal=False, training=None):
        q, k, v = self.project(query, key, value)
        q, k = self.rotate(q), self.rotate(k)  # before quantisation: see the module docstring
        k, v = zero_unseen_keys(mask, k, v)  # NaN at padding stays out of the codebook too
        codebook = self.codebook
        if training:
            self.add_commitment_loss(k, codebook, mask)
        out = vq_attention(q, k, v, codebook, mask, causal, self.block_size,
                           straight_through=bool(training),
                           entropy_scaling=self.entropy_scaling,
                           scaling_base=self.scaling_base)
        if training:
            self.ema_update(k, codebook, mask)
        return self.merge_heads(out)

    def kept_codes(self, k, codebook, mask):
        """Quantised keys and one-hot codes with padding keys zeroed, float32."""
        quantized, one_hot = quantize(k, codebook)
        keep = full_key_weights(key_padding_weights(mask, k.shape[1], k.shape[0]),
                                ops.shape(k)[0], ops.shape(k)[1])
        return quantized, one_hot * keep[:, :, None, None], keep

    def add_commitment_loss(self, k, codebook, mask):
        k = ops.cast(k, "float32")
        quantized, _, keep = self.kept_codes(ops.stop_gradient(k), codebook, mask)
        error = ops.sum(ops.square(k - ops.stop_gradient(quantized)), axis=(2, 3)) * keep
        self.add_loss(self.commitment * ops.sum(error) / ops.maximum(ops.sum(keep), 1.0))

    def ema_update(self, k, codebook, mask):
        k = ops.stop_gradient(ops.cast(k, "float32"))
        _, one_hot, _ = self.kept_codes(k, codebook, mask)
        counts = ops.sum(one_hot, axis=(0, 1))
        sums = ops.einsum("bnhc,bnhd->hcd", one_hot, k)
        self.codebook_counts.assign(self.decay * self.codebook_counts
                                    + (1.0 - self.decay) * counts)
        self.codebook_sums.assign(self.decay * self.codebook_sums + (1.0 - self.decay) * sums)

    def get_config(self):
        return {**super().get_config(), **self.heads_config(), "codes": self.codes,
                "block_size": self.block_size, "commitment": self.commitment,
                "decay": self.decay, "epsilon": self.epsilon,
                "entropy_scaling": self.entropy_scaling, "scaling_base": self.scaling_base}
