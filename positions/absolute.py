"""Learned absolute position embeddings, with hierarchical decomposition for long inputs.

Hierarchical decomposition (Su 2020, "hierarchically decomposed position encoding"): with a
trained table ``p`` of ``N`` rows and ``u = (p - alpha·p_0) / (1 - alpha)``, position
``i·N + j`` gets ``alpha·u_i + (1 - alpha)·u_j``. For ``i = 0`` this is exactly ``p_j``, so
positions below ``N`` keep their trained vectors and the table reaches ``N²`` positions.
"""

import keras
from keras import ops


def hierarchical_positions(table, length, alpha=0.4):
    """Vectors ``(length, dim)`` for positions ``0..length-1`` from a ``(N, dim)`` table."""
    rows = table.shape[0]
    if isinstance(length, int) and length > rows * rows:
        raise ValueError(f"hierarchical positions reach {rows}² = {rows * rows} positions; "
                         f"received an input of length {length}")
    return hierarchical_vectors(table, ops.arange(length), alpha)


def hierarchical_vectors(table, positions, alpha=0.4):
    """Vectors ``positions.shape + (dim,)`` of integer ``positions`` (below ``N²``) from a
    ``(N, dim)`` table."""
    rows = table.shape[0]
    u = (table - alpha * table[:1]) / (1 - alpha)
    outer = ops.take(u, positions // rows, axis=0)
    inner = ops.take(u, positions % rows, axis=0)
    return alpha * outer + (1 - alpha) * inner


@keras.saving.register_keras_serializable(package="keraformer")
class PositionEmbedding(keras.layers.Layer):
    """Trained position vectors added to (``merge_mode="add"``) or returned for the input.

    Input ``(batch, length, dim)``; output the same shape (``"add"``) or ``(1, length, dim)``
    (``"zero"``: the position vectors alone); ``positions`` (ids broadcasting to ``(batch,
    length)``) places the inputs elsewhere than ``0..length-1``. Inputs longer than ``input_dim`` need
    ``hierarchical=True`` and raise a ``ValueError`` otherwise.
    """

    def __init__(self, input_dim, output_dim, merge_mode="add", hierarchical=False, alpha=0.4,
                 embeddings_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if merge_mode not in ("add", "zero"):
            raise ValueError(f"`merge_mode` must be 'add' or 'zero'; received {merge_mode!r}")
        if not 0 <= alpha < 1:
            raise ValueError(f"`alpha` must lie in [0, 1) (hierarchical positions divide by "
                             f"1 - alpha); received {alpha!r}")
        self.input_dim, self.output_dim = input_dim, output_dim
        self.merge_mode, self.hierarchical, self.alpha = merge_mode, hierarchical, alpha
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape):
        self.embeddings = self.add_weight(name="embeddings",
                                          shape=(self.input_dim, self.output_dim),
                                          initializer=self.embeddings_initializer)

    def position_vectors(self, length):
        """``(length, output_dim)`` vectors for positions ``0..length-1``.

        ``length`` is a Python int when the input length is static, else a scalar tensor.
        """
        table = ops.cast(self.embeddings, self.compute_dtype)
        if isinstance(length, int) and length > self.input_dim and not self.hierarchical:
            raise ValueError(
                f"input length {length} exceeds the {self.input_dim} trained positions; pass "
                f"hierarchical_position=True (or hierarchical=True) to extend them, or a "
                f"shorter input")
        if not self.hierarchical or isinstance(length, int) and length <= self.input_dim:
            return table[:length]
        return hierarchical_positions(table, length, self.alpha)

    def vectors_at(self, positions):
        """Vectors ``positions.shape + (output_dim,)`` of integer ``positions``."""
        table = ops.cast(self.embeddings, self.compute_dtype)
        if self.hierarchical:
            return hierarchical_vectors(table, positions, self.alpha)
        return ops.take(table, positions, axis=0)

    def call(self, inputs, positions=None):
        if positions is not None:  # (batch, length) ids, e.g. a cached decoding step's
            vectors = self.vectors_at(ops.broadcast_to(positions, ops.shape(inputs)[:2]))
            return vectors if self.merge_mode == "zero" else inputs + vectors
        length = inputs.shape[1] if inputs.shape[1] is not None else ops.shape(inputs)[1]
        vectors = self.position_vectors(length)[None]
        return vectors if self.merge_mode == "zero" else inputs + vectors

    def compute_output_shape(self, input_shape):
        if self.merge_mode == "zero":
            return (1,) + tuple(input_shape[1:2]) + (self.output_dim,)
        return input_shape

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim,
                "output_dim": self.output_dim, "merge_mode": self.merge_mode,
                "hierarchical": self.hierarchical, "alpha": self.alpha,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer)}
