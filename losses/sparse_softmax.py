"""Sparse softmax: cross-entropy over the top-``k`` logits only.

Su 2021 (SPACES, the extract-then-generate summariser, https://kexue.fm/archives/8046 and
https://kexue.fm/archives/8336): with logits ``s`` and target ``y``, the loss is
``log Σ_{i ∈ top-k(s)} e^{s_i} − s_y``, the softmax cross-entropy restricted to the ``k``
largest logits, so the classes far below the top no longer receive any gradient (a long
tail of a large vocabulary stops being pushed down). Its gradient is ``softmax_k(s) − onehot(y)``
with ``softmax_k`` the softmax over the top-``k`` and zero elsewhere: zero outside the top-``k``
and the target. With ``k`` equal to the number of classes it is the ordinary cross-entropy.
The matching inference activation, :func:`sparse_softmax`, is that ``softmax_k``.
"""

import numbers

import keras
from keras import ops

from keraformer.checks import check_sparse_labels, guard_ids


def check_k(k, classes=None):
    """``k`` as an int: an integer ``>= 1`` and, where the class count is known, at most it."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"`k` must be an integer >= 1; received {k!r} of type "
                        f"{type(k).__name__}")
    if k < 1:
        raise ValueError(f"`k` must be an integer >= 1; received {k}")
    if classes is not None and k > classes:
        raise ValueError(f"`k` must be at most the number of classes {classes} "
                         f"(y_pred.shape[-1]); received {k}")
    return int(k)


def top_k_logsumexp(logits, k):
    """``log Σ_{i ∈ top-k} e^{s_i}`` over the last axis, shape ``logits.shape[:-1]``."""
    return ops.logsumexp(ops.top_k(logits, k, sorted=False)[0], axis=-1)


@keras.saving.register_keras_serializable(package="keraformer")
def sparse_softmax_crossentropy(y_true, y_pred, k):
    """Per-example loss ``log Σ_{i ∈ top-k} e^{s_i} − s_y`` in float32, shape ``y_true.shape``.

    ``y_pred (..., classes)`` are logits (classification ``(batch, classes)``, token-level
    seq2seq ``(batch, length, vocab)``), ``y_true (...)`` integer labels; ``k`` an integer
    in ``[1, classes]``. A label outside ``[0, classes)`` raises eagerly and gives NaN in
    compiled code. A target outside the top-``k`` still counts (the loss is then at least
    the gap between the top logit and its own).

    Example:

        >>> import numpy as np
        >>> from keraformer.losses import sparse_softmax_crossentropy
        >>> logits = np.array([[2.0, 1.0, 0.0, -1.0]], "float32")
        >>> loss = np.asarray(sparse_softmax_crossentropy(np.array([1]), logits, k=2))
        >>> # log(e² + e¹) − 1: the two smallest logits are left out of the normaliser
        >>> reference = np.log(np.exp(2.0) + np.exp(1.0)) - 1.0
        >>> loss.shape, round(float(loss[0]), 4), round(float(reference), 4)
        ((1,), 1.3133, 1.3133)
    """
    y_pred = ops.convert_to_tensor(y_pred)
    k = check_k(k, y_pred.shape[-1])
    y_true = ops.convert_to_tensor(y_true)
    check_sparse_labels(y_true, y_pred)
    labels, valid = guard_ids(y_true, y_pred.shape[-1], "y_true")
    logits = ops.cast(y_pred, "float32")
    target = ops.squeeze(ops.take_along_axis(logits, ops.expand_dims(labels, -1), axis=-1),
                         axis=-1)
    return ops.where(valid, top_k_logsumexp(logits, k) - target, float("nan"))


def sparse_softmax(logits, k):
    """Softmax over the top-``k`` logits of the last axis, 0 elsewhere (float32, shape of
    ``logits``): the probabilities the sparse-softmax loss trains. Logits tied with the
    ``k``-th largest are all kept, so a row may hold more than ``k`` non-zero entries.

    Example:

        >>> import numpy as np
        >>> from keraformer.losses import sparse_softmax
        >>> np.asarray(sparse_softmax(np.array([[2.0, 1.0, 0.0, -1.0]]), k=2)).round(4)
        array([[0.7311, 0.2689, 0.    , 0.    ]], dtype=float32)
    """
    logits = ops.cast(ops.convert_to_tensor(logits), "float32")
    k = check_k(k, logits.shape[-1])
    threshold = ops.min(ops.top_k(logits, k)[0], axis=-1, keepdims=True)
    kept = ops.greater_equal(logits, threshold)
    scores = ops.where(kept, logits, ops.full_like(logits, -1e30))
    return ops.where(kept, ops.softmax(scores, axis=-1), 0.0)


@keras.saving.register_keras_serializable(package="keraformer")
class SparseSoftmaxCrossentropy(keras.losses.Loss):
    """Keras loss of :func:`sparse_softmax_crossentropy`: ``y_pred`` are logits.

    Args:
        k: the number of top logits the softmax runs over (an integer >= 1).
        name: the loss' name, as for every Keras loss.
        reduction: as for every Keras loss; sample weights apply per example (per token
            for seq2seq).
        dtype: as for every Keras loss.

    Example:

        >>> import numpy as np
        >>> from keraformer.losses import SparseSoftmaxCrossentropy
        >>> loss = SparseSoftmaxCrossentropy(k=2)
        >>> logits = np.array([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
        >>> round(float(loss(np.array([1, 0]), logits)), 4)     # mean of 1.3133 and 0.3133
        0.8133
    """

    def __init__(self, k, name="sparse_softmax_crossentropy",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.k = check_k(k)

    def call(self, y_true, y_pred):
        return sparse_softmax_crossentropy(y_true, y_pred, self.k)

    def get_config(self):
        return {**super().get_config(), "k": self.k}


@keras.saving.register_keras_serializable(package="keraformer")
class SparseSoftmax(keras.layers.Layer):
    """Inference activation: :func:`sparse_softmax` of the incoming logits.

    ``(..., classes)`` logits in, probabilities of the same shape out (float32).

    Args:
        k: the number of top logits kept (an integer >= 1).

    Example:

        >>> import numpy as np
        >>> from keraformer.losses import SparseSoftmax
        >>> np.asarray(SparseSoftmax(k=1)(np.array([[0.5, 3.0, 1.0]]))).tolist()
        [[0.0, 1.0, 0.0]]
    """

    def __init__(self, k, **kwargs):
        super().__init__(**kwargs)
        self.k = check_k(k)

    def call(self, logits):
        return sparse_softmax(logits, self.k)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "k": self.k}
