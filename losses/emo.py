"""EMO: earth mover distance optimisation for auto-regressive language models.

Ren et al. 2023, "EMO: Earth Mover Distance Optimization for Auto-regressive Language
Modeling". With ``E`` the row-L2-normalised cost embedding matrix (a frozen copy of the output
embeddings), the transport cost from the one-hot target ``y`` to the model distribution
``p = softmax(logits)`` is ``emo = 1 − ⟨E[y], p·E⟩`` (one minus the expected cosine similarity
between the target token and the predicted tokens). Training uses, per token,
``0.5·(CE + stop_gradient(CE / emo)·emo)``: the EMO gradient rescaled to the size of the
cross-entropy gradient, added to cross-entropy.
"""

import keras
import numpy as np
from keras import ops

from keraformer.checks import check_broadcastable, check_sparse_labels, guard_ids

MODES = ("combined", "emo")


def check_mode(mode):
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}; received {mode!r}")
    return mode


def check_ignore_index(ignore_index):
    """``ignore_index`` must be ``None`` or an integer label (not a bool or a float)."""
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(
            ignore_index, (int, np.integer))):
        raise TypeError(f"`ignore_index` must be None or an integer label; received "
                        f"{ignore_index!r} of type {type(ignore_index).__name__}")
    return None if ignore_index is None else int(ignore_index)


def check_cost_embeddings(cost_embeddings):
    """A finite float32 ``(vocab, dim)`` NumPy matrix, or ``TypeError``/``ValueError``."""
    if isinstance(cost_embeddings, keras.KerasTensor):
        raise TypeError("`cost_embeddings` must hold concrete values (NumPy array, tensor or "
                        "variable); received a symbolic KerasTensor")
    if cost_embeddings is None or isinstance(cost_embeddings, (str, bytes)):
        raise TypeError(f"`cost_embeddings` must be a numeric (vocab, dim) matrix; received "
                        f"{cost_embeddings!r}")
    try:
        cost = np.asarray(ops.convert_to_numpy(cost_embeddings), dtype="float32")
    except (TypeError, ValueError) as error:
        raise TypeError(f"`cost_embeddings` must be a numeric (vocab, dim) matrix; received "
                        f"{type(cost_embeddings).__name__} ({error})") from None
    if cost.ndim != 2 or 0 in cost.shape:
        raise ValueError(f"`cost_embeddings` must be a non-empty (vocab, dim) matrix; "
                         f"received shape {cost.shape}")
    if not np.all(np.isfinite(cost)):
        raise ValueError(f"`cost_embeddings` must be finite; received "
                         f"{int(np.sum(~np.isfinite(cost)))} NaN or infinite entries")
    return cost


def normalized_cost_embeddings(cost_embeddings):
    """Rows of ``(vocab, dim)`` scaled to unit L2 norm, in float32 and without gradient."""
    cost = ops.cast(ops.stop_gradient(ops.convert_to_tensor(cost_embeddings)), "float32")
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(cost), axis=-1, keepdims=True), 1e-24))
    return cost / norm


def token_cross_entropy(labels, log_probs):
    """``−log p[y]`` per token: labels ``(...)`` int, log-probabilities ``(..., vocab)``."""
    picked = ops.take_along_axis(log_probs, ops.expand_dims(labels, -1), axis=-1)
    return -ops.squeeze(picked, axis=-1)


def emo_distance(labels, probs, cost):
    """``1 − ⟨cost[y], probs·cost⟩`` per token, shape ``labels.shape``.

    ``labels (...)`` int, ``probs (..., vocab)`` float32, ``cost (vocab, dim)`` unit rows.

    Example:

        >>> import numpy as np
        >>> from keraformer.losses import emo_distance
        >>> cost = np.eye(3, dtype="float32")                # orthogonal unit rows
        >>> probs = np.array([[0.5, 0.5, 0.0]], "float32")
        >>> np.round(np.asarray(emo_distance(np.array([0]), probs, cost)), 4)   # 1 - 0.5
        array([0.5], dtype=float32)
    """
    expected_embedding = ops.matmul(probs, cost)
    target_embedding = ops.take(cost, labels, axis=0)
    return 1.0 - ops.sum(target_embedding * expected_embedding, axis=-1)


