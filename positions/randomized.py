"""Random positions (Ruoss et al. 2023, "Randomized Positional Encodings Boost Length
Generalization of Transformers"): in training each sequence of length ``n`` gets a sorted
random subset of ``[0, N)`` as its positions, ``N`` larger than the training length, so that
the position encoding (RoPE or a learned table) sees the whole range ``[0, N)`` and relative
distances up to ``N`` while the model only ever reads ``n`` tokens; inference uses ``0..n−1``
(or any increasing positions below ``N``).
"""

import keras
from keras import ops

from keraformer.checks import check_positive_ints


def random_positions(batch, length, max_position, seed=None):
    """``(batch, length)`` int32: per row, ``length`` distinct positions drawn uniformly from
    ``[0, max_position)`` and sorted increasingly. ``seed``: an int or a
    ``keras.random.SeedGenerator``.

    Example:

        >>> import numpy as np
        >>> from keraformer.positions import random_positions
        >>> positions = np.asarray(random_positions(2, 4, max_position=16, seed=0))
        >>> positions.shape, positions.dtype
        ((2, 4), dtype('int32'))
        >>> increasing = bool((np.diff(positions, axis=1) > 0).all())
        >>> increasing, bool(positions.min() >= 0 and positions.max() < 16)
        (True, True)
    """
    if isinstance(length, int) and isinstance(max_position, int) and length > max_position:
        raise ValueError(f"random positions need `max_position` >= the input length; received "
                         f"max_position={max_position} for length {length}")
    noise = keras.random.uniform((batch, max_position), seed=seed)
    chosen = ops.top_k(noise, length, sorted=False)[1]
    return ops.cast(ops.sort(chosen, axis=-1), "int32")


@keras.saving.register_keras_serializable(package="keraformer")
class RandomPositions(keras.layers.Layer):
    """Position ids for an input ``(batch, length, ...)``: in training (``training=True``) a
    sorted random subset of ``[0, max_position)`` per row (:func:`random_positions`),
    otherwise ``0..length−1``; output ``(batch, length)`` int32. Feed them to
    ``RotaryEmbedding(x, positions=)`` or ``PositionEmbedding(x, positions=)``.

    Args:
        max_position: ``N``, the range the positions are drawn from (a learned table needs
            ``N`` rows); must be at least the training length.
        seed: seed of the draws (an int or ``None``).

    Example:

        >>> import numpy as np
        >>> from keraformer.positions import RandomPositions
        >>> layer = RandomPositions(max_position=64, seed=0)
        >>> x = np.zeros((2, 5, 8), "float32")
        >>> np.asarray(layer(x)).tolist()                              # inference: 0..length−1
        [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
        >>> drawn = np.asarray(layer(x, training=True))                # training: sorted draws
        >>> drawn.shape, bool((np.diff(drawn, axis=1) > 0).all()), bool(drawn.max() < 64)
        ((2, 5), True, True)
    """

    def __init__(self, max_position, seed=None, **kwargs):
        super().__init__(**kwargs)
        check_positive_ints(max_position=max_position)
        self.max_position, self.seed = max_position, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        batch, length = ops.shape(inputs)[0], ops.shape(inputs)[1]
        if inputs.shape[1] is not None:
            length = inputs.shape[1]
        if training:
            return random_positions(batch, length, self.max_position, self.seed_generator)
        return ops.broadcast_to(ops.arange(length, dtype="int32")[None], (batch, length))

    def compute_output_spec(self, inputs, training=None):
        return keras.KerasTensor(tuple(inputs.shape[:2]), dtype="int32")

    def get_config(self):
        return {**super().get_config(), "max_position": self.max_position, "seed": self.seed}
