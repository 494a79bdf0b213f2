"""The residual blocks the BERT and RoFormer families stack, with a swappable attention.

``attention`` names the mixing layer of a block: ``"softmax"`` (``MultiHeadAttention``),
``"linear"`` (``LinearAttention``), ``"vq"`` (``VQAttention``) or ``"gau"``
(``GatedAttentionUnit``); the layer classes live in ``keraformer.attentions`` and are looked up
when a block is built, so one builder composes any of them with the same embeddings and norms.

A block offers its attention layer only what it asks for: the multi-head size (``heads``,
``head_size``; not to ``"gau"``, a single-head unit sized by ``units``/``key_size`` in
``attention_options``), ``use_bias``, ``kernel_initializer``, every entry of
``attention_options``, and ``rotary``, ``entropy_scaling`` and ``attention_dropout_rate``
when they are set (not ``None``/``False``/``0``). A layer that does not take an offered option
cannot honour it, so the block raises a ``ValueError`` naming the option and the kind instead
of building a model that silently computes something else; a layer refuses itself the
combinations of arguments it takes but cannot honour together (``rotary`` with
``LinearAttention(feature_map="softmax")``).
"""

import inspect

import keras

from keraformer.feedforward import FeedForward
from keraformer.normalization import LayerNormalization, deepnorm_initializer

ATTENTION_CLASSES = {"softmax": "MultiHeadAttention", "linear": "LinearAttention",
                     "vq": "VQAttention", "gau": "GatedAttentionUnit"}
MULTI_HEAD = ("softmax", "linear", "vq")  # the kinds sized by `heads` and `head_size`
# The block's name of an option, where the layer's constructor calls it something else.
BLOCK_NAMES = {"dropout_rate": "attention_dropout_rate"}
# Why a kind cannot honour an option, where the layer's missing argument does not say it all.
REFUSALS = {
    ("linear", "entropy_scaling"): "linear attention has no softmax whose logits the "
                                   "log(n)/log(base) factor could scale",
    ("linear", "dropout_rate"): "linear attention forms no attention probabilities to drop; "
                                "set attention_probs_dropout_prob (or dropout_rate) to 0",
    ("vq", "dropout_rate"): "VQ attention weighs codes, not keys, so there are no per-key "
                            "probabilities to drop; set attention_probs_dropout_prob (or "
                            "dropout_rate) to 0",
    ("gau", "entropy_scaling"): "a gated unit's entropy-invariant softmax is its "
                                "normalization='softmax_plus' (in attention_options)",
}


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


def shown(value):
    """A short text for an option's value in an error (a serialised layer by its class)."""
    if isinstance(value, dict) and "class_name" in value:
        return value["class_name"]
    return repr(value)


def check_supported(kind, options, names=None):
    """Raise ``ValueError`` for an entry of ``options`` that the ``kind`` layer does not take;
    ``names`` maps a constructor argument to the name the caller knows it by."""
    cls = attention_class(kind)
    parameters = inspect.signature(cls.__init__).parameters
    for name, value in options.items():
        if name in parameters:
            continue
        reason = REFUSALS.get((kind, name), f"{cls.__name__} takes no `{name}`")
        raise ValueError(f"attention={kind!r} does not support "
                         f"{(names or {}).get(name, name)}={shown(value)}: {reason}")


def build_attention(kind, options, name, dtype):
    """An attention layer of ``kind`` built with every entry of ``options``, which it must
    take (:func:`check_supported`)."""
    check_supported(kind, options)
    return attention_class(kind)(**options, name=name, dtype=dtype)


def check_deepnorm(norm, deepnorm):
    """``deepnorm``: ``(α, β)`` of positive numbers with ``norm="deepnorm"``, else ``None``;
    returned as a list (its config form)."""
    if norm != "deepnorm":
        if deepnorm is not None:
            raise ValueError(f"`deepnorm={deepnorm!r}` needs norm='deepnorm'; received "
                             f"norm={norm!r}")
        return None
    if (not isinstance(deepnorm, (list, tuple)) or len(deepnorm) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0
                   for v in deepnorm)):
        raise ValueError(f"`deepnorm` must be (alpha, beta), two positive numbers (see "
                         f"keraformer.normalization.deepnorm_constants), with "
                         f"norm='deepnorm'; received {deepnorm!r}")
    return [float(deepnorm[0]), float(deepnorm[1])]