def token_weights(y_true, mask=None, ignore_index=None, sample_weight=None):
    """Per-token weight ``mask · [y != ignore_index] · sample_weight`` and the token count.

    The count (the denominator of the mean) counts unmasked, non-ignored tokens; sample weights
    of shape ``(batch,)`` or any prefix of the label shape broadcast over the trailing axes.
    """
    axes = tuple((f"y_true.shape[{i}]", size) for i, size in enumerate(y_true.shape))
    keep = ops.ones(ops.shape(y_true), "float32")
    if mask is not None:
        mask = ops.convert_to_tensor(mask)
        check_broadcastable("mask", mask, axes)
        keep = keep * ops.cast(mask, "float32")
    if ignore_index is not None:
        keep = keep * ops.cast(ops.not_equal(y_true, ignore_index), "float32")
    count = ops.sum(keep)
    if sample_weight is not None:
        weight = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
        check_broadcastable("sample_weight", weight, axes[:len(weight.shape)])
        while len(weight.shape) < len(keep.shape):
            weight = ops.expand_dims(weight, -1)
        keep = keep * weight
    return keep, count


def emo_token_losses(y_true, logits, cost_embeddings, mode="combined", ignore_index=None):
    """Per-token EMO losses ``(...)`` for labels ``(...)`` and logits ``(..., vocab)``.

    ``mode="combined"`` gives ``0.5·(CE + stop_gradient(CE/emo)·emo)``, ``"emo"`` the pure
    transport cost ``emo``. Ignored labels are replaced by 0 (their loss is later weighted 0).
    A label outside ``[0, vocab)`` raises eagerly and gives a NaN loss in a compiled graph.

    Example:

        >>> import numpy as np
        >>> from keraformer.losses import emo_token_losses
        >>> logits = np.log(np.array([[0.5, 0.5, 0.0001]], "float32"))
        >>> cost = np.eye(3, dtype="float32")
        >>> np.round(np.asarray(emo_token_losses(np.array([0]), logits, cost, mode="emo")), 3)
        array([0.5], dtype=float32)
    """
    check_mode(mode)
    classes = logits.shape[-1] if logits.shape[-1] is not None else ops.shape(logits)[-1]
    labels, valid = guard_ids(y_true, classes, "y_true", ignore_index)
    log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    emo = emo_distance(labels, ops.exp(log_probs), normalized_cost_embeddings(cost_embeddings))
    if mode == "emo":
        losses = emo
    else:
        ce = token_cross_entropy(labels, log_probs)
        ratio = ops.stop_gradient(ce / ops.maximum(emo, 1e-12))
        losses = 0.5 * (ce + ratio * emo)
    return ops.where(valid, losses, float("nan"))


