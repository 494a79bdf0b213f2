"""T5 (Raffel et al. 2020), T5.1.1 and mT5 (Xue et al. 2021): encoder-decoder builders.

Pre-norm blocks with T5's RMS norm (scale only), no biases, unscaled attention logits and a
relative position bias computed once per stack (bidirectional in the encoder, causal in the
decoder) and shared by all its layers; cross-attention has no position bias. T5 1.0 uses a ReLU
feed-forward and an output projection tied to the shared embedding (decoder output scaled by
``d_model^-0.5``); T5.1.1 and mT5 a gated-GELU feed-forward and an untied output projection.

``builder.encoder``: ``token_ids (batch, src_len)`` -> hidden states ``(batch, src_len,
d_model)``, exactly zero at padding (id 0) so that ``builder.decoder`` can recover the source
padding mask from them. ``builder.decoder``: ``[encoder_output, decoder_token_ids]`` ->
next-token probabilities ``(batch, tgt_len, vocab)``. ``builder.model``: ``[encoder_token_ids,
decoder_token_ids]`` -> probabilities, trainable with ``model.fit`` (teacher forcing).
``builder.generate`` decodes with a key/value cache (see ``keraformer.generation``).
"""

import keras
import numpy as np
from keras import ops

from keraformer import checkpoints, generation
from keraformer.attentions import MultiHeadAttention
from keraformer.checks import check_positive_ints
from keraformer.embedding import Embedding
from keraformer.feedforward import FeedForward
from keraformer.masks import padding_mask
from keraformer.models import decoding
from keraformer.models.base import Transformer
from keraformer.normalization import LayerNormalization
from keraformer.positions import RelativePositionBias
from keraformer.positions.relative import relative_position_bucket


def feed_forward_kind(proj):
    """``(activation, glu)`` of a Hugging Face ``feed_forward_proj`` such as ``gated-gelu``."""
    parts = str(proj).split("-")
    if len(parts) > 2 or len(parts) == 2 and parts[0] != "gated":
        raise ValueError(f"`feed_forward_proj` must be 'ACT' or 'gated-ACT' (e.g. 'relu', "
                         f"'gated-gelu'); received {proj!r}")
    activation = "gelu_new" if proj == "gated-gelu" else parts[-1]
    return activation, len(parts) == 2


def rms_norm(epsilon, name):
    """T5's normalisation: ``x / sqrt(mean(x²) + eps) · scale`` (no mean, no bias)."""
    return LayerNormalization(rms=True, center=False, epsilon=epsilon, name=name)


