"""Task heads with bert4keras' weights and outputs: GlobalPointer, EfficientGlobalPointer, CRF.

``GlobalPointer`` scores every span ``(start, end)`` of a sequence for each of ``heads`` entity
types as the scaled inner product of a start and an end projection, with rotary positions
(Su et al. 2021, "GlobalPointer", https://kexue.fm/archives/8373);
``EfficientGlobalPointer`` shares the projections between types and adds a per-type start and
end bias (https://kexue.fm/archives/8877). ``ConditionalRandomField`` is a linear-chain CRF
(Lafferty et al. 2001): the layer passes the emission scores through and holds the transition
matrix, and its ``sparse_loss``/``dense_loss`` are the negative log-likelihood of the label path.

Weights have bert4keras 0.11.5's shapes and order, so ``set_weights(bert4keras_layer.
get_weights())`` reproduces its outputs. As in bert4keras, positions outside the Keras mask
(and, with ``tril_mask``, spans that end before they start) are set to ``-inf`` in the outputs:
that is how the losses here, bert4keras-style metrics and ``viterbi_decode`` find them. No
arithmetic is done on those entries (they are selected around), so padded rows give finite
losses and gradients.
"""

import math

import keras
from keras import ops

from keraformer.checks import (check_bools, check_positive_ints, check_shape,
                               check_sparse_labels, guard_ids, guard_values)
from keraformer.positions import apply_rotary


def _feature_size(layer, input_shape, inputs, features, size):
    """The last axis of ``input_shape``, which must be ``(batch, length, features)`` with a
    known size; else a ValueError naming ``layer``'s class, its ``inputs`` and the shape."""
    if len(input_shape) != 3 or input_shape[-1] is None:
        raise ValueError(f"{type(layer).__name__} takes {inputs} of shape (batch, length, "
                         f"{features}) with a known {size}; received shape "
                         f"{tuple(input_shape)}")
    return input_shape[-1]


def checked_mask(mask, batch, length):
    """``mask`` as a boolean ``(batch, length)`` tensor, or a ValueError naming ``mask`` with
    both shapes: a mask of another shape would be broadcast (a ``(batch, 1)`` mask keeps or
    drops whole rows) or fail inside the backend."""
    mask = ops.convert_to_tensor(mask)
    check_shape("mask", mask, (("batch", batch), ("length", length)))
    return ops.cast(mask, "bool")


def mask_spans(logits, mask=None, tril_mask=True):
    """``logits (batch, heads, length, length)`` with ``-inf`` where the start or the end is
    outside ``mask (batch, length)`` and, if ``tril_mask``, where the end precedes the start."""
    keep = None
    if mask is not None:
        mask = checked_mask(mask, logits.shape[0], logits.shape[-1])
        keep = ops.logical_and(mask[:, None, :, None], mask[:, None, None, :])
    if tril_mask:
        positions = ops.arange(ops.shape(logits)[-1])
        upper = ops.greater_equal(positions[None, :], positions[:, None])[None, None]
        keep = upper if keep is None else ops.logical_and(keep, upper)
    if keep is None:
        return logits
    return ops.where(keep, logits, ops.cast(float("-inf"), logits.dtype))


def span_scores(starts, ends, rope=True):
    """``(batch, heads, length, length)`` scores ``<start_m, end_n> / sqrt(head_size)`` of
    ``starts``/``ends (batch, length, heads, head_size)``, after rotary positions if ``rope``."""
    if rope:
        starts, ends = apply_rotary(starts), apply_rotary(ends)
    scale = 1.0 / math.sqrt(starts.shape[-1])
    return ops.einsum("bmhd,bnhd->bhmn", starts, ends) * ops.cast(scale, starts.dtype)


