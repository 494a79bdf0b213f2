"""T5 (Raffel et al. 2020), T5.1.1 and mT5 (Xue et al. 2021): encoder-decoder builders.

Pre-norm blocks with T5's RMS norm (scale only), no biases, unscaled attention logits and a
relative position bias computed once per stack (bidirectional in the encoder, causal in the
decoder) and shared by all its layers; cross-attention has no position bias. T5 1.0 uses a ReLU
feed-forward and an output projection tied to the shared embedding (decoder output scaled by
``d_model^-0.5``); T5.1.1 and mT5 a gated-GELU feed-forward and an untied output projection.

``builder.encoder``: ``token_ids (batch, src_len)`` -> hidden states ``(batch, src_len,
d_model)``. ``builder.decoder`` (a :class:`ContextDecoder`): ``[encoder_output,
decoder_token_ids]`` -> next-token probabilities ``(batch, tgt_len, vocab)``; give the source
ids as a third input, ``[encoder_output, decoder_token_ids, encoder_token_ids]``, to mask the
source padding (id ``pad_token_id``, 0). The mask never comes from the values of the states.
``builder.model``: ``[encoder_token_ids, decoder_token_ids]`` -> probabilities, trainable
with ``model.fit`` (teacher forcing). Outputs carry the padding mask as a Keras mask (the
decoder's position 0, the start token, counts as real although its id is the padding id).
``builder.generate`` decodes with a key/value cache (see ``keraformer.generation``).
"""

import keras
from keras import ops

from keraformer import checkpoints
from keraformer.attentions import MultiHeadAttention
from keraformer.checks import (check_bools, check_ids_in_vocabulary, check_positive_ints,
                               check_positive_numbers, check_rates)
from keraformer.embedding import Embedding
from keraformer.feedforward import FeedForward, activation_by_name
from keraformer.masks import AttentionMask, OutputMask, real_tokens
from keraformer.models import decoding
from keraformer.models.base import Transformer, Vocabulary
from keraformer.models.bert import head_activation
from keraformer.normalization import LayerNormalization, rms_norm
from keraformer.positions import RelativePositionBias


def feed_forward_kind(proj):
    """``(activation, glu)`` of a Hugging Face ``feed_forward_proj`` such as ``gated-gelu``."""
    parts = str(proj).split("-")
    if len(parts) > 2 or len(parts) == 2 and parts[0] != "gated":
        raise ValueError(f"`feed_forward_proj` must be 'ACT' or 'gated-ACT' (e.g. 'relu', "
                         f"'gated-gelu'); received {proj!r}")
    activation = "gelu_new" if proj == "gated-gelu" else parts[-1]
    try:
        activation_by_name(activation)
    except (ValueError, TypeError):
        raise ValueError(f"`feed_forward_proj` must name a Keras activation ('relu', "
                         f"'gated-gelu'...); received {proj!r}") from None
    return activation, len(parts) == 2


