"""The residual blocks the BERT and RoFormer families stack, with a swappable attention.

``attention`` names the mixing layer of a block: ``"softmax"`` (``MultiHeadAttention``),
``"linear"`` (``LinearAttention``), ``"vq"`` (``VQAttention``) or ``"gau"``
(``GatedAttentionUnit``); the layer classes live in ``keraformer.attentions`` and are looked up
when a block is built, so one builder composes any of them with the same embeddings and norms.
"""

import inspect

import keras

from keraformer.feedforward import FeedForward
from keraformer.normalization import LayerNormalization

ATTENTION_CLASSES = {"softmax": "MultiHeadAttention", "linear": "LinearAttention",
                     "vq": "VQAttention", "gau": "GatedAttentionUnit"}


def attention_class(kind):
    """The ``keraformer.attentions`` layer class registered as ``kind``."""
    if kind not in ATTENTION_CLASSES:
        raise ValueError(f"`attention` must be one of {sorted(ATTENTION_CLASSES)}; "
                         f"received {kind!r}")
    from keraformer import attentions
    cls = getattr(attentions, ATTENTION_CLASSES[kind], None)
    if cls is None:
        raise ValueError(f"`attention={kind!r}` needs keraformer.attentions."
                         f"{ATTENTION_CLASSES[kind]}, which this installation lacks")
    return cls


def accepted_arguments(cls, arguments):
    """The entries of ``arguments`` that ``cls.__init__`` takes by name."""
    parameters = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in arguments.items() if k in parameters}


def build_attention(kind, options, name, dtype):
    """An attention layer of ``kind``; ``options`` are offered to its constructor and those
    it does not take are dropped (the layers share most names: ``heads``, ``use_bias``,
    ``rotary``...)."""
    cls = attention_class(kind)
    return cls(**accepted_arguments(cls, options), name=name, dtype=dtype)


def call_attention(layer, x, mask, causal, training):
    """Call an attention layer of any kind on ``x`` with a boolean ``mask`` and ``causal``."""
    return layer(x, mask=mask, causal=causal, training=training)


@keras.saving.register_keras_serializable(package="keraformer")
class TransformerBlock(keras.layers.Layer):
    """Attention then (optionally) feed-forward, each with a residual and a normalisation.

    ``norm="post"`` (BERT, RoFormer): ``x = norm(x + f(x))``; ``norm="pre"``:
    ``x = x + f(norm(x))``. ``normalization`` holds ``LayerNormalization`` keyword arguments
    (e.g. ``{"rms": True, "center": False, "scale": False}`` for RoFormerV2). ``attention``
    picks the mixing layer (see the module docstring) and ``attention_options`` adds or
    overrides its constructor arguments; ``feedforward=False`` leaves only the attention
    residual (GAU-α, whose gated unit replaces both). ``recompute`` recomputes the block's
    activations in the backward pass instead of storing them.
    Input ``(batch, length, hidden)``, an optional boolean ``attention_mask`` broadcasting to
    ``(batch, heads, length, length)`` and ``causal``; output ``(batch, length, hidden)``.
    """

    def __init__(self, heads, head_size, intermediate_size, activation="gelu", use_bias=True,
                 norm="post", normalization=None, dropout_rate=0.0, attention_dropout_rate=0.0,
                 rotary=None, entropy_scaling=False, glu=False, recompute=False,
                 kernel_initializer="glorot_uniform", attention="softmax",
                 attention_options=None, feedforward=True, **kwargs):
        super().__init__(**kwargs)
        if norm not in ("post", "pre"):
            raise ValueError(f"`norm` must be 'post' or 'pre'; received {norm!r}")
        attention_class(attention)
        self.heads, self.head_size, self.intermediate_size = heads, head_size, intermediate_size
        self.activation, self.use_bias, self.norm = activation, use_bias, norm
        self.normalization = dict(normalization or {})
        self.dropout_rate, self.attention_dropout_rate = dropout_rate, attention_dropout_rate
        if rotary is not None and not isinstance(rotary, dict):
            rotary = keras.saving.serialize_keras_object(rotary)
        self.rotary, self.entropy_scaling, self.glu = rotary, entropy_scaling, glu
        self.recompute = recompute
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.attention_kind = attention
        self.attention_options = dict(attention_options or {})
        self.use_feedforward = feedforward

    def attention_arguments(self):
        """Constructor arguments offered to the attention layer."""
        return {"heads": self.heads, "head_size": self.head_size, "use_bias": self.use_bias,
                "rotary": self.rotary, "dropout_rate": self.attention_dropout_rate,
                "entropy_scaling": self.entropy_scaling,
                "kernel_initializer": self.kernel_initializer, **self.attention_options}

    def build(self, input_shape):
        policy = self.dtype_policy
        self.attention = build_attention(self.attention_kind, self.attention_arguments(),
                                         "attention", policy)
        self.attention_norm = LayerNormalization(**self.normalization, name="attention_norm",
                                                 dtype=policy)
        self.attention.build(input_shape)
        self.attention_norm.build(input_shape)
        if self.use_feedforward:
            self.feedforward = FeedForward(
                self.intermediate_size, self.activation, glu=self.glu, use_bias=self.use_bias,
                kernel_initializer=self.kernel_initializer, name="feedforward", dtype=policy)
            self.feedforward_norm = LayerNormalization(**self.normalization,
                                                       name="feedforward_norm", dtype=policy)
            self.feedforward.build(input_shape)
            self.feedforward_norm.build(input_shape)
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def residual(self, x, sublayer, norm, training):
        if self.norm == "pre":
            return x + self.dropout(sublayer(norm(x)), training=training)
        return norm(x + self.dropout(sublayer(x), training=training))

    def forward(self, x, attention_mask=None, causal=False, training=None):
        x = self.residual(x, lambda h: call_attention(self.attention, h, attention_mask,
                                                      causal, training),
                          self.attention_norm, training)
        if not self.use_feedforward:
            return x
        return self.residual(x, lambda h: self.feedforward(h, training=training),
                             self.feedforward_norm, training)

    def call(self, x, attention_mask=None, causal=False, training=None):
        if self.recompute:
            from keraformer.optimizers import recompute_grad
            return recompute_grad(self.forward)(x, attention_mask, causal, training=training)
        return self.forward(x, attention_mask, causal, training=training)

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return input_shape

    def get_config(self):
        options = {k: (keras.saving.serialize_keras_object(v)
                       if isinstance(v, (keras.layers.Layer, keras.initializers.Initializer))
                       else v) for k, v in self.attention_options.items()}
        return {**super().get_config(), "heads": self.heads, "head_size": self.head_size,
                "intermediate_size": self.intermediate_size, "activation": self.activation,
                "use_bias": self.use_bias, "norm": self.norm,
                "normalization": self.normalization, "dropout_rate": self.dropout_rate,
                "attention_dropout_rate": self.attention_dropout_rate, "rotary": self.rotary,
                "entropy_scaling": self.entropy_scaling, "glu": self.glu,
                "recompute": self.recompute,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "attention": self.attention_kind, "attention_options": options,
                "feedforward": self.use_feedforward}