@keras.saving.register_keras_serializable(package="keraformer")
class GlobalPointer(keras.layers.Layer):
    """Span scores ``(batch, heads, length, length)`` from hidden states ``(batch, length, d)``.

    One dense projection to ``heads * 2 * head_size`` gives, per type, a start vector (first
    ``head_size`` features) and an end vector (last ``head_size``); ``RoPE`` rotates both with
    their positions, so the score of span ``(m, n)`` depends on ``n - m``. Entries outside the
    Keras mask of the input (or ``mask=``) and, with ``tril_mask``, below the diagonal are
    ``-inf``; a span scores positive when predicted. Weights: ``kernel (d, heads*2*head_size)``
    and ``bias``, as bert4keras' ``GlobalPointer``.

    Args:
        heads: number of entity types.
        head_size: size of the start and end vectors (even with ``RoPE``).
        RoPE: rotary position embedding of the start and end vectors.
        use_bias: a bias in the projection.
        tril_mask: mask spans whose end precedes their start.
        kernel_initializer: initializer of the projection.

    Example:

        >>> import numpy as np
        >>> from keraformer.models import GlobalPointer
        >>> layer = GlobalPointer(heads=3, head_size=8)                    # 3 entity types
        >>> hidden = np.random.default_rng(0).normal(size=(2, 5, 16)).astype("float32")
        >>> scores = np.asarray(layer(hidden))
        >>> scores.shape, bool(np.isinf(scores[0, 0, 1, 0]))              # end before start: -inf
        ((2, 3, 5, 5), True)
    """

    def __init__(self, heads, head_size, RoPE=True, use_bias=True, tril_mask=True,
                 kernel_initializer="lecun_normal", **kwargs):
        super().__init__(**kwargs)
        check_positive_ints(heads=heads, head_size=head_size)
        check_bools(RoPE=RoPE, use_bias=use_bias, tril_mask=tril_mask)
        if RoPE and head_size % 2:
            raise ValueError(f"`head_size` must be even with RoPE=True (rotary pairs "
                             f"features); received {head_size}")
        self.heads = int(heads)
        self.head_size = int(head_size)
        self.RoPE = bool(RoPE)
        self.use_bias = bool(use_bias)
        self.tril_mask = bool(tril_mask)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.supports_masking = True

    def check_input_shape(self, input_shape):
        """The hidden size; later calls must have it too (Keras names the layer and both
        shapes otherwise)."""
        hidden = _feature_size(self, input_shape, "hidden states", "hidden", "hidden size")
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={-1: hidden})
        return hidden

    def build(self, input_shape):
        hidden = self.check_input_shape(input_shape)
        units = self.heads * self.head_size * 2
        self.kernel = self.add_weight(name="kernel", shape=(hidden, units),
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(units,), initializer="zeros") \
            if self.use_bias else None

    def project(self, x, kernel, bias):
        x = ops.matmul(x, ops.cast(kernel, x.dtype))
        return x + ops.cast(bias, x.dtype) if bias is not None else x

    def call(self, inputs, mask=None):
        x = self.project(inputs, self.kernel, self.bias)
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        x = ops.reshape(x, (batch, length, self.heads, 2 * self.head_size))
        logits = span_scores(x[..., :self.head_size], x[..., self.head_size:], self.RoPE)
        return mask_spans(logits, mask, self.tril_mask)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.heads, input_shape[1], input_shape[1])

    def get_config(self):
        config = super().get_config()
        config.update({
            "heads": self.heads, "head_size": self.head_size, "RoPE": self.RoPE,
            "use_bias": self.use_bias, "tril_mask": self.tril_mask,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)})
        return config


