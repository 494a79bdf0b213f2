"""Layer normalisation in the variants Transformer checkpoints use.

``LayerNormalization(center=True, scale=True)`` is BERT's LayerNorm; ``rms=True`` drops the
mean subtraction (T5's RMS norm with ``center=False``); RoFormerV2 and GAU-α use
``rms=True, center=False, scale=False`` (no parameters at all). Statistics are computed in
float32 whatever the layer's compute dtype.
"""

import keras
from keras import ops


def normalize(x, rms=False, epsilon=1e-12):
    """``(x - mean) / sqrt(var + eps)`` over the last axis, or ``x / sqrt(mean(x²) + eps)``
    if ``rms``.

    Example:

        >>> import numpy as np
        >>> from keraformer.normalization import normalize
        >>> np.round(np.asarray(normalize(np.array([[1.0, 3.0]]))), 4)
        array([[-1.,  1.]], dtype=float32)
        >>> np.round(np.asarray(normalize(np.array([[3.0, 4.0]]), rms=True)), 4)   # / sqrt(12.5)
        array([[0.8485, 1.1314]], dtype=float32)
    """
    x = ops.cast(x, "float32")
    if not rms:
        x = x - ops.mean(x, axis=-1, keepdims=True)
    variance = ops.mean(ops.square(x), axis=-1, keepdims=True)
    return x * ops.rsqrt(variance + epsilon)


@keras.saving.register_keras_serializable(package="keraformer")
class LayerNormalization(keras.layers.Layer):
    """Layer normalisation over the last axis with optional gain (``gamma``) and bias (``beta``).

    Input and output ``(..., hidden)``. ``rms=True`` normalises by the root mean square only
    (Zhang & Sennrich 2019), as T5 and RoFormerV2 do.

    Example:

        >>> import numpy as np
        >>> from keraformer.normalization import LayerNormalization
        >>> layer = LayerNormalization(epsilon=1e-12)
        >>> np.round(np.asarray(layer(np.array([[1.0, 2.0, 3.0]]))), 4)
        array([[-1.2247,  0.    ,  1.2247]], dtype=float32)
    """

    def __init__(self, center=True, scale=True, rms=False, epsilon=1e-12, **kwargs):
        super().__init__(**kwargs)
        self.center, self.scale, self.rms, self.epsilon = center, scale, rms, epsilon
        self.supports_masking = True

    def build(self, input_shape):
        dim = input_shape[-1]
        if self.scale:
            self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones")
        if self.center:
            self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros")

    def call(self, x):
        y = normalize(x, rms=self.rms, epsilon=self.epsilon)
        if self.scale:
            y = y * ops.cast(self.gamma, "float32")
        if self.center:
            y = y + ops.cast(self.beta, "float32")
        return ops.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "center": self.center, "scale": self.scale,
                "rms": self.rms, "epsilon": self.epsilon}


def rms_norm(epsilon=1e-6, scale=True, **kwargs):
    """The RMS norm ``x / sqrt(mean(x²) + ε) · γ`` without mean or bias: T5's (``scale=True``)
    or RoFormerV2's and GAU-α's parameter-free form (``scale=False``). ``kwargs`` (``name``,
    ``dtype``) go to :class:`LayerNormalization`.

    Example:

        >>> import numpy as np
        >>> from keraformer.normalization import rms_norm
        >>> layer = rms_norm(scale=False)                  # RoFormerV2's parameter-free norm
        >>> np.round(np.asarray(layer(np.array([[2.0, 2.0]]))), 4), len(layer.weights)
        (array([[1., 1.]], dtype=float32), 0)
    """
    return LayerNormalization(rms=True, center=False, scale=scale, epsilon=epsilon, **kwargs)