@keras.saving.register_keras_serializable(package="keraformer")
class T5Block(keras.layers.Layer):
    """One pre-norm T5 layer: self-attention, optional cross-attention, feed-forward.

    Call ``block(x, position_bias, attention_mask=None, causal=False, context=None,
    context_mask=None)`` with ``x (batch, length, d_model)``, the stack's shared
    ``position_bias (1, heads, length, length)``, boolean masks broadcasting to ``(batch, heads, q_len, k_len)`` and, for decoder
    blocks, the encoder output ``context (batch, src_len, d_model)``. Returns
    ``(batch, length, d_model)``. ``step`` is the cached single-position form for decoding.
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
        return LayerNormalization(rms=True, center=False, epsilon=self.epsilon, name=name,
                                  dtype=self.dtype_policy)

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
             context_mask=None, training=None):
        h = self.self_attention_norm(x)
        h = self.self_attention(h, mask=attention_mask, bias=position_bias, causal=causal,
                                training=training)
        x = x + self.dropout(h, training=training)
        if self.has_cross_attention:
            h = self.cross_attention(self.cross_attention_norm(x), context, mask=context_mask,
                                     training=training)
            x = x + self.dropout(h, training=training)
        h = self.feedforward(self.feedforward_norm(x), training=training)
        return x + self.dropout(h, training=training)

    def context_key_value(self, context):
        """Cross-attention keys and values ``(batch, src_len, heads, d_kv)`` of the encoder
        output, computed once per source and shared by all its beams."""
        return decoding.project_key_value(self.cross_attention, context)

    def cross_and_feedforward(self, x, cache, context_mask):
        """The cached cross-attention and feed-forward residuals of a decoding step."""
        h = self.cross_attention_norm(x)
        q = decoding.split_heads(self.cross_attention.query_dense(h), self.heads)
        out = decoding.attend(q, [(cache["context_key"], cache["context_value"], context_mask,
                                   None)], decoding.logit_scale(self.cross_attention))
        x = x + self.cross_attention.output_dense(out)
        return x + self.feedforward(self.feedforward_norm(x))

    def start(self, x, position_bias, cache, context_mask):
        """Decode the start token ``x (batch, 1, d_model)``; its keys and values become the
        cache's shared ``prompt_key``/``prompt_value``."""
        h = self.self_attention_norm(x)
        q, k, v = decoding.project(self.self_attention, h)
        out = decoding.attend(q, [(k, v, None, position_bias)],
                              decoding.logit_scale(self.self_attention))
        x = x + self.self_attention.output_dense(out)
        return (self.cross_and_feedforward(x, cache, context_mask),
                {**cache, "prompt_key": k, "prompt_value": v})

    def step(self, x, position_biases, cache, index, generated_mask, context_mask):
        """Decode the tokens of step ``index`` of every beam, ``x (batch, beams, d_model)``.

        ``cache`` holds this layer's ``prompt_key``/``prompt_value`` (the start token),
        ``key``/``value`` ``(batch, beams, max_length, heads, d_kv)`` (written at
        ``index``) and the cross-attention ``context_key``/``context_value``;
        ``position_biases`` are the relative biases of both key blocks. Returns the output
        and the updated cache (see ``keraformer.models.decoding``).
        """
        h = self.self_attention_norm(x)
        q, k, v = decoding.project(self.self_attention, h)
        keys = decoding.write(cache["key"], k, index)
        values = decoding.write(cache["value"], v, index)
        blocks = [(cache["prompt_key"], cache["prompt_value"], None, position_biases[0]),
                  (decoding.flatten_beams(keys), decoding.flatten_beams(values), generated_mask,
                   position_biases[1])]
        out = decoding.attend(q, blocks, decoding.logit_scale(self.self_attention))
        x = x + self.self_attention.output_dense(out)
        return (self.cross_and_feedforward(x, cache, context_mask),
                {**cache, "key": keys, "value": values})

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "head_size": self.head_size,
                "intermediate_size": self.intermediate_size, "activation": self.activation,
                "glu": self.glu, "cross_attention": self.has_cross_attention,
                "epsilon": self.epsilon, "dropout_rate": self.dropout_rate,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


@keras.saving.register_keras_serializable(package="keraformer")
class ZeroPadding(keras.layers.Layer):
    """Zero the hidden states ``(batch, length, dim)`` where ``token_ids`` equal ``pad_id``."""

    def __init__(self, pad_id=0, **kwargs):
        super().__init__(**kwargs)
        self.pad_id = pad_id

    def call(self, x, token_ids):
        keep = ops.cast(ops.not_equal(token_ids, self.pad_id), x.dtype)
        return x * keep[..., None]

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}


def context_mask(encoder_output):
    """Key mask ``(batch, 1, 1, src_len)``: ``False`` where the encoder output is all zero."""
    return ops.any(ops.not_equal(encoder_output, 0), axis=-1)[:, None, None, :]


@keras.saving.register_keras_serializable(package="keraformer")
class ContextMask(keras.layers.Layer):
    """The source padding mask recovered from a zero-padded encoder output (see ``ZeroPadding``).

    Input ``(batch, src_len, d_model)``; output boolean ``(batch, 1, 1, src_len)``.
    """

    def call(self, encoder_output):
        return context_mask(encoder_output)

    def compute_output_spec(self, encoder_output):
        return keras.KerasTensor((encoder_output.shape[0], 1, 1, encoder_output.shape[1]),
                                 dtype="bool")


