"""The Transformer encoder block shared by the BERT and RoFormer families."""

import keras

from keraformer.attentions import MultiHeadAttention
from keraformer.feedforward import FeedForward
from keraformer.normalization import LayerNormalization


@keras.saving.register_keras_serializable(package="keraformer")
class TransformerBlock(keras.layers.Layer):
    """Self-attention then feed-forward, each with a residual and a normalisation.

    ``norm="post"`` (BERT, RoFormer): ``x = norm(x + f(x))``; ``norm="pre"``:
    ``x = x + f(norm(x))``. ``normalization`` holds ``LayerNormalization`` keyword arguments
    (e.g. ``{"rms": True, "center": False, "scale": False}`` for RoFormerV2). ``recompute``
    recomputes the block's activations in the backward pass instead of storing them.
    Input ``(batch, length, hidden)`` and an optional boolean ``attention_mask`` broadcasting
    to ``(batch, heads, length, length)``; output ``(batch, length, hidden)``.
    """

    def __init__(self, heads, head_size, intermediate_size, activation="gelu", use_bias=True,
                 norm="post", normalization=None, dropout_rate=0.0, attention_dropout_rate=0.0,
                 rotary=None, entropy_scaling=False, glu=False, recompute=False,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if norm not in ("post", "pre"):
            raise ValueError(f"`norm` must be 'post' or 'pre'; received {norm!r}")
        self.heads, self.head_size, self.intermediate_size = heads, head_size, intermediate_size
        self.activation, self.use_bias, self.norm = activation, use_bias, norm
        self.normalization = dict(normalization or {})
        self.dropout_rate, self.attention_dropout_rate = dropout_rate, attention_dropout_rate
        self.rotary, self.entropy_scaling, self.glu = rotary, entropy_scaling, glu
        self.recompute = recompute
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        policy = self.dtype_policy
        self.attention = MultiHeadAttention(
            self.heads, self.head_size, use_bias=self.use_bias, rotary=self.rotary,
            dropout_rate=self.attention_dropout_rate, entropy_scaling=self.entropy_scaling,
            kernel_initializer=self.kernel_initializer, name="attention", dtype=policy)
        self.attention_norm = LayerNormalization(**self.normalization, name="attention_norm",
                                                 dtype=policy)
        self.feedforward = FeedForward(
            self.intermediate_size, self.activation, glu=self.glu, use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer, name="feedforward", dtype=policy)
        self.feedforward_norm = LayerNormalization(**self.normalization,
                                                   name="feedforward_norm", dtype=policy)
        self.dropout = keras.layers.Dropout(self.dropout_rate)
        for layer in (self.attention, self.attention_norm, self.feedforward,
                      self.feedforward_norm):
            layer.build(input_shape)

    def residual(self, x, sublayer, norm, training, **kwargs):
        if self.norm == "pre":
            return x + self.dropout(sublayer(norm(x), training=training, **kwargs), training=training)
        return norm(x + self.dropout(sublayer(x, training=training, **kwargs), training=training))

    def forward(self, x, attention_mask=None, training=None):
        x = self.residual(x, self.attention, self.attention_norm, training,
                          mask=attention_mask)
        return self.residual(x, self.feedforward, self.feedforward_norm, training)

    def call(self, x, attention_mask=None, training=None):
        if self.recompute:
            from keraformer.optimizers import recompute_grad
            return recompute_grad(self.forward)(x, attention_mask, training=training)
        return self.forward(x, attention_mask, training=training)

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return input_shape

    def get_config(self):
        rotary = self.rotary
        if rotary is not None and not isinstance(rotary, dict):
            rotary = keras.saving.serialize_keras_object(rotary)
        return {**super().get_config(), "heads": self.heads, "head_size": self.head_size,
                "intermediate_size": self.intermediate_size, "activation": self.activation,
                "use_bias": self.use_bias, "norm": self.norm,
                "normalization": self.normalization, "dropout_rate": self.dropout_rate,
                "attention_dropout_rate": self.attention_dropout_rate, "rotary": rotary,
                "entropy_scaling": self.entropy_scaling, "glu": self.glu,
                "recompute": self.recompute,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}
