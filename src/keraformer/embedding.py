"""Token embedding that can also serve as the tied output projection (logits = h · Eᵀ), and
the row gather every trained table in keraformer goes through.

Why the gather is not plain ``ops.take``: on TensorFlow the gradient of a gather is a
``tf.IndexedSlices`` that lists a row once per occurrence of its id. Keras 3 optimizers apply
such a gradient slice by slice, and any optimizer that is not linear in the gradient then
goes wrong for repeated ids: Adam squares each occurrence's slice and sums the squares, so
a row whose id occurs ``k`` times in a batch gets a second moment of ``Σ gᵢ²`` instead of
``(Σ gᵢ)²`` (one zero-initialised row, one id repeated 4 times, ``Adam(0.1)``: the row moves
by −0.2 instead of −0.1). :func:`gather_rows` gives the table a dense gradient with the
occurrences summed, which is the gradient the textbook update (and JAX, and PyTorch) uses.
``benchmarks/embedding_gradients.py`` measures what that costs.
"""

import keras
from keras import ops

from keraformer.checks import guard_ids


@ops.custom_gradient
def take_with_dense_gradient(table, ids):
    """``table[ids]`` whose gradient for ``table`` is dense: rows of repeated ids summed."""
    rows = ops.take(table, ids, axis=0)

    def gradient(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        flat = ops.reshape(upstream, (-1,) + tuple(table.shape[1:]))
        summed = ops.segment_sum(flat, ops.reshape(ids, (-1,)), num_segments=table.shape[0])
        return summed, None

    return rows, gradient


def gather_rows(table, ids):
    """Rows ``table[ids]``: ``table (rows, ...)``, int ``ids`` of any shape in ``[0, rows)``,
    output ``ids.shape + table.shape[1:]``.

    The gradient for ``table`` is dense, the contributions of repeated ids summed into their
    row, so every optimizer sees the gradient of the textbook formulas. Only TensorFlow needs
    the custom gradient (its gather gradient is a ``tf.IndexedSlices`` with repeated
    indices); JAX and PyTorch already return this dense gradient from ``ops.take``.
    """
    if keras.backend.backend() != "tensorflow":
        return ops.take(table, ids, axis=0)
    import tensorflow as tf

    if isinstance(table, keras.Variable):
        table = table.value
    # a read of the variable, not the variable: tf.custom_gradient refuses functions that
    # read variables themselves
    return take_with_dense_gradient(tf.convert_to_tensor(table), ops.cast(ids, "int32"))


def dense_gradient(gradient):
    """``gradient`` as a dense tensor: a TensorFlow ``tf.IndexedSlices`` (a gather's gradient,
    one slice per occurrence of an index) becomes the tensor with the slices of repeated
    indices summed; anything else is returned as is. Optimizers whose update is not linear in
    the gradient (Adam's square) must see this sum, not the separate slices."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return tf.convert_to_tensor(gradient)
    return gradient


@keras.saving.register_keras_serializable(package="keraformer")
class Embedding(keras.layers.Embedding):
    """``keras.layers.Embedding`` with a ``reverse`` mode, checked ids and a dense gradient.

    ``layer(token_ids)`` maps ``(batch, length)`` ids to ``(batch, length, dim)`` vectors. An
    id outside ``[0, input_dim)`` (or a fractional float id) never gathers a plausible row:
    eager calls raise ``ValueError``, TensorFlow graphs without XLA fail an assertion
    (``InvalidArgumentError``), and compiled graphs (XLA, JAX) give NaN vectors at those
    positions, which reach the model's outputs and loss.
    ``layer(hidden, reverse=True)`` maps ``(..., dim)`` to ``(..., vocab)`` logits with the
    transposed table, which is how BERT's MLM head and T5 1.0 tie their output projection.
    ``ids_name`` names the ids in that error (``"segment_ids"`` for a segment embedding).
    The table's gradient is dense with repeated ids summed (:func:`gather_rows`), so Adam and
    every other optimizer make the textbook update on every backend.

    Example:

        >>> import numpy as np
        >>> from keraformer.embedding import Embedding
        >>> layer = Embedding(10, 4)
        >>> hidden = layer(np.array([[1, 2, 3]]))
        >>> tuple(hidden.shape), tuple(layer(hidden, reverse=True).shape)   # tied logits
        ((1, 3, 4), (1, 3, 10))
        >>> layer(np.array([[12]]))
        Traceback (most recent call last):
        ...
        ValueError: ...token_ids...
    """

    def __init__(self, *args, ids_name="token_ids", **kwargs):
        super().__init__(*args, **kwargs)
        self.ids_name = ids_name
        self.supports_masking = True  # reverse mode: the hidden states' Keras mask goes on

    def compute_mask(self, inputs, mask=None):
        if mask is not None:
            return mask
        return super().compute_mask(inputs, mask)

    def build(self, input_shape=None):
        if self.built or self.quantization_mode is not None:
            return super().build(input_shape)
        # Keras' table, but never autocast: under a mixed policy the rows are gathered in
        # float32 and cast afterwards, so the gradient of a row that a batch uses many times
        # is summed in float32. (JAX's training step calls the layer outside the model's
        # autocast scope; an autocast table summed the loss-scaled gradient in float16 and
        # overflowed at 4 uses of a row.)
        self._embeddings = self.add_weight(
            shape=(self.input_dim, self.output_dim), initializer=self.embeddings_initializer,
            name="embeddings", regularizer=self.embeddings_regularizer,
            constraint=self.embeddings_constraint, trainable=True, autocast=False)
        self.built = True
        if self.lora_rank:
            self.enable_lora(self.lora_rank)

    def call(self, inputs, reverse=False):
        if reverse:
            table = ops.cast(self.embeddings, self.compute_dtype)
            return ops.matmul(inputs, ops.transpose(table))
        ids, valid = guard_ids(inputs, self.input_dim, self.ids_name)
        if self.quantization_mode is None:
            outputs = ops.cast(gather_rows(self.embeddings, ids), self.compute_dtype)
        else:
            outputs = super().call(ids)
        nan = ops.full((), float("nan"), dtype=outputs.dtype)
        return ops.where(ops.expand_dims(valid, -1), outputs, nan)

    def compute_output_spec(self, inputs, reverse=False):
        if reverse:
            shape = tuple(inputs.shape[:-1]) + (self.input_dim,)
            return keras.KerasTensor(shape, dtype=self.compute_dtype)
        return super().compute_output_spec(inputs)

    def get_config(self):
        config = super().get_config()
        if self.ids_name != "token_ids":
            config["ids_name"] = self.ids_name
        return config