@keras.saving.register_keras_serializable(package="keraformer")
class EfficientGlobalPointer(GlobalPointer):
    """GlobalPointer with start/end vectors shared by all types plus per-type biases.

    ``p = x W_p + b_p (batch, length, 2*head_size)`` gives start vectors (even features) and
    end vectors (odd features); ``q = p W_q + b_q (batch, length, 2*heads)`` gives each type a
    start bias (odd columns) and an end bias (even columns), halved. Score of type ``h`` for
    span ``(m, n)``: ``<s_m, e_n>/sqrt(head_size) + (q[n, 2h] + q[m, 2h+1]) / 2``. Weights:
    ``p_kernel, p_bias, q_kernel, q_bias``, bert4keras' order. Same arguments as
    :class:`GlobalPointer`.

    Example:

        >>> import numpy as np
        >>> from keraformer.models import EfficientGlobalPointer
        >>> layer = EfficientGlobalPointer(heads=3, head_size=8)
        >>> hidden = np.random.default_rng(0).normal(size=(2, 5, 16)).astype("float32")
        >>> tuple(layer(hidden).shape), [w.path.split("/")[-1] for w in layer.weights]
        ((2, 3, 5, 5), ['p_kernel', 'p_bias', 'q_kernel', 'q_bias'])
    """

    def build(self, input_shape):
        hidden = self.check_input_shape(input_shape)
        self.p_kernel = self.add_weight(name="p_kernel", shape=(hidden, 2 * self.head_size),
                                        initializer=self.kernel_initializer)
        self.p_bias = self.add_weight(name="p_bias", shape=(2 * self.head_size,),
                                      initializer="zeros") if self.use_bias else None
        self.q_kernel = self.add_weight(name="q_kernel",
                                        shape=(2 * self.head_size, 2 * self.heads),
                                        initializer=self.kernel_initializer)
        self.q_bias = self.add_weight(name="q_bias", shape=(2 * self.heads,),
                                      initializer="zeros") if self.use_bias else None

    def call(self, inputs, mask=None):
        p = self.project(inputs, self.p_kernel, self.p_bias)
        logits = span_scores(p[..., None, ::2], p[..., None, 1::2], self.RoPE)
        bias = ops.transpose(self.project(p, self.q_kernel, self.q_bias), (0, 2, 1)) / 2
        logits = logits + bias[:, ::2, None, :] + bias[:, 1::2, :, None]
        return mask_spans(logits, mask, self.tril_mask)


def crf_mask(y_pred):
    """``(batch, length)`` bool: positions whose scores are not all ``-inf`` (the CRF's mask)."""
    return ops.all(ops.not_equal(y_pred, float("-inf")), axis=-1)


def crf_log_norm(emissions, transitions, mask):
    """``log Z (batch,)``: log-sum-exp over all label paths of emission plus transition scores.

    The forward recursion ``α_t = logsumexp_i(α_{t-1,i} + T_ij) + x_{t,j}`` keeps ``α`` unchanged
    at masked positions. ``emissions (batch, length, labels)`` float32, zero where masked.
    """
    def step(alpha, inputs):
        x_t, m_t = inputs[:, :-1], inputs[:, -1:] > 0.5
        following = ops.logsumexp(alpha[:, :, None] + transitions[None], axis=1) + x_t
        alpha = ops.where(m_t, following, alpha)
        return alpha, alpha

    # one scanned tensor, the mask as a last channel: keras' TF scan fails on several
    # sequences of unknown length
    xs = ops.concatenate([emissions[:, 1:], ops.cast(mask[:, 1:, None], emissions.dtype)], -1)
    xs = ops.transpose(xs, (1, 0, 2))
    if keras.backend.backend() == "tensorflow":
        # TF's scan is a while loop with no iteration bound, whose gradient XLA cannot
        # compile (jit_compile=True); a bounded while loop compiles and differentiates
        steps = ops.shape(xs)[0]
        _, alpha = ops.while_loop(lambda t, alpha: t < steps,
                                  lambda t, alpha: (t + 1, step(alpha, xs[t])[0]),
                                  (0, emissions[:, 0]), maximum_iterations=steps)
    else:
        alpha, _ = ops.scan(step, emissions[:, 0], xs)
    return ops.logsumexp(alpha, axis=1)


def crf_path_score(y_true, emissions, transitions):
    """Score of the one-hot label paths ``y_true (batch, length, labels)`` (zero where masked):
    emissions of their labels plus transitions between consecutive labels, ``(batch,)``."""
    point = ops.sum(y_true * emissions, axis=(1, 2))
    trans = ops.einsum("bni,ij,bnj->b", y_true[:, :-1], transitions, y_true[:, 1:])
    return point + trans


