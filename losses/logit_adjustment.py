"""Logit adjustment for long-tailed classification.

Menon et al. 2021, "Long-tail learning via logit adjustment". With class priors ``π``, the
logit-adjusted loss is the softmax cross-entropy of ``logits + τ·log π``: rare classes must win
by a larger margin during training, so the trained logits are balanced. The post-hoc variant
trains with plain cross-entropy and predicts with ``argmax(logits − τ·log π)``. Both target the
balanced error (the mean of per-class errors).
"""

import keras
import numpy as np
from keras import ops

from keraformer.checks import check_sparse_labels, guard_ids


def class_log_priors(class_priors, num_classes=None):
    """``log`` of the normalised priors, a float32 NumPy vector ``(num_classes,)``.

    ``class_priors`` are counts or probabilities, one per class; they must be finite and
    strictly positive (a zero prior would need an infinite adjustment).
    """
    if isinstance(class_priors, keras.KerasTensor):
        raise TypeError("`class_priors` must hold concrete values (list, NumPy array or eager "
                        "tensor); received a symbolic KerasTensor")
    priors = np.asarray(ops.convert_to_numpy(class_priors), dtype="float64")
    if priors.ndim != 1 or priors.size < 2:
        raise ValueError(f"`class_priors` must be a vector with one entry per class (at least "
                         f"2); received shape {priors.shape}")
    if not np.all(np.isfinite(priors)) or np.any(priors <= 0):
        raise ValueError(f"`class_priors` must be finite and strictly positive counts or "
                         f"probabilities; received {priors.tolist()}")
    if num_classes is not None and priors.size != num_classes:
        raise ValueError(f"`class_priors` must have one entry per class ({num_classes} = "
                         f"logits.shape[-1]); received {priors.size} entries")
    return np.log(priors / priors.sum()).astype("float32")


def check_tau(tau):
    """``tau`` must be a finite, non-negative number (not a bool)."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.floating, np.integer)):
        raise TypeError(f"`tau` must be a finite number >= 0; received {tau!r} of type "
                        f"{type(tau).__name__}")
    if not np.isfinite(tau) or tau < 0:
        raise ValueError(f"`tau` must be a finite number >= 0; received {tau!r}")
    return float(tau)


def adjust_logits(logits, class_priors, tau=1.0):
    """Post-hoc correction ``logits − τ·log π`` for balanced prediction, shape unchanged.

    ``logits (..., num_classes)``; ``class_priors (num_classes,)`` counts or probabilities.

    Example:

        >>> import numpy as np
        >>> from keraformer.losses import adjust_logits
        >>> logits = np.zeros((1, 2), "float32")
        >>> # -log(0.9), -log(0.1)
        >>> np.round(np.asarray(adjust_logits(logits, class_priors=[900, 100])), 4)
        array([[0.1054, 2.3026]], dtype=float32)
    """
    log_priors = class_log_priors(class_priors, logits.shape[-1])
    return ops.cast(logits, "float32") - check_tau(tau) * log_priors


def logit_adjusted_loss(y_true, logits, class_priors, tau=1.0):
    """Per-example ``CE(softmax(logits + τ·log π), y)``, shape ``y_true.shape``, float32.

    ``y_true (...)`` sparse integer labels, ``logits (..., num_classes)``, ``class_priors
    (num_classes,)`` counts or probabilities. With uniform priors this is plain sparse CE.
    A label outside ``[0, num_classes)`` raises eagerly and gives NaN in a compiled graph.

    Example:

        >>> import numpy as np
        >>> from keraformer.losses import logit_adjusted_loss
        >>> logits = np.zeros((2, 2), "float32")
        >>> loss = logit_adjusted_loss(np.array([0, 1]), logits, class_priors=[0.9, 0.1])
        >>> np.round(np.asarray(loss), 4)                   # -log(0.9), -log(0.1)
        array([0.1054, 2.3026], dtype=float32)
    """
    logits = ops.convert_to_tensor(logits)
    log_priors = class_log_priors(class_priors, logits.shape[-1])
    y_true = ops.convert_to_tensor(y_true)
    check_sparse_labels(y_true, logits)
    labels, valid = guard_ids(y_true, log_priors.size, "y_true")
    adjusted = ops.cast(logits, "float32") + check_tau(tau) * log_priors
    log_probs = ops.log_softmax(adjusted, axis=-1)
    picked = ops.take_along_axis(log_probs, ops.expand_dims(labels, -1), axis=-1)
    return ops.where(valid, -ops.squeeze(picked, axis=-1), float("nan"))


@keras.saving.register_keras_serializable(package="keraformer")
class LogitAdjustedLoss(keras.losses.Loss):
    """Keras loss of :func:`logit_adjusted_loss`: ``y_pred`` are logits ``(..., classes)``.

    ``class_priors`` (counts or probabilities) are validated here and stored in the config;
    the usual Keras ``reduction`` and ``sample_weight`` apply to the per-example losses.

    Example:

        >>> import keras, numpy as np
        >>> from keraformer.losses import LogitAdjustedLoss
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> model.compile(optimizer="sgd", loss=LogitAdjustedLoss(class_priors=[900, 100]))
        >>> x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
        >>> history = model.fit(x, (x[:, 0] > 1).astype("int32"), epochs=1, verbose=0)
        >>> len(history.history["loss"])
        1
    """

    def __init__(self, class_priors, tau=1.0, name="logit_adjusted_loss",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        class_log_priors(class_priors)
        self.class_priors = np.asarray(ops.convert_to_numpy(class_priors), "float64").tolist()
        self.tau = check_tau(tau)

    def call(self, y_true, y_pred):
        return logit_adjusted_loss(y_true, y_pred, self.class_priors, self.tau)

    def get_config(self):
        return {**super().get_config(), "class_priors": self.class_priors, "tau": self.tau}
