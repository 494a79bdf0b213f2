"""Fixed sinusoidal position encoding (Vaswani et al. 2017).

Position ``p`` gets ``sin(p·ω_i)`` in feature ``2i`` and ``cos(p·ω_i)`` in feature ``2i+1``
with ``ω_i = 10000^(−2i/d)``.
"""

import keras
from keras import ops

from keraformer.checks import check_positive_ints

MERGE_MODES = ("add", "mul", "zero")


def sinusoidal_positions(length, dim, base=10000.0):
    """``(length, dim)`` float32 encodings of positions ``0..length−1`` (``dim`` even)."""
    positions = ops.arange(length, dtype="float32")[:, None]
    omega = ops.power(base, -ops.arange(0, dim // 2, dtype="float32") * (2.0 / dim))
    angles = positions * omega
    pairs = ops.stack([ops.sin(angles), ops.cos(angles)], axis=-1)
    return ops.reshape(pairs, (length, dim))


@keras.saving.register_keras_serializable(package="keraformer")
class SinusoidalPositionEmbedding(keras.layers.Layer):
    """Sinusoidal encodings merged with the input ``(batch, length, dim)``.

    ``merge_mode``: ``"add"`` (x + pe), ``"mul"`` (x · (1 + pe)) or ``"zero"`` (pe alone,
    ``(1, length, output_dim)``). ``output_dim`` must be even and, unless ``"zero"``, equal
    the input's last axis.

    Example:

        >>> import numpy as np
        >>> from keraformer.positions import SinusoidalPositionEmbedding
        >>> pe = SinusoidalPositionEmbedding(4, merge_mode="zero")(np.zeros((1, 3, 4), "float32"))
        >>> np.round(np.asarray(pe)[0, 1], 4)               # sin(1), cos(1), sin(0.01), cos(0.01)
        array([0.8415, 0.5403, 0.01  , 1.    ], dtype=float32)
    """

    def __init__(self, output_dim, merge_mode="add", **kwargs):
        super().__init__(**kwargs)
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"`merge_mode` must be one of {MERGE_MODES}; received "
                             f"{merge_mode!r}")
        check_positive_ints(output_dim=output_dim)
        if output_dim % 2:
            raise ValueError(f"`output_dim` must be even; received {output_dim}")
        self.output_dim, self.merge_mode = output_dim, merge_mode

    def call(self, x):
        if self.merge_mode != "zero" and x.shape[-1] != self.output_dim:
            raise ValueError(f"input feature size {x.shape[-1]} must equal `output_dim` "
                             f"{self.output_dim} for merge_mode={self.merge_mode!r}")
        pe = ops.cast(sinusoidal_positions(ops.shape(x)[1], self.output_dim),
                      self.compute_dtype)[None]
        if self.merge_mode == "add":
            return x + pe
        if self.merge_mode == "mul":
            return x * (1.0 + pe)
        return pe

    def compute_output_shape(self, input_shape):
        if self.merge_mode == "zero":
            return (1, input_shape[1], self.output_dim)
        return input_shape

    def get_config(self):
        return {**super().get_config(), "output_dim": self.output_dim,
                "merge_mode": self.merge_mode}