@keras.saving.register_keras_serializable(package="keraformer")
class ConditionalRandomField(keras.layers.Layer):
    """Linear-chain CRF over emission scores ``(batch, length, labels)``.

    The layer returns its input with every label score ``-inf`` at positions outside the
    Keras mask of the input or the explicit ``mask=`` (bert4keras' output), so the losses and
    ``viterbi_decode`` know the length of each row. ``trans (labels, labels)`` holds the
    transition scores ``trans[i, j]`` for label ``i`` followed by ``j``; with
    ``lr_multiplier`` it is stored divided by it (its updates are scaled up by it), as in
    bert4keras. Compile with ``loss=crf.sparse_loss`` (integer labels) or ``crf.dense_loss``
    (one-hot), and ``metrics=[crf.sparse_accuracy]``; decode with
    ``keraformer.generation.viterbi_decode(scores, crf.trans)``.

    Example:

        >>> import keras, numpy as np
        >>> from keraformer.generation import viterbi_decode
        >>> from keraformer.models import ConditionalRandomField
        >>> crf = ConditionalRandomField()
        >>> inputs = keras.Input((None,), dtype="int32")
        >>> hidden = keras.layers.Embedding(20, 8, mask_zero=True)(inputs)   # 0 is padding
        >>> model = keras.Model(inputs, crf(keras.layers.Dense(4)(hidden)))
        >>> model.compile(optimizer="adam", loss=crf.sparse_loss, metrics=[crf.sparse_accuracy])
        >>> ids = np.array([[3, 5, 7, 0], [2, 4, 0, 0]])
        >>> tags = np.array([[1, 2, 2, 0], [1, 3, 0, 0]])
        >>> _ = model.fit(ids, tags, epochs=1, verbose=0)
        >>> scores = model.predict(ids, verbose=0)                       # -inf at padding
        >>> viterbi_decode(scores, np.asarray(crf.trans)).shape           # -1 at padding
        (2, 4)
    """

    def __init__(self, lr_multiplier=1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(lr_multiplier, bool) or not isinstance(lr_multiplier, (int, float)) \
                or not lr_multiplier > 0 or not math.isfinite(lr_multiplier):
            raise ValueError(f"`lr_multiplier` must be a finite number > 0; received "
                             f"{lr_multiplier!r}")
        self.lr_multiplier = lr_multiplier
        self.supports_masking = True

    def build(self, input_shape):
        labels = _feature_size(self, input_shape, "emission scores", "labels",
                               "number of labels")
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={-1: labels})
        self._trans = self.add_weight(name="trans", shape=(labels, labels),
                                      initializer="glorot_uniform")
        if self.lr_multiplier != 1:
            self._trans.assign(self._trans / self.lr_multiplier)

    @property
    def trans(self):
        """The transition scores ``(labels, labels)`` (the weight times ``lr_multiplier``)."""
        if self.lr_multiplier != 1:
            return self.lr_multiplier * ops.convert_to_tensor(self._trans)
        return ops.convert_to_tensor(self._trans)

    def call(self, inputs, mask=None):
        if mask is None:
            return inputs
        mask = checked_mask(mask, inputs.shape[0], inputs.shape[1])[..., None]
        return ops.where(mask, inputs, ops.cast(float("-inf"), inputs.dtype))

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return input_shape

    def checked_scores(self, y_pred):
        """``y_pred`` (this CRF's output) as float32 ``(batch, length, labels)``, checked."""
        if not self.built:
            raise ValueError("ConditionalRandomField's losses and metrics use its transitions: "
                             "call the layer on emission scores (batch, length, labels) first")
        y_pred = ops.convert_to_tensor(y_pred)
        labels = self._trans.shape[0]
        if len(y_pred.shape) != 3 or y_pred.shape[-1] not in (None, labels):
            raise ValueError(f"`y_pred` must be this CRF's output (batch, length, {labels}); "
                             f"received shape {tuple(y_pred.shape)}")
        return ops.cast(y_pred, "float32")

    def sparse_labels(self, y_true, y_pred, mask):
        """``(labels, valid)``: int32 labels ``(batch, length)`` of ``y_true`` (``(batch,
        length)`` or ``(batch, length, 1)``), 0 at positions outside ``mask``, and ``valid``,
        False where an unmasked label is not an integer in ``[0, labels)`` (eagerly a
        ValueError naming ``y_true``; see ``keraformer.checks.guard_ids``)."""
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == 3 and y_true.shape[-1] == 1:
            y_true = ops.squeeze(y_true, axis=-1)
        check_sparse_labels(y_true, y_pred, scores="y_pred", counted=mask)
        return guard_ids(ops.where(mask, y_true, 0), self._trans.shape[0], "y_true")

    def one_hot_labels(self, y_true, y_pred, mask):
        """``(y_true, valid)``: float32 one-hot labels of ``y_pred``'s shape, zero outside
        ``mask``, and ``valid (batch, length)``, False where an unmasked row is not one-hot
        (eagerly a ValueError naming ``y_true``; see ``keraformer.checks.guard_values``)."""
        y_true = ops.cast(ops.convert_to_tensor(y_true), "float32")
        check_shape("y_true", y_true, tuple(zip(("batch", "length", "labels"), y_pred.shape)))
        y_true = ops.where(mask[..., None], y_true, 0.0)
        binary = ops.all(ops.logical_or(ops.equal(y_true, 0.0), ops.equal(y_true, 1.0)), -1)
        one_hot = ops.logical_and(binary, ops.equal(ops.sum(y_true, axis=-1), 1.0))
        valid = ops.logical_or(one_hot, ops.logical_not(mask))
        return y_true, guard_values(y_true, valid, "y_true",
                                    "one-hot label vectors (a single 1) at unmasked positions")

    def path_loss(self, y_true, valid, y_pred, mask):
        """Negative log-likelihood ``(batch,)`` of the one-hot paths ``y_true`` (zero outside
        ``mask``); NaN for a row with an invalid label (``valid`` False)."""
        emissions = ops.where(mask[..., None], y_pred, 0.0)
        transitions = ops.cast(self.trans, "float32")
        loss = crf_log_norm(emissions, transitions, mask) \
            - crf_path_score(y_true, emissions, transitions)
        return ops.where(ops.all(valid, axis=1), loss, float("nan"))

    def dense_loss(self, y_true, y_pred):
        """Negative log-likelihood ``(batch,)`` of one-hot label paths ``y_true (batch,
        length, labels)``; rows at masked positions are ignored, any other row must be
        one-hot."""
        y_pred = self.checked_scores(y_pred)
        mask = crf_mask(y_pred)
        y_true, valid = self.one_hot_labels(y_true, y_pred, mask)
        return self.path_loss(y_true, valid, y_pred, mask)

    def sparse_loss(self, y_true, y_pred):
        """Negative log-likelihood ``(batch,)`` of integer label paths ``y_true (batch,
        length)`` (or ``(batch, length, 1)``); labels at masked positions are ignored, the
        others must be integers in ``[0, labels)``."""
        y_pred = self.checked_scores(y_pred)
        mask = crf_mask(y_pred)
        labels, valid = self.sparse_labels(y_true, y_pred, mask)
        y_true = ops.one_hot(labels, self._trans.shape[0]) * ops.cast(mask[..., None],
                                                                      "float32")
        return self.path_loss(y_true, valid, y_pred, mask)

    def accuracy(self, labels, valid, y_pred, mask):
        """Share of unmasked positions whose best label is ``labels``; NaN with an invalid
        label anywhere."""
        mask = ops.cast(mask, "float32")
        hits = ops.cast(ops.equal(ops.cast(labels, "int32"),
                                  ops.cast(ops.argmax(y_pred, axis=-1), "int32")), "float32")
        return ops.where(ops.all(valid), ops.sum(hits * mask) / ops.sum(mask), float("nan"))

    def dense_accuracy(self, y_true, y_pred):
        """Per-position accuracy of the best label at each position, over unmasked ones."""
        y_pred = self.checked_scores(y_pred)
        mask = crf_mask(y_pred)
        y_true, valid = self.one_hot_labels(y_true, y_pred, mask)
        return self.accuracy(ops.argmax(y_true, axis=-1), valid, y_pred, mask)

    def sparse_accuracy(self, y_true, y_pred):
        """Per-position accuracy of the best label at each position, over unmasked ones
        (a cheap training metric; ``viterbi_decode`` gives the best path)."""
        y_pred = self.checked_scores(y_pred)
        mask = crf_mask(y_pred)
        labels, valid = self.sparse_labels(y_true, y_pred, mask)
        return self.accuracy(labels, valid, y_pred, mask)

    def get_config(self):
        config = super().get_config()
        config["lr_multiplier"] = self.lr_multiplier
        return config