def emo_loss(y_true, logits, cost_embeddings, mask=None, ignore_index=None,
             sample_weight=None, mode="combined"):
    """EMO training loss averaged over the unmasked tokens (a float32 scalar).

    ``y_true (...)`` integer labels, ``logits (..., vocab)`` of any rank, ``cost_embeddings
    (vocab, dim)`` (the output embeddings; rows are L2-normalised here and get no gradient).
    ``mask (...)`` (``True``/1 = counted) and ``ignore_index`` exclude tokens; ``sample_weight``
    scales each token's term. ``mode="combined"`` (default) is ``0.5·(CE + sg(CE/emo)·emo)``,
    ``"emo"`` the pure ``emo = 1 − ⟨E[y], softmax(logits)·E⟩``.

    Example:

        >>> import numpy as np
        >>> from keraformer.losses import emo_loss
        >>> rng = np.random.default_rng(0)
        >>> logits = rng.normal(size=(2, 4, 10)).astype("float32")   # (batch, length, vocab)
        >>> labels = rng.integers(0, 10, (2, 4))
        >>> embeddings = rng.normal(size=(10, 8)).astype("float32")  # the output embeddings
        >>> loss = emo_loss(labels, logits, embeddings, mask=np.array([[1, 1, 1, 0], [1, 1, 0, 0]]))
        >>> tuple(loss.shape), bool(np.asarray(loss) > 0)
        ((), True)
    """
    check_mode(mode)
    ignore_index = check_ignore_index(ignore_index)
    if not hasattr(cost_embeddings, "shape"):
        cost_embeddings = check_cost_embeddings(cost_embeddings)
    elif len(cost_embeddings.shape) != 2:
        raise ValueError(f"`cost_embeddings` must be a (vocab, dim) matrix; received shape "
                         f"{tuple(cost_embeddings.shape)}")
    y_true, logits = ops.convert_to_tensor(y_true), ops.convert_to_tensor(logits)
    check_sparse_labels(y_true, logits, ignore_index)
    vocab = cost_embeddings.shape[0]
    if logits.shape[-1] is not None and vocab is not None and logits.shape[-1] != vocab:
        raise ValueError(f"`cost_embeddings` must have one row per vocabulary entry "
                         f"({logits.shape[-1]} = logits.shape[-1]); received shape "
                         f"{tuple(cost_embeddings.shape)}")
    losses = emo_token_losses(y_true, logits, cost_embeddings, mode, ignore_index)
    weights, count = token_weights(y_true, mask, ignore_index, sample_weight)
    return ops.sum(losses * weights) / ops.maximum(count, 1.0)


@keras.saving.register_keras_serializable(package="keraformer")
class EMOLoss(keras.losses.Loss):
    """Keras loss wrapper of :func:`emo_loss` for ``model.compile``.

    ``cost_embeddings (vocab, dim)``: a frozen copy of the output embedding matrix (kept as a
    NumPy array and stored in the config). ``y_pred`` are logits ``(..., vocab)``, ``y_true``
    sparse labels ``(...)``. The result is the mean over the tokens whose label is not
    ``ignore_index`` (use it for padding), each scaled by ``sample_weight``, cast to ``dtype``.
    That mean is the only reduction: ``reduction`` must be ``"sum_over_batch_size"`` (the
    Keras default, kept for compatibility); any other value is refused.

    Example:

        >>> import keras, numpy as np
        >>> from keraformer.losses import EMOLoss
        >>> embeddings = np.random.default_rng(0).normal(size=(10, 8)).astype("float32")
        >>> model = keras.Sequential([keras.Input((4,), dtype="int32"),
        ...                           keras.layers.Embedding(10, 8), keras.layers.Dense(10)])
        >>> model.compile(optimizer="adam", loss=EMOLoss(embeddings, ignore_index=0))
        >>> ids = np.random.default_rng(1).integers(1, 10, (8, 4))
        >>> history = model.fit(ids, ids, epochs=1, verbose=0)
        >>> sorted(history.history)
        ['loss']
    """

    def __init__(self, cost_embeddings, mode="combined", ignore_index=None,
                 name="emo_loss", reduction="sum_over_batch_size", dtype=None):
        if reduction != "sum_over_batch_size":
            raise ValueError(f"`reduction` must be 'sum_over_batch_size' (EMOLoss always "
                             f"averages over the counted tokens); received {reduction!r}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.cost_embeddings = check_cost_embeddings(cost_embeddings)
        self.mode, self.ignore_index = check_mode(mode), check_ignore_index(ignore_index)

    def __call__(self, y_true, y_pred, sample_weight=None):
        loss = emo_loss(y_true, y_pred, self.cost_embeddings, ignore_index=self.ignore_index,
                        sample_weight=sample_weight, mode=self.mode)
        return ops.cast(loss, self.dtype)

    def call(self, y_true, y_pred):
        return emo_token_losses(y_true, y_pred, self.cost_embeddings, self.mode,
                                self.ignore_index)

    def get_config(self):
        return {**super().get_config(), "cost_embeddings": self.cost_embeddings.tolist(),
                "mode": self.mode, "ignore_index": self.ignore_index}
