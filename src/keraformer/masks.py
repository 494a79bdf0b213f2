"""Attention masks and dtype-safe mask constants.

Every mask here is boolean, ``True`` where a query may attend to a key, shaped to broadcast
against attention logits of shape ``(batch, heads, q_len, k_len)``.
"""

import keras
import numpy as np
from keras import ops


def mask_value(dtype="float32"):
    """A large negative logit for masked positions that stays finite in ``dtype``.

    Adding it to any logit and taking the softmax gives an exact zero weight, and a row whose
    keys are all masked becomes uniform instead of NaN (no ``-inf`` arithmetic).

    Example:

        >>> from keraformer.masks import mask_value
        >>> mask_value("float32"), mask_value("float16")
        (-1000000000.0, -30000.0)
    """
    return -3e4 if str(getattr(dtype, "name", dtype)) == "float16" else -1e9


def padding_mask(token_ids, pad_id=0):
    """Key mask ``(batch, 1, 1, length)`` that is ``False`` at padding tokens.

    Example:

        >>> import numpy as np
        >>> from keraformer.masks import padding_mask
        >>> np.asarray(padding_mask(np.array([[5, 7, 0]]))).tolist()   # (batch, 1, 1, length)
        [[[[True, True, False]]]]
    """
    keep = ops.not_equal(token_ids, pad_id)
    return keep[:, None, None, :]


def real_tokens(token_ids, pad_id=0, keep_first=False):
    """``(batch, length)`` bool, ``True`` where the id is not ``pad_id`` (``keep_first``:
    position 0 counts as real whatever its id, as a decoder's start token)."""
    keep = ops.not_equal(token_ids, pad_id)
    if keep_first:
        keep = ops.concatenate([ops.ones_like(keep[:, :1]), keep[:, 1:]], axis=1)
    return keep


def causal_mask(q_len, k_len=None, offset=0):
    """Lower-triangular ``(1, 1, q_len, k_len)`` mask: query ``i`` sees keys ``j <= i + offset``.

    ``offset`` is the number of keys before the first query (cached decoding).

    Example:

        >>> import numpy as np
        >>> from keraformer.masks import causal_mask
        >>> np.asarray(causal_mask(3))[0, 0].astype(int).tolist()
        [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
        >>> # 3rd step of a cache
        >>> np.asarray(causal_mask(1, 4, offset=2))[0, 0].astype(int).tolist()
        [[1, 1, 1, 0]]
    """
    k_len = q_len if k_len is None else k_len
    rows = ops.arange(q_len)[:, None] + offset
    cols = ops.arange(k_len)[None, :]
    return ops.greater_equal(rows, cols)[None, None]


def window_mask(q_len, k_len=None, window=1, offset=0):
    """Band ``(1, 1, q_len, k_len)`` mask of local attention: query ``i`` (at position
    ``i + offset``) sees key ``j`` when ``|i + offset − j| < window``.

    Combined with :func:`causal_mask` this is the causal window ``0 ≤ i + offset − j < window``;
    ``offset`` is the number of keys before the first query (cached decoding).
    """
    k_len = q_len if k_len is None else k_len
    distance = ops.arange(q_len)[:, None] + offset - ops.arange(k_len)[None, :]
    return ops.less(ops.abs(distance), window)[None, None]


def position_window_mask(q_positions, k_positions, window):
    """Local attention by position: ``(batch or 1, 1, q_len, k_len)``, query at position
    ``m`` sees key at ``n`` when ``|m − n| < window``; positions ``(length,)`` or ``(batch,
    length)`` (cached decoding, where cache columns are not in position order)."""
    q_positions = ops.cast(q_positions, "int32")
    k_positions = ops.cast(k_positions, "int32")
    q_positions = q_positions[None] if len(q_positions.shape) == 1 else q_positions
    k_positions = k_positions[None] if len(k_positions.shape) == 1 else k_positions
    distance = q_positions[:, :, None] - k_positions[:, None, :]
    return ops.less(ops.abs(distance), window)[:, None]


def unilm_mask(segment_ids):
    """UniLM sequence-to-sequence mask ``(batch, 1, length, length)``.

    Tokens of segment 0 (the source) see the whole source; tokens of segment 1 (the target)
    see the source and the target tokens up to themselves. Equivalently, query ``i`` may see key
    ``j`` when ``cumsum(segment)[j] <= cumsum(segment)[i]``.

    Example:

        >>> import numpy as np
        >>> from keraformer.masks import unilm_mask
        >>> segments = np.array([[0, 0, 1, 1]])            # two source tokens, two target tokens
        >>> np.asarray(unilm_mask(segments))[0, 0].astype(int).tolist()
        [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    """
    position = ops.cumsum(ops.cast(segment_ids, "int32"), axis=1)
    keep = ops.less_equal(position[:, None, :], position[:, :, None])
    return keep[:, None]


def combine_masks(*masks):
    """Logical AND of boolean masks, ignoring ``None``; ``None`` when all are ``None``.

    Example:

        >>> import numpy as np
        >>> from keraformer.masks import causal_mask, combine_masks, padding_mask
        >>> mask = combine_masks(padding_mask(np.array([[4, 9, 0]])), causal_mask(3), None)
        >>> np.asarray(mask)[0, 0].astype(int).tolist()
        [[1, 0, 0], [1, 1, 0], [1, 1, 0]]
    """
    result = None
    for mask in masks:
        if mask is None:
            continue
        mask = ops.cast(mask, "bool")
        result = mask if result is None else ops.logical_and(result, mask)
    return result


