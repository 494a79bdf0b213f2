"""Position-wise feed-forward blocks: dense (BERT, T5 1.0) and gated linear units (T5.1.1).

``FeedForward(units, activation="gelu")`` computes ``W_o · act(W_i x)``; with ``glu=True`` it
computes ``W_o · (act(W_0 x) ⊙ W_1 x)`` (Shazeer 2020, "GLU Variants Improve Transformer").
"""

import keras
from keras import ops


APPROXIMATE_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


@keras.saving.register_keras_serializable(package="keraformer")
def gelu_approximate(x):
    """The tanh approximation of GELU (``gelu_new`` in Hugging Face configs)."""
    return keras.activations.gelu(x, approximate=True)


def activation_by_name(name):
    """A serializable Keras activation for a checkpoint config name.

    ``gelu`` is the exact erf form (BERT); ``gelu_new``/``gelu_pytorch_tanh`` the tanh form.
    """
    if name in APPROXIMATE_GELU:
        return gelu_approximate
    try:
        return keras.activations.get({"swish": "silu", "gelu_exact": "gelu"}.get(name, name))
    except ValueError:
        raise ValueError(f"`activation` must be a Keras activation name or one of "
                         f"{APPROXIMATE_GELU}; received {name!r}") from None


@keras.saving.register_keras_serializable(package="keraformer")
class FeedForward(keras.layers.Layer):
    """Two-layer position-wise MLP, optionally gated. Input and output ``(batch, length, hidden)``.

    Example:

        >>> import numpy as np
        >>> from keraformer.feedforward import FeedForward
        >>> layer = FeedForward(32, activation="gelu_new", glu=True)   # T5.1.1's gated GELU
        >>> tuple(layer(np.zeros((2, 5, 8), "float32")).shape)
        (2, 5, 8)
        >>> sorted(w.path.split("/")[-2] for w in layer.weights if w.path.endswith("kernel"))
        ['gate_dense', 'input_dense', 'output_dense']
    """

    def __init__(self, units, activation="gelu", glu=False, use_bias=True,
                 kernel_initializer="glorot_uniform", dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.units, self.activation, self.glu = units, activation, glu
        self.use_bias, self.dropout_rate = use_bias, dropout_rate
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self._act = activation_by_name(activation)

    def build(self, input_shape):
        dim = input_shape[-1]
        dense = lambda units, name: keras.layers.Dense(
            units, use_bias=self.use_bias, kernel_initializer=self.kernel_initializer,
            name=name, dtype=self.dtype_policy)
        self.input_dense = dense(self.units, "input_dense")
        self.input_dense.build(input_shape)
        if self.glu:
            self.gate_dense = dense(self.units, "gate_dense")
            self.gate_dense.build(input_shape)
        self.output_dense = dense(dim, "output_dense")
        self.output_dense.build(tuple(input_shape[:-1]) + (self.units,))
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def call(self, x, training=None):
        h = self._act(self.input_dense(x))
        if self.glu:
            h = h * self.gate_dense(x)
        return self.output_dense(self.dropout(h, training=training))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation,
                "glu": self.glu, "use_bias": self.use_bias, "dropout_rate": self.dropout_rate,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}
