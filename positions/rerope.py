"""ReRoPE and Leaky ReRoPE (Su 2023, "Rectified Rotary Position Embeddings"): RoPE scores at
rectified relative positions, for inference far beyond the training length without training.

RoPE makes the product of the query at position ``m`` and the key at ``n`` depend on
``r = m − n`` only. ReRoPE keeps ``r`` where ``|r| < w`` (``w = window``) and clips it to
``±w`` beyond; Leaky ReRoPE (``leak = k ≥ 1``) compresses it there to ``±(w + (|r| − w)/k)``,
so that ``k = 1`` is RoPE and ``k → ∞`` is ReRoPE. No relative position the model did not
see in training (``< w``) is ever used.

A rectified position is not the difference of two per-token positions, so it is computed
exactly from several ordinary RoPE products, chosen per query-key pair:

- ``|r| < w``: queries at ``m``, keys at ``n`` (plain RoPE);
- ``r ≥ w``: queries at ``w`` and unrotated keys (ReRoPE), or queries at
  ``m/k + w − w/k`` and keys at ``n/k`` (Leaky ReRoPE), whose difference is
  ``w + (r − w)/k``;
- ``r ≤ −w`` (bidirectional only): the same with ``−w``.
"""

from keras import ops

from keraformer.positions.rotary import apply_rotary


def check_rerope_options(window, leak):
    """``window`` an integer >= 1 and ``leak`` ``None`` (ReRoPE) or a number >= 1 (Leaky
    ReRoPE); ``TypeError``/``ValueError`` naming the argument otherwise."""
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"`rerope_window` must be an integer; received {window!r} of type "
                        f"{type(window).__name__}")
    if window < 1:
        raise ValueError(f"`rerope_window` must be >= 1; received {window}")
    if leak is None:
        return
    if isinstance(leak, bool) or not isinstance(leak, (int, float)):
        raise TypeError(f"`rerope_leak` must be a number >= 1 or None (ReRoPE); received "
                        f"{leak!r} of type {type(leak).__name__}")
    if not leak >= 1:
        raise ValueError(f"`rerope_leak` must be >= 1 (1 is plain RoPE; None is ReRoPE's "
                         f"clipping); received {leak!r}")


def products(q, k):
    """``q·k`` ``(batch, heads, q_len, k_len)`` in float32."""
    return ops.einsum("bqhd,bkhd->bhqk", ops.cast(q, "float32"), ops.cast(k, "float32"))


def relative_positions(q_positions, k_positions):
    """``m − n`` shaped to broadcast against ``(batch, heads, q_len, k_len)``."""
    q_positions = ops.cast(q_positions, "float32")
    k_positions = ops.cast(k_positions, "float32")
    if len(q_positions.shape) == 1:
        q_positions = q_positions[None]
    if len(k_positions.shape) == 1:
        k_positions = k_positions[None]
    return (q_positions[:, :, None] - k_positions[:, None, :])[:, None]


def far_products(q, k, q_positions, k_positions, window, leak, rotate):
    """Products at the rectified relative position ``window`` (plus ``(r − window)/leak``)."""
    q_positions = ops.cast(q_positions, "float32")
    if leak is None:
        return products(rotate(q, ops.full_like(q_positions, float(window))), k)
    q_positions = q_positions / leak + (window - window / leak)
    return products(rotate(q, q_positions),
                    rotate(k, ops.cast(k_positions, "float32") / leak))


def rerope_scores(q, k, window, leak=None, q_positions=None, k_positions=None, causal=False,
                  rotate=None):
    """Query-key products ``(batch, heads, q_len, k_len)`` (float32, unscaled) of unrotated
    ``q (batch, q_len, heads, d)`` and ``k (batch, k_len, heads, d)`` at ReRoPE relative
    positions (Leaky ReRoPE with ``leak``); pass them to
    ``keraformer.attentions.dot_product_attention(..., scores=)``.

    ``q_positions`` / ``k_positions``: ``(length,)`` or ``(batch, length)`` (default: keys at
    ``0..k_len−1``, queries at the last ``q_len`` of them, as in cached decoding). ``causal``
    skips the products for keys after the query (they are masked anyway). ``rotate(x,
    positions)`` is the rotary embedding (default :func:`apply_rotary`; a
    ``RotaryEmbedding`` layer keeps its base and scaling).

    Example:

        >>> import numpy as np
        >>> from keraformer.positions import apply_rotary, rerope_scores
        >>> rng = np.random.default_rng(0)
        >>> q, k = (rng.normal(size=(1, 6, 2, 4)).astype("float32") for _ in range(2))
        >>> scores = np.asarray(rerope_scores(q, k, window=3))
        >>> rope = np.einsum("bqhd,bkhd->bhqk", apply_rotary(q, np.arange(6)),
        ...                  apply_rotary(k, np.arange(6)))
        >>> i, j = np.indices((6, 6))
        >>> near = abs(i - j) < 3                       # inside the window ReRoPE is plain RoPE
        >>> same = np.allclose(scores[..., near], np.asarray(rope)[..., near], atol=1e-5)
        >>> scores.shape, bool(same)
        ((1, 2, 6, 6), True)
    """
    check_rerope_options(window, leak)
    rotate = rotate or (lambda x, positions: apply_rotary(x, positions))
    k_len = ops.shape(k)[1]
    if k_positions is None:
        k_positions = ops.arange(k_len, dtype="float32")
    if q_positions is None:
        q_positions = ops.arange(ops.shape(q)[1], dtype="float32") + ops.cast(
            k_len - ops.shape(q)[1], "float32")
    relative = relative_positions(q_positions, k_positions)
    near = products(rotate(q, q_positions), rotate(k, k_positions))
    scores = ops.where(relative >= window,
                       far_products(q, k, q_positions, k_positions, window, leak, rotate), near)
    if causal:
        return scores
    return ops.where(relative <= -window,
                     far_products(q, k, q_positions, k_positions, -window, leak, rotate),
                     scores)
