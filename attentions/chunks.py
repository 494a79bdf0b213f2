"""What the linear-time attentions (linear, VQ, GAU's mixed chunks) share: splitting the length
into chunks, prefix sums over chunks, and key padding as 0/1 weights.

Each of them is exact attention inside a chunk of positions plus a summary (a state, per-code
sums) of the other chunks, so they pad the length to a multiple of the chunk size, reshape it
into ``(chunks, size)``, and cut the padding off the result.
"""

from keras import ops


def chunk_length(length, chunk_size):
    """The chunk size to use: ``chunk_size``, or the whole length when it is shorter and
    known (no padding for short inputs)."""
    return min(chunk_size, length) if isinstance(length, int) else chunk_size


def pad_to_multiple(x, size, axis=1):
    """Zero-pad ``axis`` of ``x`` up to a multiple of ``size``."""
    length = ops.shape(x)[axis]
    extra = (size - length % size) % size
    widths = [[0, 0] for _ in x.shape]
    widths[axis] = [0, extra]
    return ops.pad(x, widths)


def split_chunks(x, size, axis=1):
    """Pad ``axis`` of ``x`` to a multiple of ``size`` and split it into ``(chunks, size)``."""
    x = pad_to_multiple(x, size, axis)
    shape = tuple(ops.shape(x))
    return ops.reshape(x, shape[:axis] + (-1, size) + shape[axis + 1:])


def merge_chunks(x, length, axis=1):
    """Inverse of :func:`split_chunks`: join axes ``axis`` and ``axis + 1`` and keep the
    first ``length`` positions."""
    shape = tuple(ops.shape(x))
    x = ops.reshape(x, shape[:axis] + (-1,) + shape[axis + 2:])
    return x[(slice(None),) * axis + (slice(None, length),)]


def exclusive_cumsum(x, axis=1):
    """``Σ_{t' < t} x_{t'}`` along ``axis`` (zero at the first position)."""
    widths = [[0, 0] for _ in x.shape]
    widths[axis] = [1, 0]
    summed = ops.cumsum(ops.pad(x, widths), axis=axis)
    return summed[(slice(None),) * (axis % len(x.shape)) + (slice(None, -1),)]


def heads_first(x):
    """``(batch, length, heads, d)`` ↔ ``(batch, heads, length, d)`` (its own inverse)."""
    return ops.transpose(x, (0, 2, 1, 3))


def key_padding_weights(mask, k_len, batch=None):
    """Boolean key padding mask ``(batch, k_len)`` or ``(batch, 1, 1, k_len)`` → float32
    ``(batch, k_len)`` (1 keeps a key, 0 drops it); ``None`` stays ``None``. Its batch axis
    may be 1 (one mask for every row)."""
    if mask is None:
        return None
    shape = tuple(mask.shape)
    is_2d = len(shape) == 2
    is_4d = len(shape) == 4 and shape[1] == 1 and shape[2] == 1

    def fits(got, size):
        return got is None or size is None or got == size

    if not (is_2d or is_4d) or not fits(shape[-1], k_len) or not (
            shape[0] == 1 or fits(shape[0], batch)):
        raise ValueError(f"`mask` must be a key padding mask of shape (batch={batch}, "
                         f"k_len={k_len}) or (batch, 1, 1, k_len); received shape {shape}")
    mask = ops.cast(mask, "float32")
    return mask if is_2d else mask[:, 0, 0, :]


def full_key_weights(keep, batch, length):
    """``keep`` from :func:`key_padding_weights` as a float32 ``(batch, length)`` tensor
    (ones where it is ``None``; a batch axis of 1 broadcast)."""
    return ops.ones((batch, length), "float32") * (1.0 if keep is None else keep)


def allowed_key_counts(keep, k_len, causal):
    """Keys each query may attend to, float32 ``(batch|1, q_len|1)``: the unmasked keys, or
    the unmasked keys up to the query when ``causal`` (``q_len == k_len``)."""
    weights = ops.ones((1, k_len), "float32") if keep is None else keep
    return ops.cumsum(weights, axis=1) if causal else ops.sum(weights, axis=1, keepdims=True)
