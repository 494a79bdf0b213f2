"""The projections around multi-head attention, shared by the softmax, linear and VQ layers.

``query``, ``key`` and ``value`` ``Dense`` layers map the inputs to ``heads`` heads (queries
and keys of ``key_size`` features, values of ``head_size``), the attention mixes them and an
``output`` ``Dense`` maps the merged heads back to ``output_dim`` (default: the query width).
The sublayers are the attributes ``query_dense``, ``key_dense``, ``value_dense`` and
``output_dense``, with kernels ``(dim, heads·size)`` as BERT checkpoints lay them out; the
checkpoint maps of ``keraformer.models`` read them by these names.
"""

import keras
from keras import ops

from keraformer.checks import check_positive_ints
from keraformer.positions.rotary import rotary_argument, rotary_config


class ProjectedHeads:
    """Mixin for a ``keras.layers.Layer``: the four projections, head splitting, an optional
    rotary embedding, and the shared part of the constructor, config and output shape.

    A layer calls :meth:`init_heads` in ``__init__``, :meth:`build_projections` in ``build``
    and adds :meth:`heads_config` to its ``get_config``.
    """

    def init_heads(self, heads, head_size, key_size=None, output_dim=None, use_bias=True,
                   kernel_initializer="glorot_uniform", rotary=None, value_initializer=None,
                   output_initializer=None):
        check_positive_ints(heads=heads, head_size=head_size)
        check_positive_ints(**{name: value for name, value in (("key_size", key_size),
                                                                ("output_dim", output_dim))
                               if value is not None})
        self.heads, self.head_size = heads, head_size
        self.key_size = key_size or head_size
        self.output_dim, self.use_bias = output_dim, use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.value_initializer = keras.initializers.get(value_initializer or kernel_initializer)
        self.output_initializer = keras.initializers.get(output_initializer
                                                         or kernel_initializer)
        self.own_initializers = (value_initializer, output_initializer)
        self.rotary = rotary_argument(rotary, self.key_size, "`key_size` (default `head_size`)")
        self.supports_masking = True  # `mask` is the attention mask, not a Keras input mask

    def _dense(self, units, name, input_shape, initializer=None):
        layer = keras.layers.Dense(units, use_bias=self.use_bias, name=name,
                                   kernel_initializer=initializer or self.kernel_initializer,
                                   dtype=self.dtype_policy)
        layer.build(input_shape)
        return layer

    def build_projections(self, query_shape, key_shape=None, value_shape=None):
        key_shape = key_shape or query_shape
        value_shape = value_shape or key_shape
        self.query_dense = self._dense(self.heads * self.key_size, "query", query_shape)
        self.key_dense = self._dense(self.heads * self.key_size, "key", key_shape)
        self.value_dense = self._dense(self.heads * self.head_size, "value", value_shape,
                                       self.value_initializer)
        self.output_dense = self._dense(self.output_dim or query_shape[-1], "output",
                                        tuple(query_shape[:-1]) + (self.heads * self.head_size,),
                                        self.output_initializer)

    def split_heads(self, x, size):
        """``(batch, length, heads·size)`` to ``(batch, length, heads, size)``."""
        return ops.reshape(x, (ops.shape(x)[0], ops.shape(x)[1], self.heads, size))

    def project(self, query, key=None, value=None):
        """Unrotated heads ``q``, ``k``, ``v``; ``key`` defaults to ``query``, ``value`` to
        ``key``."""
        key = query if key is None else key
        value = key if value is None else value
        return (self.split_heads(self.query_dense(query), self.key_size),
                self.split_heads(self.key_dense(key), self.key_size),
                self.split_heads(self.value_dense(value), self.head_size))

    def rotate(self, x, positions=None):
        """``x`` rotated by ``rotary`` (unchanged without one)."""
        return x if self.rotary is None else self.rotary(x, positions=positions)

    def merge_heads(self, x):
        """``(batch, length, heads, head_size)`` through the output projection."""
        return self.output_dense(ops.reshape(x, (ops.shape(x)[0], ops.shape(x)[1], -1)))

    def compute_output_shape(self, query_shape, *args, **kwargs):
        return tuple(query_shape[:-1]) + (self.output_dim or query_shape[-1],)

    def compute_mask(self, *args, **kwargs):
        return None

    def heads_config(self):
        return {"heads": self.heads, "head_size": self.head_size, "key_size": self.key_size,
                "output_dim": self.output_dim, "use_bias": self.use_bias,
                "rotary": rotary_config(self.rotary),
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                **{name: keras.initializers.serialize(initializer)
                   for name, initializer, given in (
                       ("value_initializer", self.value_initializer, self.own_initializers[0]),
                       ("output_initializer", self.output_initializer,
                        self.own_initializers[1])) if given is not None}}