@keras.saving.register_keras_serializable(package="keraformer")
class T5Block(keras.layers.Layer):
    """One pre-norm T5 layer: self-attention, optional cross-attention, feed-forward, each
    ``x + f(rms_norm(x))``; attention without biases and with unscaled logits.

    Call ``block(x, position_bias, attention_mask=None, causal=False, context=None,
    context_mask=None)`` with ``x (batch, length, d_model)``, the stack's shared
    ``position_bias (1, heads, length, length)``, boolean masks broadcasting to ``(batch,
    heads, q_len, k_len)`` and, for decoder blocks, the encoder output ``context (batch,
    src_len, d_model)`` with its key mask ``context_mask``. Returns ``(batch, length,
    d_model)``. ``context_bias`` is an optional position bias of the cross-attention
    (bert4keras' ``cross_position_bias``).

    Cached decoding runs the same call with ``self_attention_cache=(keys, values)`` and
    ``cache_update_index`` (see ``MultiHeadAttention``; the masks and bias then cover every
    cache column) and the encoder's ``cross_attention_cache`` (:meth:`cross_attention_cache`)
    in place of ``context``; it returns ``(output, self_attention_cache)``.

    Args:
        heads: number of attention heads.
        head_size: size of each head's queries, keys and values (``d_kv``).
        intermediate_size: width of the feed-forward layer (``d_ff``).
        activation: feed-forward activation name (``"relu"``, ``"gelu_new"``...).
        glu: whether the feed-forward is gated (T5.1.1, mT5).
        cross_attention: whether the block attends to an encoder output (decoder blocks).
        epsilon: the RMS norms' epsilon.
        dropout_rate: dropout after each sub-layer and on the attention weights.
        kernel_initializer: initializer of every kernel.
    """

    def __init__(self, heads, head_size, intermediate_size, activation="relu", glu=False,
                 cross_attention=False, epsilon=1e-6, dropout_rate=0.0,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.heads, self.head_size, self.intermediate_size = heads, head_size, intermediate_size
        self.activation, self.glu, self.has_cross_attention = activation, glu, cross_attention
        self.epsilon, self.dropout_rate = epsilon, dropout_rate
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def _attention(self, name):
        return MultiHeadAttention(self.heads, self.head_size, use_bias=False, scale=1.0,
                                  dropout_rate=self.dropout_rate,
                                  kernel_initializer=self.kernel_initializer, name=name,
                                  dtype=self.dtype_policy)

    def _norm(self, name):
        return rms_norm(self.epsilon, name=name, dtype=self.dtype_policy)

    def build(self, input_shape, *args, **kwargs):
        self.self_attention = self._attention("self_attention")
        self.self_attention_norm = self._norm("self_attention_norm")
        layers = [self.self_attention, self.self_attention_norm]
        if self.has_cross_attention:
            self.cross_attention = self._attention("cross_attention")
            self.cross_attention_norm = self._norm("cross_attention_norm")
            layers += [self.cross_attention, self.cross_attention_norm]
        self.feedforward = FeedForward(self.intermediate_size, self.activation, glu=self.glu,
                                       use_bias=False, dropout_rate=self.dropout_rate,
                                       kernel_initializer=self.kernel_initializer,
                                       name="feedforward", dtype=self.dtype_policy)
        self.feedforward_norm = self._norm("feedforward_norm")
        for layer in layers + [self.feedforward, self.feedforward_norm]:
            layer.build(input_shape)
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def call(self, x, position_bias, attention_mask=None, causal=False, context=None,
             context_mask=None, context_bias=None, training=None, self_attention_cache=None,
             cache_update_index=None, cross_attention_cache=None):
        h = self.self_attention_norm(x)
        if self_attention_cache is None:
            h = self.self_attention(h, mask=attention_mask, bias=position_bias, causal=causal,
                                    training=training)
        else:
            h, self_attention_cache = self.self_attention(
                h, mask=attention_mask, bias=position_bias, training=training,
                cache=self_attention_cache, cache_update_index=cache_update_index)
        x = x + self.dropout(h, training=training)
        if self.has_cross_attention:
            h = self.cross_attention_norm(x)
            if cross_attention_cache is None:
                h = self.cross_attention(h, context, mask=context_mask, bias=context_bias,
                                         training=training)
            else:
                h, _ = self.cross_attention(h, mask=context_mask, bias=context_bias,
                                            training=training, cache=cross_attention_cache)
            x = x + self.dropout(h, training=training)
        h = self.feedforward(self.feedforward_norm(x), training=training)
        x = x + self.dropout(h, training=training)
        return x if self_attention_cache is None else (x, self_attention_cache)

    def cross_attention_cache(self, context):
        """Cross-attention keys and values ``(batch, src_len, heads, d_kv)`` of the encoder
        output ``context``, the ``cross_attention_cache`` of every decoding step (computed
        once per source, shared by its beams)."""
        return self.cross_attention.project_key_value(context, context)

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "head_size": self.head_size,
                "intermediate_size": self.intermediate_size, "activation": self.activation,
                "glu": self.glu, "cross_attention": self.has_cross_attention,
                "epsilon": self.epsilon, "dropout_rate": self.dropout_rate,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


# bert4keras' T5 config keys (BERT's names) and Hugging Face's
BERT4KERAS_KEYS = {"hidden_size": "d_model", "num_hidden_layers": "num_layers",
                   "num_attention_heads": "num_heads", "attention_head_size": "d_kv",
                   "intermediate_size": "d_ff", "hidden_dropout_prob": "dropout_rate"}


def hf_t5_config(config):
    """``config`` with bert4keras-style T5 keys (``hidden_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``attention_head_size``, ``intermediate_size``,
    ``hidden_dropout_prob``, ``hidden_act``: ``"relu"`` or ``["gelu", "linear"]`` for the
    gated form) turned into Hugging Face's; a key given both ways must agree."""
    config = dict(config)
    bert4keras = any(key in config for key in BERT4KERAS_KEYS)
    for old, new in BERT4KERAS_KEYS.items():
        if old in config:
            value = config.pop(old)
            if new in config and config[new] != value:
                raise ValueError(f"the config gives `{old}` = {value!r} and `{new}` = "
                                 f"{config[new]!r}, which name the same setting")
            config[new] = value
    if "hidden_act" in config:
        act = config.pop("hidden_act")
        gated = isinstance(act, (list, tuple)) and len(act) == 2 and act[1] == "linear"
        if not (isinstance(act, str) or gated):
            raise ValueError(f"`hidden_act` must be an activation name or [name, 'linear'] "
                             f"(a gated feed-forward); received {act!r}")
        proj = f"gated-{act[0]}" if gated else act
        if "feed_forward_proj" in config and config["feed_forward_proj"] != proj:
            raise ValueError(f"the config gives `hidden_act` = {act!r} and "
                             f"`feed_forward_proj` = {config['feed_forward_proj']!r}, which "
                             f"name the same setting")
        config["feed_forward_proj"] = proj
    if config.pop("attention_scale", False) is not False:
        raise ValueError("`attention_scale` must be False: T5 does not scale its attention "
                         "logits")
    if bert4keras and "d_kv" not in config and "d_model" in config and "num_heads" in config:
        # bert4keras' attention_head_size defaults to hidden_size / num_attention_heads
        config["d_kv"] = config["d_model"] // config["num_heads"]
    return config


@keras.saving.register_keras_serializable(package="keraformer")
class ContextDecoder(keras.Model):
    """T5's decoder half as a model: ``[encoder_output, decoder_token_ids]`` or
    ``[encoder_output, decoder_token_ids, encoder_token_ids]`` -> the decoder graph's output
    ``(batch, tgt_len, vocab)``.

    The source padding mask comes from ``encoder_token_ids`` (positions whose id is
    ``pad_id``) when given. With two inputs it comes from the Keras mask that
    ``encoder_output`` carries (``builder.encoder``'s output has one inside a Keras graph and
    in eager calls, on TensorFlow and JAX); an output with no mask (a NumPy array from
    ``encoder.predict``) has every source position attended to, as ``transformers`` does
    without ``encoder_attention_mask``. The mask is never read from the values of the
    states, so a real state that is exactly zero still counts.

    Args:
        graph: the functional decoder ``[encoder_output, decoder_token_ids, source_real]``
            (``source_real``: int32, 1 at real source positions, 0 at padding).
        pad_id: the padding id of the source and decoder ids.
    """

    def __init__(self, graph, pad_id=0, **kwargs):
        super().__init__(**kwargs)
        self.graph, self.pad_id = graph, pad_id
        # the graph takes the source mask as an input, not as the encoder output's Keras mask
        self.supports_masking = graph.supports_masking = True

    def call(self, inputs, mask=None):
        if not isinstance(inputs, (list, tuple)) or len(inputs) not in (2, 3):
            raise ValueError("builder.decoder takes [encoder_output, decoder_token_ids] or "
                             "[encoder_output, decoder_token_ids, encoder_token_ids]; received "
                             f"{type(inputs).__name__} of "
                             f"{len(inputs) if isinstance(inputs, (list, tuple)) else 1} input(s)")
        context, token_ids = inputs[0], inputs[1]
        if len(inputs) == 3:
            real = ops.not_equal(inputs[2], self.pad_id)
        elif mask is not None and mask[0] is not None:
            real = mask[0]
        else:
            real = ops.ones(ops.shape(context)[:2], "bool")
        return self.graph([context, token_ids, ops.cast(real, "int32")])

    def compute_mask(self, inputs, mask=None):
        return real_tokens(inputs[1], self.pad_id, keep_first=True)

    def get_config(self):
        return {"graph": keras.saving.serialize_keras_object(self.graph),
                "pad_id": self.pad_id, "name": self.name}

    @classmethod
    def from_config(cls, config):
        graph = keras.saving.deserialize_keras_object(config.pop("graph"))
        return cls(graph, **config)


class T5(Transformer):
    """T5 1.0 builder (ReLU feed-forward, tied and scaled output projection).

    Config keys are Hugging Face's (``vocab_size``, ``d_model``, ``d_kv``, ``d_ff``,
    ``num_layers``, ``num_decoder_layers``, ``num_heads``, ``relative_attention_num_buckets``,
    ``relative_attention_max_distance``, ``feed_forward_proj``, ``layer_norm_epsilon``,
    ``tie_word_embeddings``, ``decoder_start_token_id``, ``eos_token_id``, ``pad_token_id``,
    ``dropout_rate``); ``feed_forward_proj`` and ``tie_word_embeddings`` default to the
    version's values. bert4keras' config keys (``hidden_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``attention_head_size``, ``intermediate_size``, ``hidden_act``)
    are read too (see :func:`hf_t5_config`).

    Args:
        config: the config dict.
        application: ``"encoder"`` or ``"seq2seq"`` (the same model: both stacks).
        dropout_rate: overrides the config's ``dropout_rate``.
        name: the Keras model's name.
        with_lm: ``builder.model``'s output: ``True`` probabilities, an activation name
            (``"linear"``: logits), ``False`` the final decoder states.
        keep_tokens: checkpoint vocabulary rows to keep (shared embedding rows and output
            projection columns).
        compound_tokens: new rows, each the (weighted) mean of kept rows.
        sequence_length: a fixed input length (``None``: any).
        bert4keras_scaling: scale the decoder output by ``d_model^-0.5`` before an untied
            projection too, as bert4keras does for T5.1.1 and mT5 (models fine-tuned there
            depend on it); default ``False``: Google's and Hugging Face's numerics.
        cross_position_bias: add the decoder's relative position bias to the
            cross-attention logits too, as bert4keras does by default (``True`` there);
            default ``False``: Google's and Hugging Face's numerics.
    """

    APPLICATIONS = ("encoder", "seq2seq")
    CONFIG_KEYS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers",
                   "num_heads", "relative_attention_num_buckets",
                   "relative_attention_max_distance", "feed_forward_proj", "layer_norm_epsilon",
                   "dropout_rate", "tie_word_embeddings", "scale_decoder_outputs",
                   "decoder_start_token_id", "eos_token_id", "pad_token_id",
                   "initializer_factor", "model_type", *BERT4KERAS_KEYS, "hidden_act",
                   "attention_scale")
    model_name = version = "t5"
    default_feed_forward = "relu"
    default_tied = True
    honours_tie_word_embeddings = True
    norm_name, final_norm_name = "layer_norm", "final_layer_norm"

    @classmethod
    def option_names(cls):
        """The keyword options this builder takes (other keywords are config keys)."""
        return {"dropout_rate", "name", "with_lm", "keep_tokens", "compound_tokens",
                "sequence_length", "bert4keras_scaling", "cross_position_bias"}

    def __init__(self, config, application="encoder", dropout_rate=None, name=None,
                 with_lm=True, keep_tokens=None, compound_tokens=None, sequence_length=None,
                 bert4keras_scaling=False, cross_position_bias=False):
        super().__init__(hf_t5_config(config), application, dropout_rate=dropout_rate,
                         name=name, with_lm=with_lm, keep_tokens=keep_tokens,
                         compound_tokens=compound_tokens, sequence_length=sequence_length,
                         bert4keras_scaling=bert4keras_scaling,
                         cross_position_bias=cross_position_bias)
        if with_lm is not False:
            head_activation("with_lm", with_lm)  # True, False or an activation name
        check_bools(bert4keras_scaling=bert4keras_scaling,
                    cross_position_bias=cross_position_bias)
        self.cross_position_bias = cross_position_bias
        if sequence_length is not None:
            check_positive_ints(sequence_length=sequence_length)
        self.with_lm, self.sequence_length = with_lm, sequence_length
        (self.vocab_size, self.d_model, self.head_size, self.d_ff, self.num_layers,
         self.heads) = self.require("vocab_size", "d_model", "d_kv", "d_ff", "num_layers",
                                    "num_heads")
        self.num_decoder_layers = self.config.get("num_decoder_layers")
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        self.num_buckets = self.config.get("relative_attention_num_buckets", 32)
        self.max_distance = self.config.get("relative_attention_max_distance", 128)
        check_positive_ints(vocab_size=self.vocab_size, d_model=self.d_model,
                            d_kv=self.head_size, d_ff=self.d_ff, num_layers=self.num_layers,
                            num_decoder_layers=self.num_decoder_layers, num_heads=self.heads,
                            relative_attention_num_buckets=self.num_buckets,
                            relative_attention_max_distance=self.max_distance)
        if self.num_buckets < 4:
            raise ValueError(f"`relative_attention_num_buckets` must be >= 4 (the encoder "
                             f"splits them between both directions); received "
                             f"{self.num_buckets}")
        if self.max_distance <= self.num_buckets // 2:
            raise ValueError(f"`relative_attention_max_distance` must exceed the "
                             f"relative_attention_num_buckets // 2 = {self.num_buckets // 2} "
                             f"exact buckets of the decoder; received {self.max_distance}")
        self.feed_forward_proj = self.config.get("feed_forward_proj", self.default_feed_forward)
        self.activation, self.glu = feed_forward_kind(self.feed_forward_proj)
        self.tied = self.output_tied()
        # bert4keras scales the decoder output by d_model^-0.5 in every version
        self.scale_output = self.tied or bert4keras_scaling
        self.epsilon = self.config.get("layer_norm_epsilon", 1e-6)
        self.dropout_rate = self.config.get("dropout_rate", 0.1)
        if dropout_rate is not None:
            self.dropout_rate = dropout_rate
        check_rates(dropout_rate=self.dropout_rate)
        factor = self.config.get("initializer_factor", 1.0)
        check_positive_numbers(layer_norm_epsilon=self.epsilon, initializer_factor=factor)
        self.pad_id = self.special_id("pad_token_id", 0)
        self.start_id = self.special_id("decoder_start_token_id", 0)
        self.end_id = self.special_id("eos_token_id", 1)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"`name` must be a string; received {name!r}")
        self.name = name or self.version.replace(".", "_")
        self.initializer = keras.initializers.RandomNormal(stddev=factor * 0.05)
        self.vocabulary = Vocabulary(self.vocab_size, keep_tokens, compound_tokens)
        self.keep_tokens = self.vocabulary.keep_tokens
        self.vocab_size = self.vocabulary.size

    def special_id(self, key, default):
        """The config's special token id ``key`` (the first of a list; ``None``: ``default``),
        checked to lie inside the vocabulary."""
        value = self.config.get(key, default)
        if isinstance(value, (list, tuple)) and value:
            value = value[0]
        value = default if value is None else value
        check_ids_in_vocabulary(self.vocab_size, **{key: value})
        return value

    def output_tied(self):
        """Whether logits use the shared embedding scaled by ``d_model^-0.5`` (T5 1.0).

        transformers 5 writes ``scale_decoder_outputs`` (and always ``tie_word_embeddings:
        true``); older configs say ``tie_word_embeddings: false`` for T5.1.1.
        """
        key = "scale_decoder_outputs"
        scale = self.config.get(key)
        if scale is None and self.honours_tie_word_embeddings:
            key, scale = "tie_word_embeddings", self.config.get("tie_word_embeddings")
        if scale is None:
            return self.default_tied
        check_bools(**{key: scale})
        return bool(scale)

    # -- layers ---------------------------------------------------------------------------
    def make_blocks(self, count, cross_attention, prefix):
        return [T5Block(self.heads, self.head_size, self.d_ff, self.activation, glu=self.glu,
                        cross_attention=cross_attention, epsilon=self.epsilon,
                        dropout_rate=self.dropout_rate, kernel_initializer=self.initializer,
                        name=f"{prefix}-Transformer-{i}") for i in range(count)]

    def build(self):
        self.token_embedding = Embedding(self.vocab_size, self.d_model,
                                         embeddings_initializer=self.initializer,
                                         name="Embedding-Token")
        self.dropout = keras.layers.Dropout(self.dropout_rate, name="Dropout")
        self.encoder_bias = RelativePositionBias(self.heads, self.num_buckets,
                                                 self.max_distance, bidirectional=True,
                                                 name="Encoder-Relative-Position")
        self.decoder_bias = RelativePositionBias(self.heads, self.num_buckets,
                                                 self.max_distance, bidirectional=False,
                                                 name="Decoder-Relative-Position")
        self.encoder_blocks = self.make_blocks(self.num_layers, False, "Encoder")
        self.decoder_blocks = self.make_blocks(self.num_decoder_layers, True, "Decoder")
        self.encoder_norm = rms_norm(self.epsilon, name="Encoder-Output-Norm")
        self.decoder_norm = rms_norm(self.epsilon, name="Decoder-Output-Norm")
        if self.scale_output:
            self.output_scale = keras.layers.Rescaling(self.d_model ** -0.5,
                                                       name="Decoder-Output-Scale")
        if not self.tied:
            self.output_dense = keras.layers.Dense(self.vocab_size, use_bias=False,
                                                   kernel_initializer=self.initializer,
                                                   name="Decoder-Output-LM")
        self.encoder_mask = AttentionMask("padding", pad_id=self.pad_id,
                                          name="Encoder-Attention-Mask")
        self.output_softmax = keras.layers.Activation("softmax", dtype="float32",
                                                      name="Decoder-Output-Softmax")
        # flat graphs over the same layers (a nested model would not reload from .keras)
        length = (self.sequence_length,)
        encoder_ids = keras.Input(length, dtype="int32", name="Encoder-Input-Token")
        decoder_ids = keras.Input(length, dtype="int32", name="Decoder-Input-Token")
        context = keras.Input((None, self.d_model), name="Decoder-Input-Context")
        context_real = keras.Input((None,), dtype="int32", name="Decoder-Input-Context-Real")
        self.encoder = keras.Model(encoder_ids, self.encode(encoder_ids),
                                   name=f"{self.name}_encoder")
        real_mask = AttentionMask("padding", pad_id=0, name="Decoder-Context-Mask")
        graph = keras.Model([context, decoder_ids, context_real],
                            self.decode(context, decoder_ids, real_mask(context_real)),
                            name=f"{self.name}_decoder_graph")
        self.decoder = ContextDecoder(graph, pad_id=self.pad_id, name=f"{self.name}_decoder")
        outputs = self.decode(self.encode(encoder_ids), decoder_ids,
                              self.encoder_mask(encoder_ids), self.with_lm)
        self.model = keras.Model([encoder_ids, decoder_ids], outputs, name=self.name)
        return self.model

    def encode(self, token_ids):
        """Encoder graph: ids ``(batch, src_len)`` to states (Keras mask: ids != pad)."""
        x = self.dropout(self.token_embedding(token_ids))
        bias = self.encoder_bias(x, x)
        mask = self.encoder_mask(token_ids)
        for block in self.encoder_blocks:
            x = block(x, bias, attention_mask=mask)
        x = self.dropout(self.encoder_norm(x))
        return OutputMask(self.pad_id)([x, token_ids])

    def decode(self, context, token_ids, context_mask, with_lm=True):
        """Decoder graph: encoder states, decoder ids ``(batch, tgt_len)`` and the source
        padding mask ``(batch, 1, 1, src_len)`` to probabilities (``with_lm``: ``True``; an
        activation name such as ``"linear"``; ``False``: the final states)."""
        x = self.dropout(self.token_embedding(token_ids))
        bias = self.decoder_bias(x, x)
        # bert4keras adds the decoder's (causal-bucket) bias to the cross-attention too
        context_bias = self.decoder_bias(x, context) if self.cross_position_bias else None
        for block in self.decoder_blocks:
            x = block(x, bias, causal=True, context=context, context_mask=context_mask,
                      context_bias=context_bias)
        x = self.dropout(self.decoder_norm(x))
        if with_lm is True:
            x = self.output_softmax(self.logits(x))
        elif with_lm is False:
            x = self.output_scale(x) if self.scale_output else x
        else:
            x = keras.layers.Activation(with_lm, dtype="float32",
                                        name="Decoder-Output-Activation")(self.logits(x))
        return OutputMask(self.pad_id, keep_first=True)([x, token_ids])

    def logits(self, x, transposed_kernel=None):
        """Vocabulary logits of the final decoder states: scaled by ``d_model^-0.5`` when
        tied (or with ``bert4keras_scaling``), then the shared embedding or the output
        projection (``transposed_kernel``: its kernel as ``(vocab, d_model)``, which
        decoding transposes once per call since XLA's CPU dot is faster with it)."""
        if self.scale_output:
            x = self.output_scale(x)
        if self.tied:
            return self.token_embedding(x, reverse=True)
        if transposed_kernel is not None:
            return ops.einsum("bqd,vd->bqv", x, transposed_kernel)
        return self.output_dense(x)

    def generate(self, token_ids, max_length=32, method="greedy", use_cache=True, **kwargs):
        """Decode a batch of source ``token_ids (batch, src_len)`` with
        ``keraformer.generation`` (``method``: ``greedy``, ``beam`` or ``sample``;
        ``end_id`` (default: the config's ``eos_token_id``), ``beam_size``, ``top_k``,
        ``top_p``, ``min_length``, ``seed``, ``loop``... in ``kwargs``). Returns int32
        ``(batch, <= max_length)`` generated ids (after the start token), padded with
        ``pad_token_id`` after the end id. ``use_cache=False`` re-runs the model on the
        whole prefix every step (a reference; eager, host loop). See
        ``keraformer.models.decoding``."""
        return decoding.seq2seq_decoder(self).generate(token_ids, max_length, method,
                                                       use_cache, **kwargs)

    # -- checkpoint names -----------------------------------------------------------------
    def attention_mapping(self, prefix, attention):
        return {prefix + "q": attention.query_dense.kernel,
                prefix + "k": attention.key_dense.kernel,
                prefix + "v": attention.value_dense.kernel,
                prefix + "o": attention.output_dense.kernel}

    def feedforward_mapping(self, prefix, ffn):
        p = prefix + "DenseReluDense/"
        if self.glu:
            return {p + "wi_0/kernel": ffn.input_dense.kernel,
                    p + "wi_1/kernel": ffn.gate_dense.kernel,
                    p + "wo/kernel": ffn.output_dense.kernel}
        return {p + "wi/kernel": ffn.input_dense.kernel, p + "wo/kernel": ffn.output_dense.kernel}

    def block_mapping(self, stack, i, block):
        """Checkpoint names of layer ``i`` of ``stack`` (``encoder`` or ``decoder``)."""
        p = f"{stack}/block_{i:03d}/"
        norm = self.norm_name
        mapping = self.attention_mapping(p + "layer_000/SelfAttention/", block.self_attention)
        mapping[p + f"layer_000/{norm}/scale"] = block.self_attention_norm.gamma
        ff = "layer_001/"
        if block.has_cross_attention:
            mapping.update(self.attention_mapping(p + "layer_001/EncDecAttention/",
                                                  block.cross_attention))
            mapping[p + f"layer_001/{norm}/scale"] = block.cross_attention_norm.gamma
            ff = "layer_002/"
        mapping.update(self.feedforward_mapping(p + ff, block.feedforward))
        mapping[p + ff + f"{norm}/scale"] = block.feedforward_norm.gamma
        return mapping

    def variable_mapping(self):
        bias = "block_000/layer_000/SelfAttention/relative_attention_bias"
        mapping = {"shared/embedding": self.token_embedding.embeddings,
                   f"encoder/{bias}": self.encoder_bias.embeddings,
                   f"decoder/{bias}": self.decoder_bias.embeddings,
                   f"encoder/{self.final_norm_name}/scale": self.encoder_norm.gamma,
                   f"decoder/{self.final_norm_name}/scale": self.decoder_norm.gamma}
        for stack, blocks in (("encoder", self.encoder_blocks),
                              ("decoder", self.decoder_blocks)):
            for i, block in enumerate(blocks):
                mapping.update(self.block_mapping(stack, i, block))
        if not self.tied and self.with_lm is not False:
            mapping["decoder/logits/kernel"] = self.output_dense.kernel
        return mapping

    def unused_allowed(self, name):
        """The untied output projection of a checkpoint when built with ``with_lm=False``."""
        return name == "decoder/logits/kernel" and self.with_lm is False

    def to_keras(self, name, array):
        if name == "shared/embedding":
            return self.vocabulary.rows(array)
        if name == "decoder/logits/kernel":  # (d_model, vocab)
            return self.vocabulary.rows(array.T).T
        return self.to_checkpoint(name, array)

    def to_checkpoint(self, name, array):
        if name.endswith("relative_attention_bias"):
            return array.T  # Google stores (heads, buckets)
        return array

    def check_checkpoint(self, arrays):
        """A hint when the checkpoint is of another T5 version."""
        looks_like = checkpoint_version(arrays)
        if looks_like is not None and looks_like[0] != self.glu:
            raise ValueError(
                f"the checkpoint looks like {looks_like[1]} (it has "
                f"{'wi_0/wi_1' if looks_like[0] else 'wi'} feed-forward kernels) but the model "
                f"was built as {self.version!r} with feed_forward_proj="
                f"{self.feed_forward_proj!r}; build it with model="
                f"{'t5.1.1 or mt5' if looks_like[0] else 't5'!r}")

    def rename(self, arrays, naming):
        if naming != "pytorch":
            return super().rename(arrays, naming)
        converted = (hf_to_google(key, array, self.norm_name, self.final_norm_name, True)
                     for key, array in arrays.items())
        result = {name: value for name, value in converted if name is not None}
        if self.tied:
            result.pop("decoder/logits/kernel", None)
        elif "decoder/logits/kernel" not in result and "shared/embedding" in result:
            # transformers 5 saves T5.1.1/mT5 with lm_head tied to the shared embedding
            result["decoder/logits/kernel"] = result["shared/embedding"].T
        return result

    # -- Hugging Face export -----------------------------------------------------------
    def hf_config(self):
        """The Hugging Face ``config.json`` dict of this architecture.

        ``tie_word_embeddings`` says whether logits use the shared embedding scaled by
        ``d_model^-0.5`` (T5 1.0) or an own ``lm_head`` (T5.1.1, mT5), as in Google's
        converted configs; transformers 5 reads it as ``scale_decoder_outputs``. An mT5 built
        tied is written as ``t5``, since ``MT5ForConditionalGeneration`` never scales.
        """
        mt5 = self.version == "mt5" and not self.tied
        return {
            "model_type": "mt5" if mt5 else "t5",
            "architectures": ["MT5ForConditionalGeneration" if mt5
                              else "T5ForConditionalGeneration"],
            "vocab_size": int(self.vocab_size), "d_model": self.d_model, "d_kv": self.head_size,
            "d_ff": self.d_ff, "num_layers": self.num_layers,
            "num_decoder_layers": self.num_decoder_layers, "num_heads": self.heads,
            "relative_attention_num_buckets": self.num_buckets,
            "relative_attention_max_distance": self.max_distance,
            "feed_forward_proj": self.feed_forward_proj, "layer_norm_epsilon": self.epsilon,
            "dropout_rate": self.dropout_rate,
            "initializer_factor": self.config.get("initializer_factor", 1.0),
            "tie_word_embeddings": self.tied, "is_encoder_decoder": True,
            "pad_token_id": self.pad_id, "eos_token_id": self.config.get("eos_token_id", 1),
            "decoder_start_token_id": self.start_id,
        }

    def save_pretrained(self, directory):
        """Write a Hugging Face directory (``config.json`` + ``model.safetensors``) that
        ``T5ForConditionalGeneration`` / ``MT5ForConditionalGeneration`` (and ``T5Model``,
        ``T5EncoderModel``) load with the same outputs; returns it. Untied models write
        ``lm_head.weight``, which transformers 5 keeps (it warns that it does not tie it)."""
        if self.scale_output and not self.tied or self.cross_position_bias:
            option = "cross_position_bias" if self.cross_position_bias else "bert4keras_scaling"
            raise ValueError(f"save_pretrained: `{option}=True` is bert4keras' numerics, which "
                             f"transformers' T5 cannot express; use save_weights_as_checkpoint "
                             f"or save instead")
        arrays = dict(google_to_hf(name, array, self.norm_name, self.final_norm_name)
                      for name, array in self.checkpoint_arrays().items())
        return checkpoints.write_hf_directory(directory, arrays, self.hf_config())


