"""Multi-label categorical cross-entropy and its GlobalPointer form.

Su 2020, https://kexue.fm/archives/7359 (soft labels: https://kexue.fm/archives/9064): with
scores ``s`` (any real, no sigmoid) and targets ``y`` in ``[0, 1]``, the loss
``log(1 + Σ_i (1-y_i) e^{s_i}) + log(1 + Σ_i y_i e^{-s_i})`` pushes every target class above 0
and every other class below 0, so predictions are the classes scoring > 0. Entries whose
score is ``-inf`` (GlobalPointer's masked spans) take no part. Equal to bert4keras 0.11.5's
``multilabel_categorical_crossentropy`` and its examples' ``global_pointer_crossentropy``.
"""

import keras
from keras import ops

LEFT_OUT = -1e30  # log-weight of a term that takes no part (finite: no -inf arithmetic)


def log_weights(weights):
    """``log(weights)`` with ``LEFT_OUT`` where a weight is 0 (float32)."""
    positive = ops.greater(weights, 0.0)
    return ops.where(positive, ops.log(ops.where(positive, weights, 1.0)), LEFT_OUT)


@keras.saving.register_keras_serializable(package="keraformer")
def multilabel_categorical_crossentropy(y_true, y_pred):
    """Loss ``(...)`` of scores ``y_pred (..., classes)`` against targets ``y_true`` of the same
    shape (1 for target classes, 0 otherwise, or probabilities), computed in float32."""
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    if len(y_true.shape) != len(y_pred.shape):
        raise ValueError(f"`y_true` must have the shape of `y_pred` {tuple(y_pred.shape)}; "
                         f"received shape {tuple(y_true.shape)}")
    valid = ops.not_equal(y_pred, float("-inf"))
    scores = ops.where(valid, y_pred, 0.0)
    negatives = ops.where(valid, scores + log_weights(1.0 - y_true), LEFT_OUT)
    positives = ops.where(valid, -scores + log_weights(y_true), LEFT_OUT)
    zeros = ops.zeros_like(y_pred[..., :1])
    return ops.logsumexp(ops.concatenate([negatives, zeros], axis=-1), axis=-1) \
        + ops.logsumexp(ops.concatenate([positives, zeros], axis=-1), axis=-1)


@keras.saving.register_keras_serializable(package="keraformer")
def global_pointer_crossentropy(y_true, y_pred):
    """Per-example loss ``(batch,)`` of GlobalPointer scores ``(batch, heads, length, length)``:
    the multi-label cross-entropy of each type's ``length²`` spans, averaged over types (its
    batch mean is bert4keras' scalar ``global_pointer_crossentropy``)."""
    y_pred = ops.convert_to_tensor(y_pred)
    if len(y_pred.shape) != 4:
        raise ValueError(f"`y_pred` must be GlobalPointer scores (batch, heads, length, "
                         f"length); received shape {tuple(y_pred.shape)}")
    shape = ops.shape(y_pred)
    flat_pred = ops.reshape(y_pred, (shape[0], shape[1], -1))
    flat_true = ops.reshape(ops.convert_to_tensor(y_true), (shape[0], shape[1], -1))
    return ops.mean(multilabel_categorical_crossentropy(flat_true, flat_pred), axis=-1)
