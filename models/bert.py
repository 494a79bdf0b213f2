"""BERT and RoBERTa (Devlin et al. 2019; Liu et al. 2019): the builder and its checkpoint map.

Inputs ``[token_ids, segment_ids]`` ``(batch, length)``; output the last hidden state
``(batch, length, hidden)``, or, as in bert4keras, the pooled ``[CLS]`` vector
(``with_pool``), the MLM head (``with_mlm``: probabilities, or logits with ``"linear"``) or
both ``[pooled, mlm]``. Token id 0 (``pad_token_id`` in the config) is padding.
"""

import re

import keras
import numpy as np

from keraformer import checkpoints
from keraformer.checks import check_positive_ints
from keraformer.embedding import Embedding
from keraformer.feedforward import activation_by_name
from keraformer.masks import AttentionMask
from keraformer.models.base import Transformer
from keraformer.models.blocks import TransformerBlock
from keraformer.normalization import LayerNormalization
from keraformer.positions import PositionEmbedding

APPLICATION_MASKS = {"encoder": "padding", "lm": "causal", "unilm": "unilm"}


class BERT(Transformer):
    """BERT builder. ``application``: ``encoder`` (bidirectional), ``lm`` (causal) or
    ``unilm`` (bidirectional over segment 0, causal over segment 1); ``lm`` and ``unilm``
    default to ``with_mlm=True``. ``keep_tokens`` keeps only those vocabulary rows of a
    checkpoint (a smaller vocabulary); ``hierarchical_position`` extends the position table
    to ``max_position`` (default ``max_position_embeddings²``).
    """

    APPLICATIONS = tuple(APPLICATION_MASKS)
    prefix = "bert"

    def __init__(self, config, application="encoder", with_pool=False, with_mlm=None,
                 keep_tokens=None, hierarchical_position=False, max_position=None,
                 dropout_rate=None, recompute=False, entropy_scaling=False, name=None):
        super().__init__(config, application)
        if with_mlm not in (None, True, False, "linear", "softmax"):
            raise ValueError(f"`with_mlm` must be True, False, 'linear' or 'softmax'; "
                             f"received {with_mlm!r}")
        self.with_pool = with_pool
        self.with_mlm = (application != "encoder") if with_mlm is None else with_mlm
        self.keep_tokens = None if keep_tokens is None else np.asarray(keep_tokens)
        self.hierarchical_position = hierarchical_position
        self.recompute, self.entropy_scaling = recompute, entropy_scaling
        (self.vocab_size, self.hidden_size, self.num_layers, self.heads,
         self.intermediate_size) = self.require("vocab_size", "hidden_size",
                                                "num_hidden_layers", "num_attention_heads",
                                                "intermediate_size")
        check_positive_ints(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                            num_hidden_layers=self.num_layers,
                            num_attention_heads=self.heads,
                            intermediate_size=self.intermediate_size)
        if self.hidden_size % self.heads:
            raise ValueError(f"`hidden_size` ({self.hidden_size}) must be a multiple of "
                             f"`num_attention_heads` ({self.heads})")
        if self.keep_tokens is not None:
            self.vocab_size = len(self.keep_tokens)
        self.max_position = max_position or self.config.get("max_position_embeddings", 512)
        self.dropout_rate = (self.config.get("hidden_dropout_prob", 0.1)
                             if dropout_rate is None else dropout_rate)
        self.attention_dropout_rate = (self.config.get("attention_probs_dropout_prob", 0.1)
                                       if dropout_rate is None else dropout_rate)
        self.activation = self.config.get("hidden_act", "gelu")
        self.epsilon = self.config.get("layer_norm_eps", 1e-12)
        self.pad_id = self.config.get("pad_token_id", 0) or 0
        self.name = name or self.prefix
        self.initializer = keras.initializers.TruncatedNormal(
            stddev=self.config.get("initializer_range", 0.02))

    # -- layers ---------------------------------------------------------------------------
    def block_options(self):
        """Keyword arguments of every ``TransformerBlock`` (subclasses change norms, rotary)."""
        return dict(activation=self.activation, norm="post",
                    normalization={"epsilon": self.epsilon},
                    dropout_rate=self.dropout_rate,
                    attention_dropout_rate=self.attention_dropout_rate,
                    entropy_scaling=self.entropy_scaling, recompute=self.recompute,
                    kernel_initializer=self.initializer)

    def embed(self, token_ids, segment_ids):
        """Token + segment + position embeddings, normalised and dropped out."""
        self.token_embedding = Embedding(self.vocab_size, self.hidden_size,
                                         embeddings_initializer=self.initializer,
                                         name="Embedding-Token")
        self.segment_embedding = Embedding(
            self.config.get("type_vocab_size", 2), self.hidden_size, ids_name="segment_ids",
            embeddings_initializer=self.initializer, name="Embedding-Segment")
        x = keras.layers.Add(name="Embedding-Add")(
            [self.token_embedding(token_ids), self.segment_embedding(segment_ids)])
        rows = self.max_position_table()
        if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
            raise ValueError(f"`max_position_embeddings` must give a position table of at "
                             f"least one row; received "
                             f"{self.config.get('max_position_embeddings')!r}, which gives "
                             f"{rows!r} rows for {type(self).__name__}")
        self.position_embedding = PositionEmbedding(
            rows, self.hidden_size, hierarchical=self.hierarchical_position,
            embeddings_initializer=self.initializer, name="Embedding-Position")
        x = self.position_embedding(x)
        self.embedding_norm = LayerNormalization(epsilon=self.epsilon, name="Embedding-Norm")
        x = self.embedding_norm(x)
        return keras.layers.Dropout(self.dropout_rate, name="Embedding-Dropout")(x)

    def max_position_table(self):
        return self.config.get("max_position_embeddings", 512)

    def build(self):
        token_ids = keras.Input((None,), dtype="int32", name="Input-Token")
        segment_ids = keras.Input((None,), dtype="int32", name="Input-Segment")
        x = self.embed(token_ids, segment_ids)
        mask_inputs = [token_ids, segment_ids] if self.application == "unilm" else token_ids
        mask = AttentionMask(APPLICATION_MASKS[self.application], pad_id=self.pad_id,
                             name="Attention-Mask")(mask_inputs)
        self.blocks = []
        for i in range(self.num_layers):
            block = TransformerBlock(self.heads, self.hidden_size // self.heads,
                                     self.intermediate_size, **self.block_options(),
                                     name=f"Transformer-{i}")
            x = block(x, attention_mask=mask)
            self.blocks.append(block)
        self.model = keras.Model([token_ids, segment_ids], self.heads_on(x), name=self.name)
        return self.model

    def heads_on(self, x):
        """The bert4keras output convention over the last hidden state ``x``."""
        outputs = []
        if self.with_pool:
            first = FirstToken(name="Pooler-First")(x)
            self.pooler = keras.layers.Dense(self.hidden_size, activation="tanh",
                                             kernel_initializer=self.initializer,
                                             name="Pooler")
            outputs.append(self.pooler(first))
        if self.with_mlm:
            outputs.append(self.mlm_head(x))
        if not outputs:
            return x
        return outputs[0] if len(outputs) == 1 else outputs

    def mlm_head(self, x):
        """Transform, normalise, tied output projection, bias and (optionally) softmax."""
        self.mlm_dense = keras.layers.Dense(self.hidden_size,
                                            activation=activation_by_name(self.activation),
                                            kernel_initializer=self.initializer,
                                            name="MLM-Dense")
        self.mlm_norm = LayerNormalization(epsilon=self.epsilon, name="MLM-Norm")
        x = self.mlm_norm(self.mlm_dense(x))
        x = self.token_embedding(x, reverse=True)
        self.mlm_bias = OutputBias(name="MLM-Bias")
        x = self.mlm_bias(x)
        activation = "linear" if self.with_mlm == "linear" else "softmax"
        return keras.layers.Activation(activation, dtype="float32", name="MLM-Activation")(x)

    def generate(self, token_ids, segment_ids=None, max_length=32, method="greedy",
                 end_id=None, **kwargs):
        """Continue right-padded prompts ``token_ids (batch, length)`` with a key/value cache
        (``lm`` and ``unilm``; ``unilm`` prompts are segment 0 unless ``segment_ids`` say
        otherwise, generated tokens segment 1). ``method``: ``greedy``, ``beam`` or
        ``sample``; options as ``keraformer.generation.generate``. Returns int32
        ``(batch, <= max_length)`` generated ids. See ``keraformer.models.decoding``."""
        from keraformer.models.decoding import language_model_decoder
        return language_model_decoder(self).generate(token_ids, segment_ids, max_length,
                                                     method, end_id, **kwargs)

    # -- checkpoint names -----------------------------------------------------------------
    def block_mapping(self, i, block):
        """Checkpoint names of one encoder block (Google BERT layout)."""
        p = f"{self.prefix}/encoder/layer_{i}/"
        att, ffn = block.attention, block.feedforward
        return {
            p + "attention/self/query/kernel": att.query_dense.kernel,
            p + "attention/self/query/bias": att.query_dense.bias,
            p + "attention/self/key/kernel": att.key_dense.kernel,
            p + "attention/self/key/bias": att.key_dense.bias,
            p + "attention/self/value/kernel": att.value_dense.kernel,
            p + "attention/self/value/bias": att.value_dense.bias,
            p + "attention/output/dense/kernel": att.output_dense.kernel,
            p + "attention/output/dense/bias": att.output_dense.bias,
            p + "attention/output/LayerNorm/gamma": block.attention_norm.gamma,
            p + "attention/output/LayerNorm/beta": block.attention_norm.beta,
            p + "intermediate/dense/kernel": ffn.input_dense.kernel,
            p + "intermediate/dense/bias": ffn.input_dense.bias,
            p + "output/dense/kernel": ffn.output_dense.kernel,
            p + "output/dense/bias": ffn.output_dense.bias,
            p + "output/LayerNorm/gamma": block.feedforward_norm.gamma,
            p + "output/LayerNorm/beta": block.feedforward_norm.beta,
        }

    def embedding_mapping(self):
        p = f"{self.prefix}/embeddings/"
        return {
            p + "word_embeddings": self.token_embedding.embeddings,
            p + "token_type_embeddings": self.segment_embedding.embeddings,
            p + "position_embeddings": self.position_embedding.embeddings,
            p + "LayerNorm/gamma": self.embedding_norm.gamma,
            p + "LayerNorm/beta": self.embedding_norm.beta,
        }

    def head_mapping(self):
        mapping = {}
        if self.with_pool:
            mapping[f"{self.prefix}/pooler/dense/kernel"] = self.pooler.kernel
            mapping[f"{self.prefix}/pooler/dense/bias"] = self.pooler.bias
        if self.with_mlm:
            mapping.update({
                "cls/predictions/transform/dense/kernel": self.mlm_dense.kernel,
                "cls/predictions/transform/dense/bias": self.mlm_dense.bias,
                "cls/predictions/transform/LayerNorm/gamma": self.mlm_norm.gamma,
                "cls/predictions/transform/LayerNorm/beta": self.mlm_norm.beta,
                "cls/predictions/output_bias": self.mlm_bias.bias,
            })
        return mapping

    def variable_mapping(self):
        mapping = self.embedding_mapping()
        for i, block in enumerate(self.blocks):
            mapping.update(self.block_mapping(i, block))
        mapping.update(self.head_mapping())
        return mapping

    def to_keras(self, name, array):
        if self.keep_tokens is not None and name.endswith(
                ("embeddings/word_embeddings", "cls/predictions/output_bias")):
            return array[self.keep_tokens]
        return array

    def save_pretrained(self, directory):
        """Write a Hugging Face directory (``config.json`` + ``model.safetensors``) that
        ``transformers`` loads (``BertModel``, ``BertForPreTraining``...); returns it.
        Subclasses change what is written through ``hf_arrays`` and ``hf_config``."""
        return checkpoints.write_hf_directory(directory, self.hf_arrays(), self.hf_config())

    def hf_arrays(self):
        """The weights as ``{PyTorch name: array}`` (Linear weights ``(out, in)``)."""
        arrays = dict(google_to_hf(n, a) for n, a in self.checkpoint_arrays().items())
        if "cls.predictions.bias" in arrays:  # the decoder is tied to the word embeddings
            arrays["cls.predictions.decoder.bias"] = arrays["cls.predictions.bias"]
        return arrays

    def hf_config(self):
        """The Hugging Face ``config.json`` dict of this architecture."""
        config = {k: self.config[k] for k in HF_CONFIG_KEYS if k in self.config}
        config.update(model_type="bert", architectures=["BertForPreTraining"],
                      vocab_size=int(self.vocab_size), hidden_act=self.activation)
        return config

    def from_hf_names(self, arrays, transposed):
        converted = (hf_to_google(key, array, self.prefix, transposed)
                     for key, array in arrays.items())
        return {name: value for name, value in converted if name is not None}