class T5v11(T5):
    """T5.1.1: gated-GELU feed-forward (``wi_0``, ``wi_1``, ``wo``), untied output projection
    (``decoder/logits/kernel``), no output scaling."""

    model_name = version = "t5.1.1"
    default_feed_forward = "gated-gelu"
    default_tied = False


class MT5(T5v11):
    """mT5: T5.1.1's architecture; Google checkpoints name the norms ``rms_norm``."""

    model_name = version = "mt5"
    honours_tie_word_embeddings = False  # always true in mT5 configs, yet mT5 is untied
    norm_name, final_norm_name = "rms_norm", "rms_norm"


def checkpoint_version(arrays):
    """``(gated, description)`` judged from a checkpoint's feed-forward names, or ``None``."""
    names = list(arrays)
    if any(name.endswith("DenseReluDense/wi_0/kernel") for name in names):
        return True, "T5.1.1/mT5 (gated feed-forward)"
    if any(name.endswith("DenseReluDense/wi/kernel") for name in names):
        return False, "T5 1.0 (ReLU feed-forward)"
    return None


HF_ATTENTIONS = ("SelfAttention", "EncDecAttention")


def hf_to_google(key, array, norm_name, final_norm_name, transposed):
    """One Hugging Face T5 variable as ``(google_name, array)``; ``(None, None)`` to drop.

    ``encoder.block.0.layer.0.SelfAttention.q.weight`` (PyTorch ``(out, in)``) becomes
    ``encoder/block_000/layer_000/SelfAttention/q``; ``lm_head.weight`` becomes
    ``decoder/logits/kernel``; relative biases keep Google's ``(heads, buckets)`` layout.
    """
    parts = key.split(".")
    leaf = parts[-1]
    if key in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        return ("shared/embedding", array) if key == "shared.weight" else (None, None)
    if key == "lm_head.weight":
        return "decoder/logits/kernel", array.T if transposed else array
    if len(parts) == 3 and parts[1] == "final_layer_norm":
        return f"{parts[0]}/{final_norm_name}/scale", array
    if len(parts) < 6 or parts[1] != "block" or parts[3] != "layer":
        raise ValueError(f"unexpected variable {key!r} in a Hugging Face T5 checkpoint")
    prefix = f"{parts[0]}/block_{int(parts[2]):03d}/layer_{int(parts[4]):03d}/"
    module = parts[5]
    if module == "layer_norm":
        return prefix + f"{norm_name}/scale", array
    if module in HF_ATTENTIONS and parts[6] == "relative_attention_bias":
        return prefix + f"{module}/relative_attention_bias", array.T
    kernel = array.T if transposed and leaf == "weight" else array
    if module in HF_ATTENTIONS:
        return prefix + f"{module}/{parts[6]}", kernel
    if module == "DenseReluDense":
        return prefix + f"DenseReluDense/{parts[6]}/kernel", kernel
    raise ValueError(f"unexpected variable {key!r} in a Hugging Face T5 checkpoint")