def call_attention(layer, x, mask, causal, training, cache=None, cache_update_index=None,
                   positions=None, key_positions=None):
    """Call an attention layer of any kind on ``x`` with a boolean ``mask`` and ``causal``;
    ``positions`` (softmax attention: random positions in training, a decoding step's) place
    the rotary embedding; with a ``cache`` (softmax attention), ``(output, cache)``, the
    cache's columns at ``key_positions``."""
    if cache is None:
        placed = {} if positions is None else {"positions": positions}
        return layer(x, mask=mask, causal=causal, training=training, **placed)
    if not isinstance(layer, attention_class("softmax")):
        raise ValueError(f"a key/value cache needs attention='softmax'; this block's "
                         f"attention is {type(layer).__name__}")
    return layer(x, mask=mask, training=training, cache=cache,
                 cache_update_index=cache_update_index, positions=positions,
                 key_positions=key_positions)


@keras.saving.register_keras_serializable(package="keraformer")
class TransformerBlock(keras.layers.Layer):
    """Attention then (optionally) feed-forward, each with a residual and a normalisation.

    ``norm="post"`` (BERT, RoFormer): ``x = norm(x + f(x))``; ``norm="pre"``:
    ``x = x + f(norm(x))``; ``norm="deepnorm"`` (DeepNet, Wang et al. 2022):
    ``x = norm(α·x + f(x))``, with the feed-forward kernels and the attention's value and
    output kernels initialised Xavier-normal times ``β`` (``deepnorm=(α, β)``, from
    ``keraformer.normalization.deepnorm_constants``). Call ``block(x, attention_mask=None, causal=False,
    training=None)`` with ``x`` ``(batch, length, hidden)`` and an optional boolean
    ``attention_mask`` broadcasting to ``(batch, heads, length, length)``; returns
    ``(batch, length, hidden)``. Options the chosen attention cannot honour raise a
    ``ValueError`` when the block is built (see the module docstring).

    Cached decoding calls the same block with ``self_attention_cache=(keys, values)``,
    ``cache_update_index``, ``positions`` and ``key_positions`` (the cache columns'
    positions, which local attention and ReRoPE read; softmax attention only; see
    ``MultiHeadAttention``) and gets ``(output, self_attention_cache)``, the cache holding
    this call's keys and values too; ``attention_mask`` then covers every cache column.
    Without a cache, ``positions`` (softmax attention) are the rotary positions of the
    tokens (random positions in training).

    Args:
        heads: number of attention heads (softmax, linear, vq; a "gau" unit has one).
        head_size: size of each head (softmax, linear, vq).
        intermediate_size: width of the feed-forward hidden layer.
        activation: feed-forward activation name.
        use_bias: whether the Dense layers of attention and feed-forward have biases.
        norm: ``"post"``, ``"pre"`` or ``"deepnorm"`` normalisation around each residual.
        deepnorm: ``(α, β)`` of ``norm="deepnorm"`` (only then).
        normalization: ``LayerNormalization`` keyword arguments, e.g.
            ``{"rms": True, "center": False, "scale": False}`` for RoFormerV2.
        dropout_rate: dropout on each residual branch.
        attention_dropout_rate: dropout on the attention probabilities (softmax, gau).
        rotary: a ``keraformer.positions.RotaryEmbedding`` (or its config) for the attention.
        entropy_scaling: scale attention logits by ``log(n)/log(512)`` (softmax, vq).
        glu: gated feed-forward.
        recompute: recompute the block's activations in the backward pass instead of
            storing them.
        kernel_initializer: initializer of every Dense kernel.
        attention: ``"softmax"``, ``"linear"``, ``"vq"`` or ``"gau"``.
        attention_options: extra constructor arguments of the attention layer (e.g.
            ``{"codes": 32}`` for VQ, ``{"units": ..., "key_size": ...}`` for GAU); each must
            be one the layer takes.
        feedforward: ``False`` leaves only the attention residual (GAU-α, whose gated unit
            replaces both).
    """

    def __init__(self, heads, head_size, intermediate_size, activation="gelu", use_bias=True,
                 norm="post", normalization=None, dropout_rate=0.0, attention_dropout_rate=0.0,
                 rotary=None, entropy_scaling=False, glu=False, recompute=False,
                 kernel_initializer="glorot_uniform", attention="softmax",
                 attention_options=None, feedforward=True, deepnorm=None, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True  # the Keras (padding) mask of x passes through
        if norm not in ("post", "pre", "deepnorm"):
            raise ValueError(f"`norm` must be 'post', 'pre' or 'deepnorm'; received {norm!r}")
        self.deepnorm = check_deepnorm(norm, deepnorm)
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
        check_supported(attention, self.attention_arguments(),
                        {k: v for k, v in BLOCK_NAMES.items() if k not in self.attention_options})

    def attention_arguments(self):
        """Constructor arguments offered to the attention layer: its size, ``use_bias``,
        ``kernel_initializer``, the options that are set, and ``attention_options``."""
        arguments = {"use_bias": self.use_bias, "kernel_initializer": self.kernel_initializer}
        if self.deepnorm is not None:
            gain = deepnorm_initializer(self.deepnorm[1])
            arguments.update(value_initializer=gain, output_initializer=gain)
        if self.attention_kind in MULTI_HEAD:
            arguments.update(heads=self.heads, head_size=self.head_size)
        set_options = {"rotary": self.rotary, "entropy_scaling": self.entropy_scaling,
                       "dropout_rate": self.attention_dropout_rate}
        arguments.update({k: v for k, v in set_options.items() if v})
        return {**arguments, **self.attention_options}

    def build(self, input_shape):
        policy = self.dtype_policy
        self.attention = build_attention(self.attention_kind, self.attention_arguments(),
                                         "attention", policy)
        self.attention_norm = LayerNormalization(**self.normalization, name="attention_norm",
                                                 dtype=policy)
        self.attention.build(input_shape)
        self.attention_norm.build(input_shape)
        if self.use_feedforward:
            initializer = (self.kernel_initializer if self.deepnorm is None
                           else deepnorm_initializer(self.deepnorm[1]))
            self.feedforward = FeedForward(
                self.intermediate_size, self.activation, glu=self.glu, use_bias=self.use_bias,
                kernel_initializer=initializer, name="feedforward", dtype=policy)
            self.feedforward_norm = LayerNormalization(**self.normalization,
                                                       name="feedforward_norm", dtype=policy)
            self.feedforward.build(input_shape)
            self.feedforward_norm.build(input_shape)
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def residual(self, x, sublayer, norm, training):
        if self.norm == "pre":
            return x + self.dropout(sublayer(norm(x)), training=training)
        branch = self.dropout(sublayer(x), training=training)
        if self.norm == "deepnorm":  # DeepNet: LN(α·x + G(x))
            return norm(x * self.deepnorm[0] + branch)
        return norm(x + branch)

    def forward(self, x, attention_mask=None, causal=False, training=None, cache=None,
                cache_update_index=None, positions=None, key_positions=None):
        updated = []

        def attention(h):
            out = call_attention(self.attention, h, attention_mask, causal, training, cache,
                                 cache_update_index, positions, key_positions)
            if cache is None:
                return out
            updated.append(out[1])
            return out[0]

        x = self.residual(x, attention, self.attention_norm, training)
        if self.use_feedforward:
            x = self.residual(x, lambda h: self.feedforward(h, training=training),
                              self.feedforward_norm, training)
        return x if cache is None else (x, updated[0])

    def call(self, x, attention_mask=None, causal=False, training=None,
             self_attention_cache=None, cache_update_index=None, positions=None,
             key_positions=None):
        if self_attention_cache is not None:  # decoding: inference only, nothing to recompute
            return self.forward(x, attention_mask, causal, training, self_attention_cache,
                                cache_update_index, positions, key_positions)
        if self.recompute:
            from keraformer.optimizers import recompute_grad
            return recompute_grad(self.forward)(x, attention_mask, causal, training=training,
                                                positions=positions)
        return self.forward(x, attention_mask, causal, training=training, positions=positions)

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
                "feedforward": self.use_feedforward, "deepnorm": self.deepnorm}
