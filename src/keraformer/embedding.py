"""Token embedding that can also serve as the tied output projection (logits = h · Eᵀ)."""

import keras
from keras import ops

from keraformer.checks import guard_ids


@keras.saving.register_keras_serializable(package="keraformer")
class Embedding(keras.layers.Embedding):
    """``keras.layers.Embedding`` with a ``reverse`` mode and checked ids.

    ``layer(token_ids)`` maps ``(batch, length)`` ids to ``(batch, length, dim)`` vectors. An
    id outside ``[0, input_dim)`` (or a fractional float id) never gathers a plausible row:
    eager calls raise ``ValueError``, TensorFlow graphs without XLA fail an assertion
    (``InvalidArgumentError``), and compiled graphs (XLA, JAX) give NaN vectors at those
    positions, which reach the model's outputs and loss.
    ``layer(hidden, reverse=True)`` maps ``(..., dim)`` to ``(..., vocab)`` logits with the
    transposed table, which is how BERT's MLM head and T5 1.0 tie their output projection.
    ``ids_name`` names the ids in that error (``"segment_ids"`` for a segment embedding).

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

    def call(self, inputs, reverse=False):
        if reverse:
            table = ops.cast(self.embeddings, self.compute_dtype)
            return ops.matmul(inputs, ops.transpose(table))
        ids, valid = guard_ids(inputs, self.input_dim, self.ids_name)
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