def google_to_hf(name, array, norm_name, final_norm_name):
    """Inverse of :func:`hf_to_google` for PyTorch names: one Google T5 variable as
    ``(hf_name, array)``, kernels transposed to ``(out, in)``, relative biases to
    ``(buckets, heads)``."""
    if name == "shared/embedding":
        return "shared.weight", array
    if name == "decoder/logits/kernel":
        return "lm_head.weight", array.T
    parts = name.split("/")
    if len(parts) == 3 and parts[1:] == [final_norm_name, "scale"]:
        return f"{parts[0]}.final_layer_norm.weight", array
    if len(parts) < 5 or not parts[1].startswith("block_") or not parts[2].startswith("layer_"):
        raise ValueError(f"unexpected variable {name!r} in a Google T5 checkpoint")
    prefix = f"{parts[0]}.block.{int(parts[1][6:])}.layer.{int(parts[2][6:])}."
    if parts[3:] == [norm_name, "scale"]:
        return prefix + "layer_norm.weight", array
    if parts[3] in HF_ATTENTIONS:
        return prefix + f"{parts[3]}.{parts[4]}.weight", array.T
    if parts[3] == "DenseReluDense" and parts[5:] == ["kernel"]:
        return prefix + f"DenseReluDense.{parts[4]}.weight", array.T
    raise ValueError(f"unexpected variable {name!r} in a Google T5 checkpoint")
