"""bert4keras' ``Loss`` layer in Keras 3: a layer that adds the loss it computes from its inputs
(targets included) and passes some of them on, so a model trains with ``compile(optimizer)``
and batches without targets (``yield inputs, None`` from a ``DataGenerator``).

bert4keras' examples subclass it (``class CrossEntropy(Loss): def compute_loss(self, inputs,
mask=None): ...``) and end their model with ``CrossEntropy(2)(model.inputs + model.outputs)``;
the same subclass, with ``keras.ops`` in place of ``K``, works on :class:`LossLayer`. The loss
Keras reports is the added scalar itself, as bert4keras reported it.
"""

import numbers

import keras


def check_output_axis(output_axis):
    if output_axis is None:
        return None
    if isinstance(output_axis, numbers.Integral) and not isinstance(output_axis, bool):
        return int(output_axis)
    if isinstance(output_axis, (list, tuple)) and all(
            isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in output_axis):
        return [int(a) for a in output_axis]
    raise TypeError(f"`output_axis` must be None, an int or a list of ints (which inputs the "
                    f"layer returns); received {output_axis!r}")


def select(values, output_axis):
    """``values`` (``None``), ``values[output_axis]`` or the list of the listed ones."""
    if output_axis is None:
        return values
    if isinstance(output_axis, list):
        return [values[i] for i in output_axis]
    return values[output_axis]


@keras.saving.register_keras_serializable(package="keraformer")
class LossLayer(keras.layers.Layer):
    """Adds ``self.compute_loss(inputs, mask)`` (a scalar) to the model's losses and returns
    ``inputs`` (``output_axis=None``), ``inputs[output_axis]`` or, for a list of axes, the list
    of those inputs; their Keras masks go with them.

    Subclass it and define ``compute_loss(self, inputs, mask=None)``; ``mask`` is the list of
    the inputs' Keras masks (``None`` where an input has none), e.g. the padding mask that a
    builder's output carries. ``inputs`` is the list the layer was called on.

    Args:
        output_axis: which of the inputs the layer returns (``None``: all, as given).

    Example:

        >>> import keras
        >>> import numpy as np
        >>> from keraformer.losses import LossLayer
        >>> class MeanSquare(LossLayer):
        ...     def compute_loss(self, inputs, mask=None):
        ...         return keras.ops.mean(keras.ops.square(inputs[0] - inputs[1]))
        >>> x, y = keras.Input((2,)), keras.Input((2,))
        >>> prediction = keras.layers.Dense(2, kernel_initializer="ones")(x)
        >>> model = keras.Model([x, y], MeanSquare(output_axis=0)([prediction, y]))
        >>> model.compile(optimizer="sgd")                   # no loss: the layer adds it
        >>> np.asarray(model([np.ones((1, 2)), np.zeros((1, 2))])).tolist()   # returns inputs[0]
        [[2.0, 2.0]]
        >>> [round(float(loss), 4) for loss in model.losses]                  # mean((2 − 0)²)
        [4.0]
    """

    def __init__(self, output_axis=None, **kwargs):
        super().__init__(**kwargs)
        self.output_axis = check_output_axis(output_axis)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        self.add_loss(self.compute_loss(inputs, mask))
        return select(inputs, self.output_axis)

    def compute_loss(self, inputs, mask=None):
        raise NotImplementedError(f"{type(self).__name__} must define compute_loss(self, "
                                  f"inputs, mask=None) returning a scalar loss")

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        return select(mask, self.output_axis)

    def compute_output_spec(self, inputs, mask=None):
        specs = keras.tree.map_structure(
            lambda x: keras.KerasTensor(x.shape, dtype=x.dtype), inputs)
        return select(specs, self.output_axis)

    def get_config(self):
        return {**super().get_config(), "output_axis": self.output_axis}
