"""Layer normalisation in the variants Transformer checkpoints use.

``LayerNormalization(center=True, scale=True)`` is BERT's LayerNorm; ``rms=True`` drops the
mean subtraction (T5's RMS norm with ``center=False``); RoFormerV2 and GAU-α use
``rms=True, center=False, scale=False`` (no parameters at all). Statistics are computed in
float32 whatever the layer's compute dtype.
"""

import keras
import numpy as np
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


def align_condition(condition, rank):
    """``condition (batch, ..., units)`` with axes of size 1 inserted after the batch axis so
    that it broadcasts over an input of ``rank`` axes: ``(batch, units)`` becomes
    ``(batch, 1, units)`` for ``(batch, length, hidden)`` inputs."""
    missing = rank - len(condition.shape)
    if missing < 0:
        raise ValueError(f"the condition of a conditional LayerNormalization must have at most "
                         f"the input's {rank} axes; received shape {tuple(condition.shape)}")
    return ops.reshape(condition, (ops.shape(condition)[0],) + (1,) * missing
                       + tuple(condition.shape[1:]))


@keras.saving.register_keras_serializable(package="keraformer")
class LayerNormalization(keras.layers.Layer):
    """Layer normalisation over the last axis with optional gain (``gamma``) and bias (``beta``).

    Input and output ``(..., hidden)``. ``rms=True`` normalises by the root mean square only
    (Zhang & Sennrich 2019), as T5 and RoFormerV2 do.

    ``conditional=True`` is bert4keras' conditional layer norm (Su 2019, "conditional layer
    normalization"): the layer is called on ``[x, condition]`` with ``condition`` of shape
    ``(batch, units)`` (or ``(batch, ..., units)`` up to ``x``'s rank) and uses
    ``gamma + condition·W_γ`` and ``beta + condition·W_β`` (kernels ``gamma_dense``,
    ``beta_dense``, zero-initialised and without bias, so training starts from the plain
    norm); ``hidden_units`` first maps the condition by a bias-free Dense layer
    (``hidden_dense``) with ``hidden_activation``. Same weights and outputs as bert4keras
    0.11.5's ``LayerNormalization(conditional=True, ...)``; the output carries ``x``'s Keras
    mask.

    Args:
        center: learn a bias ``beta``.
        scale: learn a gain ``gamma``.
        rms: divide by the root mean square without subtracting the mean.
        epsilon: added to the variance.
        conditional: take ``[x, condition]`` and shift ``gamma``/``beta`` by the condition.
        hidden_units: width of a Dense layer applied to the condition first (``None``: none).
        hidden_activation: activation of that layer.
        hidden_initializer: initializer of that layer's kernel.
    Example:

        >>> import numpy as np
        >>> from keraformer.normalization import LayerNormalization
        >>> layer = LayerNormalization(epsilon=1e-12)
        >>> np.round(np.asarray(layer(np.array([[1.0, 2.0, 3.0]]))), 4)
        array([[-1.2247,  0.    ,  1.2247]], dtype=float32)
    """

    def __init__(self, center=True, scale=True, rms=False, epsilon=1e-12, conditional=False,
                 hidden_units=None, hidden_activation="linear",
                 hidden_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        for name, value in (("center", center), ("scale", scale), ("rms", rms),
                            ("conditional", conditional)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"`{name}` must be a bool; received {value!r}")
        if hidden_units is not None and (isinstance(hidden_units, bool) or not isinstance(
                hidden_units, int) or hidden_units < 1):
            raise ValueError(f"`hidden_units` must be None or an integer >= 1; received "
                             f"{hidden_units!r}")
        if hidden_units is not None and not conditional:
            raise ValueError(f"`hidden_units` maps the condition and needs conditional=True; "
                             f"received hidden_units={hidden_units!r}, conditional=False")
        self.center, self.scale, self.rms = bool(center), bool(scale), bool(rms)
        self.epsilon, self.conditional, self.hidden_units = epsilon, bool(conditional), hidden_units
        self.hidden_activation = keras.activations.get(hidden_activation)
        self.hidden_initializer = keras.initializers.get(hidden_initializer)
        self.supports_masking = True

    def build(self, input_shape):
        if self.conditional:
            if not (isinstance(input_shape, (list, tuple)) and len(input_shape) == 2
                    and isinstance(input_shape[0], (list, tuple))):
                raise ValueError(f"a conditional LayerNormalization is called on [x, "
                                 f"condition]; received input shape {input_shape}")
            input_shape, condition_shape = input_shape
        dim = input_shape[-1]
        if self.scale:
            self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones")
        if self.center:
            self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros")
        if self.conditional:
            units = condition_shape[-1]
            if self.hidden_units is not None:
                self.hidden_dense = keras.layers.Dense(
                    self.hidden_units, activation=self.hidden_activation, use_bias=False,
                    kernel_initializer=self.hidden_initializer, dtype=self.dtype_policy,
                    name="hidden_dense")
                self.hidden_dense.build(tuple(condition_shape))
                units = self.hidden_units
            for name in ("gamma", "beta"):
                if getattr(self, {"beta": "center", "gamma": "scale"}[name]):
                    dense = keras.layers.Dense(dim, use_bias=False, kernel_initializer="zeros",
                                               dtype=self.dtype_policy, name=f"{name}_dense")
                    dense.build(tuple(condition_shape[:-1]) + (units,))
                    setattr(self, f"{name}_dense", dense)

    def call(self, inputs):
        x, condition = inputs if self.conditional else (inputs, None)
        y = normalize(x, rms=self.rms, epsilon=self.epsilon)
        if condition is not None:
            if self.hidden_units is not None:
                condition = self.hidden_dense(condition)
            condition = align_condition(condition, len(x.shape))
        if self.scale:
            gamma = ops.cast(self.gamma, "float32")
            if condition is not None:
                gamma = gamma + ops.cast(self.gamma_dense(condition), "float32")
            y = y * gamma
        if self.center:
            beta = ops.cast(self.beta, "float32")
            if condition is not None:
                beta = beta + ops.cast(self.beta_dense(condition), "float32")
            y = y + beta
        return ops.cast(y, self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        if self.conditional and isinstance(mask, (list, tuple)):
            return mask[0]
        return mask

    def compute_output_shape(self, input_shape):
        return input_shape[0] if self.conditional else input_shape

    def get_config(self):
        config = {**super().get_config(), "center": self.center, "scale": self.scale,
                  "rms": self.rms, "epsilon": self.epsilon}
        if self.conditional:
            config.update(conditional=True, hidden_units=self.hidden_units,
                          hidden_activation=keras.activations.serialize(self.hidden_activation),
                          hidden_initializer=keras.initializers.serialize(
                              self.hidden_initializer))
        return config


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

    Example:

        >>> from keraformer.normalization import deepnorm_constants
        >>> alpha, beta = deepnorm_constants(encoder_layers=6)["encoder"]
        >>> round(alpha, 4), round(beta, 4), round(12 ** 0.25, 4), round(48 ** -0.25, 4)
        (1.8612, 0.3799, 1.8612, 0.3799)
        >>> both = deepnorm_constants(encoder_layers=6, decoder_layers=6)
        >>> {stack: tuple(round(c, 4) for c in ab) for stack, ab in both.items()}
        {'encoder': (1.4179, 0.497), 'decoder': (2.0598, 0.3433)}
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
    ``β²·2/(fan_in + fan_out)``, untruncated, as DeepNet's ``xavier_normal_(w, gain=β)``.

    Example:

        >>> import numpy as np
        >>> from keraformer.normalization import deepnorm_initializer
        >>> w = np.asarray(deepnorm_initializer(beta=0.5, seed=0)((400, 600)))
        >>> w.shape, round(float(w.std()), 3), round(0.5 * (2 / (400 + 600)) ** 0.5, 3)
        ((400, 600), 0.022, 0.022)
    """
    return keras.initializers.VarianceScaling(scale=beta ** 2, mode="fan_avg",
                                              distribution="untruncated_normal", seed=seed)