class T5(Transformer):
    """T5 1.0 builder (ReLU feed-forward, tied and scaled output projection).

    Config keys are Hugging Face's (``vocab_size``, ``d_model``, ``d_kv``, ``d_ff``,
    ``num_layers``, ``num_decoder_layers``, ``num_heads``, ``relative_attention_num_buckets``,
    ``relative_attention_max_distance``, ``feed_forward_proj``, ``layer_norm_epsilon``,
    ``tie_word_embeddings``, ``decoder_start_token_id``, ``eos_token_id``, ``pad_token_id``,
    ``dropout_rate``); ``feed_forward_proj`` and ``tie_word_embeddings`` default to the
    version's values.
    """

    APPLICATIONS = ("encoder", "seq2seq")
    version = "t5"
    default_feed_forward = "relu"
    default_tied = True
    honours_tie_word_embeddings = True
    norm_name, final_norm_name = "layer_norm", "final_layer_norm"

    def __init__(self, config, application="encoder", dropout_rate=None, name=None):
        super().__init__(config, application)
        (self.vocab_size, self.d_model, self.head_size, self.d_ff, self.num_layers,
         self.heads) = self.require("vocab_size", "d_model", "d_kv", "d_ff", "num_layers",
                                    "num_heads")
        self.num_decoder_layers = self.config.get("num_decoder_layers") or self.num_layers
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
        self.epsilon = self.config.get("layer_norm_epsilon", 1e-6)
        self.dropout_rate = (self.config.get("dropout_rate", 0.1) if dropout_rate is None
                             else dropout_rate)
        self.pad_id = self.config.get("pad_token_id", 0) or 0
        self.start_id = self.config.get("decoder_start_token_id", 0) or 0
        eos = self.config.get("eos_token_id", 1)
        self.end_id = eos[0] if isinstance(eos, (list, tuple)) else eos
        self.name = name or self.version.replace(".", "_")
        self.initializer = keras.initializers.RandomNormal(
            stddev=self.config.get("initializer_factor", 1.0) * 0.05)

    def output_tied(self):
        """Whether logits use the shared embedding scaled by ``d_model^-0.5`` (T5 1.0).

        transformers 5 writes ``scale_decoder_outputs`` (and always ``tie_word_embeddings:
        true``); older configs say ``tie_word_embeddings: false`` for T5.1.1.
        """
        scale = self.config.get("scale_decoder_outputs")
        if scale is None and self.honours_tie_word_embeddings:
            scale = self.config.get("tie_word_embeddings")
        return self.default_tied if scale is None else bool(scale)

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
        self.encoder_norm = rms_norm(self.epsilon, "Encoder-Output-Norm")
        self.decoder_norm = rms_norm(self.epsilon, "Decoder-Output-Norm")
        if self.tied:
            self.output_scale = keras.layers.Rescaling(self.d_model ** -0.5,
                                                       name="Decoder-Output-Scale")
        else:
            self.output_dense = keras.layers.Dense(self.vocab_size, use_bias=False,
                                                   kernel_initializer=self.initializer,
                                                   name="Decoder-Output-LM")
        self.zero_padding = ZeroPadding(self.pad_id, name="Encoder-Output-Padding")
        self.encoder_mask = PaddingMask(self.pad_id, name="Encoder-Attention-Mask")
        self.context_mask = ContextMask(name="Decoder-Context-Mask")
        self.output_softmax = keras.layers.Activation("softmax", dtype="float32",
                                                      name="Decoder-Output-Softmax")
        # three flat graphs over the same layers (a nested model would not reload from .keras)
        encoder_ids = keras.Input((None,), dtype="int32", name="Encoder-Input-Token")
        decoder_ids = keras.Input((None,), dtype="int32", name="Decoder-Input-Token")
        context = keras.Input((None, self.d_model), name="Decoder-Input-Context")
        self.encoder = keras.Model(encoder_ids, self.encode(encoder_ids),
                                   name=f"{self.name}_encoder")
        self.decoder = keras.Model([context, decoder_ids], self.decode(context, decoder_ids),
                                   name=f"{self.name}_decoder")
        probs = self.decode(self.encode(encoder_ids), decoder_ids)
        self.model = keras.Model([encoder_ids, decoder_ids], probs, name=self.name)
        return self.model

    def encode(self, token_ids):
        """Encoder graph: ids ``(batch, src_len)`` to zero-padded states."""
        x = self.dropout(self.token_embedding(token_ids))
        bias = self.encoder_bias(x, x)
        mask = self.encoder_mask(token_ids)
        for block in self.encoder_blocks:
            x = block(x, bias, attention_mask=mask)
        x = self.dropout(self.encoder_norm(x))
        return self.zero_padding(x, token_ids)

    def decode(self, context, token_ids):
        """Decoder graph: encoder states and ids ``(batch, tgt_len)`` to probabilities."""
        mask = self.context_mask(context)
        x = self.dropout(self.token_embedding(token_ids))
        bias = self.decoder_bias(x, x)
        for block in self.decoder_blocks:
            x = block(x, bias, causal=True, context=context, context_mask=mask)
        return self.output_softmax(self.logits(self.dropout(self.decoder_norm(x))))

    def logits(self, x):
        """Vocabulary logits of the final decoder states (tied and scaled, or untied)."""
        if self.tied:
            return self.token_embedding(self.output_scale(x), reverse=True)
        return self.output_dense(x)

    # -- cached decoding ------------------------------------------------------------------
    def initial_cache(self, encoder_output, context_mask, max_length, beams=1):
        """Decoding state for ``encoder_output (batch, src_len, d_model)`` and its key mask
        ``(batch, 1, 1, src_len)``: per decoder layer the cross-attention keys/values,
        computed once per source (never per beam), and an empty self-attention cache
        ``(batch, beams, max_length, heads, d_kv)``; with beams, the ``slots`` of
        ``keraformer.models.decoding``."""
        encoder_output = ops.convert_to_tensor(encoder_output, self.decoder_norm.compute_dtype)
        batch = ops.shape(encoder_output)[0]
        layers = []
        for block in self.decoder_blocks:
            k, v = block.context_key_value(encoder_output)
            empty = ops.zeros((batch, beams, max_length, self.heads, self.head_size), k.dtype)
            layers.append({"key": empty, "value": empty, "context_key": k, "context_value": v})
        cache = {"layers": layers, "context_mask": context_mask}
        if beams > 1:
            cache["slots"] = ops.zeros((batch, beams, max_length), "int32")
        return cache

    def decoder_position_bias(self, query_position, key_positions):
        """Relative bias ``(1, heads, 1, keys)`` of one decoder query position."""
        buckets = relative_position_bucket(key_positions - query_position, False,
                                           self.num_buckets, self.max_distance)
        table = ops.cast(self.decoder_bias.embeddings, self.decoder_bias.compute_dtype)
        return ops.transpose(ops.take(table, buckets, axis=0))[None, :, None, :]

    def decode_start(self, token_ids, max_length, beams=1):
        """Encode source ``token_ids (batch, src_len)`` and decode the start token: the first
        generated token's log-probabilities ``(batch, vocab)`` and the cache."""
        encoder_output = self.encoder(token_ids)
        cache = self.initial_cache(encoder_output, padding_mask(token_ids, self.pad_id),
                                   max_length, beams)
        start = ops.full((ops.shape(token_ids)[0], 1), self.start_id, "int32")
        x = self.token_embedding(start)
        bias = self.decoder_position_bias(0, ops.zeros((1,), "int32"))
        layers = []
        for block, layer in zip(self.decoder_blocks, cache["layers"]):
            x, layer = block.start(x, bias, layer, cache["context_mask"])
            layers.append(layer)
        logits = ops.cast(self.logits(self.decoder_norm(x))[:, -1], "float32")
        cache = {**cache, "layers": layers}
        if not self.tied:
            # the output kernel transposed to (vocab, d_model) once per call: XLA's CPU dot
            # multiplies by it about twice as fast as by the (d_model, vocab) kernel
            cache["output_kernel"] = ops.transpose(ops.cast(self.output_dense.kernel,
                                                            self.output_dense.compute_dtype))
        return ops.log_softmax(logits, axis=-1), cache

    def decode_step(self, token_ids, index, cache, parents=None):
        """The ``keraformer.generation`` step: log-probabilities ``(rows, vocab)`` of the token
        after ``token_ids (rows, 1)``, generated at ``index`` (decoder position ``index + 1``),
        and the updated cache; ``rows`` is ``batch · beams``."""
        first = cache["layers"][0]
        batch, beams, max_length = ops.shape(first["key"])[0], *first["key"].shape[1:3]
        x = self.token_embedding(ops.reshape(token_ids, (batch, beams)))
        cache = dict(cache)
        slots = None
        if parents is not None and beams > 1:
            slots = cache["slots"] = decoding.follow_parents(cache["slots"], parents, index)
        query = index + 1
        biases = (self.decoder_position_bias(query, ops.zeros((1,), "int32")),
                  ops.tile(self.decoder_position_bias(query, ops.arange(1, max_length + 1)),
                           (1, 1, 1, beams)))
        mask = decoding.generated_mask(index, max_length, slots)
        layers = []
        for block, layer in zip(self.decoder_blocks, cache["layers"]):
            x, layer = block.step(x, biases, layer, index, mask, cache["context_mask"])
            layers.append(layer)
        x = self.decoder_norm(x)
        if "output_kernel" in cache:
            logits = ops.einsum("bqd,vd->bqv", x, cache["output_kernel"])
        else:
            logits = self.logits(x)
        logits = ops.reshape(ops.cast(logits, "float32"), (ops.shape(token_ids)[0], -1))
        return ops.log_softmax(logits, axis=-1), {**cache, "layers": layers}

    def full_decode_start(self, token_ids, max_length, beams=1):
        """Without a cache: first log-probabilities from the whole model, and a cache of
        every row's source and decoder tokens for :meth:`full_decode_step`."""
        batch = len(token_ids)
        start = np.full((batch, 1), self.start_id, "int32")
        probs = self.model([ops.convert_to_tensor(token_ids), ops.convert_to_tensor(start)])
        log_probs = ops.log(ops.maximum(ops.cast(probs[:, -1], "float32"), 1e-30))
        rows = np.repeat(token_ids, beams, axis=0)
        tokens = np.full((len(rows), max_length + 1), self.start_id, "int32")
        return log_probs, {"sources": ops.convert_to_tensor(rows),
                           "tokens": ops.convert_to_tensor(tokens)}

    def full_decode_step(self, token_ids, index, cache, parents=None):
        """A step that re-runs the whole model over the decoded prefix (no cache; eager)."""
        tokens = cache["tokens"]
        if parents is not None:
            tokens = ops.take(tokens, parents, axis=0)
        index = int(ops.convert_to_numpy(index))
        tokens = ops.slice_update(tokens, (0, index + 1), token_ids)
        probs = self.model([cache["sources"], tokens[:, :index + 2]])
        log_probs = ops.log(ops.maximum(ops.cast(probs[:, -1], "float32"), 1e-30))
        return log_probs, {**cache, "tokens": tokens}

    def check_sources(self, token_ids):
        ids = np.asarray(token_ids)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"`token_ids` must have shape (batch, src_len) with src_len >= 1; "
                             f"received shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"`token_ids` must be integers; received dtype {ids.dtype}")
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bad.any():
            raise ValueError(f"`token_ids` must lie in [0, vocab_size={self.vocab_size}); "
                             f"received {ids[bad][0]} at {tuple(np.argwhere(bad)[0])}")
        return ids.astype("int32")

    def generate(self, token_ids, max_length=32, method="greedy", use_cache=True, **kwargs):
        """Decode a batch of source ``token_ids (batch, src_len)`` with
        ``keraformer.generation`` (``method``: ``greedy``, ``beam`` or ``sample``;
        ``end_id`` (default: the config's ``eos_token_id``), ``beam_size``, ``top_k``,
        ``top_p``, ``min_length``, ``seed``, ``loop``... in ``kwargs``). Returns int32
        ``(batch, <= max_length)`` generated ids (after the start token), padded with
        ``pad_token_id`` after the end id. ``use_cache=False`` re-runs the model on the
        whole prefix every step (a reference; eager, host loop)."""
        end_id = kwargs.pop("end_id", self.end_id)
        kwargs.setdefault("pad_id", self.pad_id)
        decoding.check_use_cache(use_cache, kwargs)
        checked = generation.check_options(method, max_length, end_id, self.vocab_size,
                                           **kwargs)
        generation.check_token_id("decoder_start_token_id", self.start_id, self.vocab_size)
        ids = self.check_sources(token_ids)
        beams = checked["beam_size"] if method == "beam" else 1
        if not use_cache:
            if getattr(self, "uncached_generator", None) is None:
                self.uncached_generator = generation.Generator(self.full_decode_step)
            log_probs, cache = self.full_decode_start(ids, max_length, beams)
            return self.uncached_generator(cache, log_probs, end_id, max_length, method,
                                           self.vocab_size, **kwargs)
        if getattr(self, "generator", None) is None:  # compiled loops, kept per builder
            self.generator = generation.Generator(self.decode_step, self.model.weights)
            self.starts = {}
        key = (max_length, beams, checked["compile"])
        if key not in self.starts:
            start = lambda ids: self.decode_start(ids, max_length, beams)  # noqa: E731
            self.starts[key] = (generation.compile_function(start, self.model.weights)
                                if checked["compile"] else start)
        log_probs, cache = self.starts[key](ops.convert_to_tensor(ids))
        return self.generator(cache, log_probs, end_id, max_length, method, self.vocab_size,
                              **kwargs)

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
        if not self.tied:
            mapping["decoder/logits/kernel"] = self.output_dense.kernel
        return mapping

    def to_keras(self, name, array):
        if name.endswith("relative_attention_bias"):
            return array.T  # Google stores (heads, buckets)
        return array

    to_checkpoint = to_keras

    def assign(self, arrays):
        """As the base class, with a hint when the checkpoint is of another T5 version."""
        looks_like = checkpoint_version(arrays)
        if looks_like is not None and looks_like[0] != self.glu:
            raise ValueError(
                f"the checkpoint looks like {looks_like[1]} (it has "
                f"{'wi_0/wi_1' if looks_like[0] else 'wi'} feed-forward kernels) but the model "
                f"was built as {self.version!r} with feed_forward_proj="
                f"{self.feed_forward_proj!r}; build it with model="
                f"{'t5.1.1 or mt5' if looks_like[0] else 't5'!r}")
        super().assign(arrays)

    def from_hf_names(self, arrays, transposed):
        converted = (hf_to_google(key, array, self.norm_name, self.final_norm_name, transposed)
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
        arrays = dict(google_to_hf(name, array, self.norm_name, self.final_norm_name)
                      for name, array in self.checkpoint_arrays().items())
        return checkpoints.write_hf_directory(directory, arrays, self.hf_config())


class T5v11(T5):
    """T5.1.1: gated-GELU feed-forward (``wi_0``, ``wi_1``, ``wo``), untied output projection
    (``decoder/logits/kernel``), no output scaling."""

    version = "t5.1.1"
    default_feed_forward = "gated-gelu"
    default_tied = False


class MT5(T5v11):
    """mT5: T5.1.1's architecture; Google checkpoints name the norms ``rms_norm``."""

    version = "mt5"
    honours_tie_word_embeddings = False  # always true in mT5 configs, yet mT5 is untied
    norm_name, final_norm_name = "rms_norm", "rms_norm"


@keras.saving.register_keras_serializable(package="keraformer")
class PaddingMask(keras.layers.Layer):
    """Key mask ``(batch, 1, 1, length)`` of ``token_ids (batch, length)``, ``False`` at padding."""

    def __init__(self, pad_id=0, **kwargs):
        super().__init__(**kwargs)
        self.pad_id = pad_id

    def call(self, token_ids):
        return padding_mask(token_ids, self.pad_id)

    def compute_output_spec(self, token_ids):
        return keras.KerasTensor((token_ids.shape[0], 1, 1, token_ids.shape[1]), dtype="bool")

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}


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
