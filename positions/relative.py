"""T5's relative position bias (Raffel et al. 2020): a learned scalar per head and bucket.

The offset ``key − query`` is bucketed: half the buckets (all of them when causal, where only
non-positive offsets occur) hold exact small distances, the rest cover distances up to
``max_distance`` on a log scale; larger distances share the last bucket. Bidirectional
bucketing spends the other half on positive offsets.
"""

import math
import numbers

import keras
from keras import ops

from keraformer.embedding import gather_rows


def relative_position_bucket(relative_position, bidirectional=True, num_buckets=32,
                             max_distance=128):
    """Bucket ids (int32, same shape) of ``relative_position = key_pos − query_pos``.

    Example:

        >>> import numpy as np
        >>> from keraformer.positions import relative_position_bucket
        >>> distances = np.array([-20, -3, 0, 3, 20])
        >>> np.asarray(relative_position_bucket(distances, num_buckets=8, max_distance=16)).tolist()
        [3, 2, 0, 6, 7]
    """
    relative_position = ops.cast(relative_position, "int32")
    buckets = ops.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + ops.cast(relative_position > 0, "int32") * num_buckets
        distance = ops.abs(relative_position)
    else:
        distance = -ops.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    scaled = ops.log(ops.maximum(ops.cast(distance, "float32"), 1.0) / max_exact)
    scaled = scaled / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    large = max_exact + ops.cast(scaled, "int32")
    large = ops.minimum(large, num_buckets - 1)
    return buckets + ops.where(distance < max_exact, distance, large)


@keras.saving.register_keras_serializable(package="keraformer")
class RelativePositionBias(keras.layers.Layer):
    """Bias ``(1, heads, q_len, k_len)`` added to attention logits.

    Call ``layer(query, key, offset=0)``: only the lengths of ``query (batch, q_len, ...)`` and
    ``key (batch, k_len, ...)`` are used; query ``i`` sits at position ``offset + i`` (cached
    decoding), keys at ``0..k_len−1``. Weight ``embeddings`` of shape ``(num_buckets, heads)``.

    Example:

        >>> import numpy as np
        >>> from keraformer.positions import RelativePositionBias
        >>> layer = RelativePositionBias(heads=2, num_buckets=8, max_distance=16)
        >>> query = key = np.zeros((1, 5, 4), "float32")
        >>> tuple(layer(query, key).shape)                  # (1, heads, q_len, k_len)
        (1, 2, 5, 5)
    """

    def __init__(self, heads, num_buckets=32, max_distance=128, bidirectional=True,
                 embeddings_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        for name, value in (("heads", heads), ("num_buckets", num_buckets),
                            ("max_distance", max_distance)):
            if not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; received {value!r}")
        minimum = 4 if bidirectional else 2
        if num_buckets < minimum or max_distance <= num_buckets // minimum:
            raise ValueError(f"T5 buckets need `num_buckets` >= {minimum} and `max_distance` > "
                             f"the {num_buckets // minimum} exact buckets; received "
                             f"num_buckets={num_buckets}, max_distance={max_distance}")
        self.heads, self.num_buckets = heads, num_buckets
        self.max_distance, self.bidirectional = max_distance, bidirectional
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, *args, **kwargs):
        # never autocast: the bias is gathered in float32 (each bucket serves many query-key
        # pairs, whose gradients are summed in float32) and cast afterwards
        self.embeddings = self.add_weight(name="embeddings", shape=(self.num_buckets, self.heads),
                                          initializer=self.embeddings_initializer,
                                          autocast=False)

    def call(self, query, key, offset=0):
        q_positions = ops.arange(ops.shape(query)[1]) + offset
        k_positions = ops.arange(ops.shape(key)[1])
        buckets = relative_position_bucket(k_positions[None, :] - q_positions[:, None],
                                           self.bidirectional, self.num_buckets,
                                           self.max_distance)
        bias = ops.cast(gather_rows(self.embeddings, buckets), self.compute_dtype)
        return ops.transpose(bias, (2, 0, 1))[None]

    def compute_output_shape(self, query_shape, key_shape, *args, **kwargs):
        return (1, self.heads, query_shape[1], key_shape[1])

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "num_buckets": self.num_buckets,
                "max_distance": self.max_distance, "bidirectional": self.bidirectional,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer)}