def apply_mask(logits, mask):
    """Replace logits where ``mask`` is ``False`` by :func:`mask_value` of their dtype.

    Example:

        >>> import numpy as np
        >>> from keraformer.masks import apply_mask
        >>> logits = np.zeros((1, 3), "float32")
        >>> np.asarray(apply_mask(logits, np.array([[True, False, True]]))).tolist()
        [[0.0, -1000000000.0, 0.0]]
    """
    if mask is None:
        return logits
    fill = ops.cast(mask_value(logits.dtype), logits.dtype)
    return ops.where(mask, logits, fill)


def zero_unseen_keys(mask, *tensors):
    """``tensors`` ``(batch, k_len, ...)`` (keys, values) set to 0 at the keys that ``mask``
    hides from every query; ``mask`` is boolean with the keys on its last axis and the batch
    on its first (``(batch, k_len)``, ``(batch, q_len, k_len)``, ``(batch, heads, q_len,
    k_len)``, any axis but the keys of length 1), or ``None`` (nothing changes).

    A masked key gets an exact zero weight, but ``0 · NaN`` is NaN: without this a NaN or
    infinity at a padded position (a NaN ``[PAD]`` embedding row) would reach every real
    position through the weighted sum. Returns one tensor, or a tuple for several."""
    if mask is not None:
        mask = ops.cast(mask, "bool")
        rank = len(mask.shape)
        seen = ops.any(mask, axis=tuple(range(1, rank - 1))) if rank > 2 else mask
        tensors = tuple(ops.where(seen[(slice(None), slice(None)) + (None,) * (len(x.shape) - 2)],
                                  x, ops.zeros_like(x)) for x in tensors)
    return tensors[0] if len(tensors) == 1 else tensors


def count_keys(mask, k_len):
    """Number of keys each query may attend to, shape broadcastable to ``(..., q_len, 1)``."""
    if mask is None:
        return ops.cast(np.array(k_len, "float32"), "float32")
    mask = ops.cast(mask, "float32")
    if mask.shape[-1] == 1 and k_len != 1:
        mask = mask * ops.ones((k_len,), "float32")
    return ops.sum(mask, axis=-1, keepdims=True)


@keras.saving.register_keras_serializable(package="keraformer")
class AttentionMask(keras.layers.Layer):
    """Boolean attention mask from token ids (and segment ids), as a graph layer.

    ``mode="padding"``: ``(batch, 1, 1, length)``, keys that are not ``pad_id``;
    ``"causal"``: padding and causal, ``(batch, 1, length, length)``;
    ``"unilm"``: padding and the UniLM mask of ``segment_ids``. Call ``layer(token_ids)`` or
    ``layer([token_ids, segment_ids])`` for ``"unilm"``.

    Example:

        >>> import numpy as np
        >>> from keraformer.masks import AttentionMask
        >>> token_ids, segment_ids = np.array([[2, 5, 6, 0]]), np.array([[0, 1, 1, 0]])
        >>> mask = AttentionMask("unilm")([token_ids, segment_ids])
        >>> np.asarray(mask)[0, 0].astype(int).tolist()
        [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]]
    """

    MODES = ("padding", "causal", "unilm")

    def __init__(self, mode="padding", pad_id=0, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"`mode` must be one of {self.MODES}; received {mode!r}")
        self.mode, self.pad_id = mode, pad_id

    def call(self, inputs):
        token_ids, segment_ids = inputs if isinstance(inputs, (list, tuple)) else (inputs, None)
        mask = padding_mask(token_ids, self.pad_id)
        if self.mode == "causal":
            mask = ops.logical_and(mask, causal_mask(ops.shape(token_ids)[1]))
        elif self.mode == "unilm":
            if segment_ids is None:
                raise ValueError("mode='unilm' needs [token_ids, segment_ids]; received "
                                 "token_ids alone")
            mask = ops.logical_and(mask, unilm_mask(segment_ids))
        return mask

    def compute_output_spec(self, inputs):
        token_ids = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        length = token_ids.shape[1]
        rows = 1 if self.mode == "padding" else length
        return keras.KerasTensor((token_ids.shape[0], 1, rows, length), dtype="bool")

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "pad_id": self.pad_id}


@keras.saving.register_keras_serializable(package="keraformer")
class OutputMask(keras.layers.Layer):
    """Passes ``x`` through and attaches ``token_ids != pad_id`` as its Keras mask.

    Call ``layer([x, token_ids])`` with ``x (batch, length, ...)`` and ``token_ids (batch,
    length)``; the output is ``x`` with the boolean Keras mask ``(batch, length)``, so that
    mask-aware layers after a builder's output (pooling, RNNs, a CRF, Keras' masked losses)
    skip padding. ``keep_first=True`` keeps position 0 whatever its id (a decoder's start
    token, which T5 writes as the padding id).
    """

    def __init__(self, pad_id=0, keep_first=False, **kwargs):
        super().__init__(**kwargs)
        self.pad_id, self.keep_first = pad_id, keep_first
        self.supports_masking = True

    def call(self, inputs):
        return inputs[0]

    def compute_mask(self, inputs, previous_mask=None):
        return real_tokens(inputs[1], self.pad_id, self.keep_first)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(inputs[0].shape, dtype=inputs[0].dtype)

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id, "keep_first": self.keep_first}
