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

from keraformer.checks import check_shape, guard_values

LEFT_OUT = -1e30  # log-weight of a term that takes no part (finite: no -inf arithmetic)


def log_weights(weights):
    """``log(weights)`` with ``LEFT_OUT`` where a weight is 0 (float32)."""
    positive = ops.greater(weights, 0.0)
    return ops.where(positive, ops.log(ops.where(positive, weights, 1.0)), LEFT_OUT)


def checked_targets(y_true, y_pred):
    """``(y_true, valid)``: the targets as float32, which must have ``y_pred``'s shape (a
    ValueError naming ``y_true`` otherwise: no broadcasting), and ``valid (...)``, False for a
    row (last axis) holding a target outside ``[0, 1]`` or NaN (eagerly a ValueError naming
    ``y_true``; see ``keraformer.checks.guard_values``)."""
    y_true = ops.cast(ops.convert_to_tensor(y_true), "float32")
    check_shape("y_true", y_true, tuple((f"y_pred.shape[{axis}]", size)
                                        for axis, size in enumerate(y_pred.shape)))
    in_range = ops.logical_and(ops.greater_equal(y_true, 0.0), ops.less_equal(y_true, 1.0))
    in_range = guard_values(y_true, in_range, "y_true", "targets in [0, 1] (1 for a target "
                            "class, 0 otherwise, or a probability)")
    return y_true, ops.all(in_range, axis=-1)


@keras.saving.register_keras_serializable(package="keraformer")
def multilabel_categorical_crossentropy(y_true, y_pred):
    """Loss ``(...)`` of scores ``y_pred (..., classes)`` against targets ``y_true`` of the same
    shape (1 for target classes, 0 otherwise, or probabilities), computed in float32. A
    target outside ``[0, 1]`` raises eagerly and makes its row's loss NaN in compiled code.

    Example:

        >>> import numpy as np
        >>> from keraformer.losses import multilabel_categorical_crossentropy
        >>> y_true = np.array([[1.0, 0.0, 0.0]])
        >>> y_pred = np.array([[0.0, 0.0, 0.0]], "float32")
        >>> # log 3 + log 2
        >>> np.round(np.asarray(multilabel_categorical_crossentropy(y_true, y_pred)), 4)
        array([1.7918], dtype=float32)
    """
    y_pred = ops.cast(y_pred, "float32")
    y_true, rows = checked_targets(y_true, y_pred)
    valid = ops.not_equal(y_pred, float("-inf"))
    scores = ops.where(valid, y_pred, 0.0)
    negatives = ops.where(valid, scores + log_weights(1.0 - y_true), LEFT_OUT)
    positives = ops.where(valid, -scores + log_weights(y_true), LEFT_OUT)
    zeros = ops.zeros_like(y_pred[..., :1])
    loss = ops.logsumexp(ops.concatenate([negatives, zeros], axis=-1), axis=-1) \
        + ops.logsumexp(ops.concatenate([positives, zeros], axis=-1), axis=-1)
    return ops.where(rows, loss, float("nan"))


@keras.saving.register_keras_serializable(package="keraformer")
def global_pointer_crossentropy(y_true, y_pred):
    """Per-example loss ``(batch,)`` of GlobalPointer scores ``(batch, heads, length, length)``:
    the multi-label cross-entropy of each type's ``length²`` spans, averaged over types (its
    batch mean is bert4keras' scalar ``global_pointer_crossentropy``). ``y_true`` has the
    shape of ``y_pred``; an example with a target outside ``[0, 1]`` raises eagerly and has
    a NaN loss in compiled code.

    Example:

        >>> import numpy as np
        >>> from keraformer.losses import global_pointer_crossentropy
        >>> scores = np.zeros((1, 2, 3, 3), "float32")      # (batch, heads, length, length)
        >>> targets = np.zeros((1, 2, 3, 3), "float32")
        >>> targets[0, 0, 0, 1] = 1.0                       # type 0 has the span 0..1
        >>> tuple(global_pointer_crossentropy(targets, scores).shape)
        (1,)
    """
    y_pred = ops.convert_to_tensor(y_pred)
    if len(y_pred.shape) != 4:
        raise ValueError(f"`y_pred` must be GlobalPointer scores (batch, heads, length, "
                         f"length); received shape {tuple(y_pred.shape)}")
    y_true = ops.convert_to_tensor(y_true)
    check_shape("y_true", y_true, tuple(zip(("batch", "heads", "length", "length"),
                                            y_pred.shape)))
    shape = ops.shape(y_pred)
    flat_pred = ops.reshape(y_pred, (shape[0], shape[1], -1))
    flat_true = ops.reshape(y_true, (shape[0], shape[1], -1))
    return ops.mean(multilabel_categorical_crossentropy(flat_true, flat_pred), axis=-1)