class RoBERTa(BERT):
    """RoBERTa: BERT's architecture. Google-format (e.g. Chinese RoBERTa-wwm) checkpoints use
    BERT's names; Hugging Face ``roberta`` directories keep ``pad_token_id + 1`` unused rows at
    the top of the position table (positions start after the padding id), dropped on load.
    """

    def hf_position_offset(self):
        if self.config.get("model_type") != "roberta":
            return 0
        return self.config.get("pad_token_id", 1) + 1

    def max_position_table(self):
        return super().max_position_table() - self.hf_position_offset()

    def from_hf_names(self, arrays, transposed):
        arrays = super().from_hf_names(arrays, transposed)
        name = f"{self.prefix}/embeddings/position_embeddings"
        if name in arrays:
            arrays[name] = arrays[name][self.hf_position_offset():]
        return arrays


@keras.saving.register_keras_serializable(package="keraformer")
class FirstToken(keras.layers.Layer):
    """The first position of a sequence: ``(batch, length, dim) -> (batch, dim)``."""

    def call(self, x):
        return x[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package="keraformer")
class OutputBias(keras.layers.Layer):
    """Adds a learned bias over the last axis (BERT's ``cls/predictions/output_bias``)."""

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x):
        return x + keras.ops.cast(self.bias, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


HF_MODEL_PREFIXES = ("bert.", "roberta.", "roformer.", "electra.")
HF_SUFFIXES = (("LayerNorm.weight", "LayerNorm/gamma"), ("LayerNorm.bias", "LayerNorm/beta"),
               ("LayerNorm.gamma", "LayerNorm/gamma"), ("LayerNorm.beta", "LayerNorm/beta"))


def hf_to_google(key, array, prefix, transposed):
    """One Hugging Face BERT-style variable as ``(google_name, array)``; ``(None, None)`` to drop.

    PyTorch names (``encoder.layer.0.attention.self.query.weight``, Linear weights stored
    ``(out, in)``) and TF ``tf_model.h5`` paths (``.../encoder/layer_._0/.../kernel``) both map
    to Google names (``bert/encoder/layer_0/attention/self/query/kernel``).
    """
    if not transposed:  # tf_model.h5: keep the path from the model's main layer on
        key = re.sub(r"^(?:.*?/)?tf_[a-z_]+/(?:mlm___|nsp___)?", "", key)
        key = re.sub(r"layer_\._(\d+)", r"layer.\1", key).replace("/", ".")
        key = re.sub(r"_embeddings\.(weight|embeddings)$", "_embeddings", key)
    if key.endswith(("position_ids", "decoder.weight", "decoder.bias")):
        return None, None  # buffers, and the MLM decoder tied to the word embeddings
    if key.startswith("cls.") or key.startswith(("predictions.", "seq_relationship.")):
        head = key[4:] if key.startswith("cls.") else key
        if head in ("predictions.bias", "predictions.output_bias"):
            return "cls/predictions/output_bias", array
        if head.startswith("seq_relationship."):
            weight = head.endswith(("weight", "kernel"))
            value = array if transposed or not weight else array.T
            return "cls/seq_relationship/" + ("output_weights" if weight else "output_bias"), value
        key = "cls." + head
    else:
        for model_prefix in HF_MODEL_PREFIXES:
            if key.startswith(model_prefix):
                key = key[len(model_prefix):]
                break
        key = f"{prefix}." + key
    key = re.sub(r"\.layer\.(\d+)\.", r".layer_\1.", key)
    for old, new in HF_SUFFIXES:
        if key.endswith(old):
            return key[: -len(old)].replace(".", "/") + new, array
    if key.endswith("_embeddings.weight") or key.endswith("_embeddings"):
        return key.removesuffix(".weight").replace(".", "/"), array
    if key.endswith((".weight", ".kernel")):
        name = key.rsplit(".", 1)[0].replace(".", "/") + "/kernel"
        return name, array.T if transposed else array
    return key.replace(".", "/"), array


HF_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "hidden_act", "hidden_dropout_prob",
                  "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
                  "initializer_range", "layer_norm_eps", "pad_token_id")


def google_to_hf(name, array):
    """Inverse of :func:`hf_to_google` for PyTorch names (Linear kernels transposed)."""
    if name == "cls/predictions/output_bias":
        return "cls.predictions.bias", array
    if name.startswith("cls/seq_relationship/"):
        leaf = "weight" if name.endswith("output_weights") else "bias"
        return "cls.seq_relationship." + leaf, array
    key = re.sub(r"/layer_(\d+)/", r"/layer/\1/", name).replace("/", ".")
    if key.endswith(".gamma"):
        return key[: -len("gamma")] + "weight", array
    if key.endswith(".beta"):
        return key[: -len("beta")] + "bias", array
    if key.endswith("_embeddings"):
        return key + ".weight", array
    if key.endswith(".kernel"):
        return key[: -len("kernel")] + "weight", array.T
    return key, array

