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
    if ``rms``."""
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
    ``dtype``) go to :class:`LayerNormalization`."""
    return LayerNormalization(rms=True, center=False, scale=scale, epsilon=epsilon, **kwargs)


def deepnorm_constants(encoder_layers=0, decoder_layers=0):
    """DeepNorm's residual weight ``α`` and initialisation gain ``β`` (Wang et al. 2022,
    "DeepNet: Scaling Transformers to 1,000 Layers", Figure 2), per stack.

    Each sub-layer ``G`` computes ``x ← LN(α·x + G(x))``, and the feed-forward, value and
    attention-output projections start from Xavier-normal weights times ``β``:

    - encoder-only (``N = encoder_layers``): ``α = (2N)^¼``, ``β = (8N)^-¼``;
    - decoder-only (``M = decoder_layers``): ``α = (2M)^¼``, ``β = (8M)^-¼``;
    - encoder-decoder: encoder ``α = 0.81·(N⁴M)^(1/16)``, ``β = 0.87·(N⁴M)^(-1/16)``;
      decoder ``α = (3M)^¼``, ``β = (12M)^-¼``.

    Returns ``{"encoder": (α, β)}``, ``{"decoder": (α, β)}`` or both, for the stacks that have
    layers.
    """
    for name, value in (("encoder_layers", encoder_layers), ("decoder_layers", decoder_layers)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"`{name}` must be an integer; received {value!r} of type "
                            f"{type(value).__name__}")
        if value < 0:
            raise ValueError(f"`{name}` must be >= 0; received {value}")
    n, m = encoder_layers, decoder_layers
    if not n and not m:
        raise ValueError("DeepNorm needs layers: `encoder_layers` and `decoder_layers` are "
                         "both 0")
    if not m:
        return {"encoder": ((2 * n) ** 0.25, (8 * n) ** -0.25)}
    if not n:
        return {"decoder": ((2 * m) ** 0.25, (8 * m) ** -0.25)}
    return {"encoder": (0.81 * (n ** 4 * m) ** (1 / 16), 0.87 * (n ** 4 * m) ** (-1 / 16)),
            "decoder": ((3 * m) ** 0.25, (12 * m) ** -0.25)}


def deepnorm_initializer(beta, seed=None):
    """Xavier (Glorot) normal initialisation with gain ``beta``: variance
    ``β²·2/(fan_in + fan_out)``, untruncated, as DeepNet's ``xavier_normal_(w, gain=β)``."""
    return keras.initializers.VarianceScaling(scale=beta ** 2, mode="fan_avg",
                                              distribution="untruncated_normal", seed=seed)
