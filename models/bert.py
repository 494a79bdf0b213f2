"""The BERT-shaped encoders: BERT, RoBERTa, RoFormer, RoFormerV2 and GAU-α as one builder
and one table, ``FAMILIES``, of what differs between them.

Inputs ``[token_ids, segment_ids]`` ``(batch, length)`` (``token_ids`` alone without a
segment embedding, ``segment_vocab_size=0``, as in bert4keras); output the last hidden state
``(batch, length, hidden)``, or, as in bert4keras, the pooled ``[CLS]`` vector
(``with_pool``; ``with_nsp`` puts the next-sentence probabilities ``(batch, 2)`` in its
place), the MLM head (``with_mlm``: probabilities, or logits with ``"linear"``) or both
``[pooled, mlm]``. Token id ``pad_token_id`` (0 unless the config says otherwise) is
padding; sequence outputs carry ``token_ids != pad_token_id`` as their Keras mask.

Every family embeds tokens (plus segments, plus a learned position table for ``"table"``
families), normalises, optionally maps ``embedding_size`` to ``hidden_size``, then stacks
post-norm blocks (``keraformer.models.blocks.TransformerBlock``). Checkpoint names are
Google BERT's (``bert/encoder/layer_{i}/attention/self/query/kernel``...), minus the biases
and norm parameters a family does not have.
"""

import dataclasses
import re

import keras
import numpy as np

from keraformer import checkpoints
from keraformer.checks import (check_bools, check_ids_in_vocabulary, check_positive_ints,
                               check_positive_numbers, check_rates)
from keraformer.embedding import Embedding
from keraformer.feedforward import activation_by_name
from keraformer.masks import AttentionMask, OutputMask
from keraformer.models.base import Transformer, Vocabulary
from keraformer.models.blocks import TransformerBlock, attention_class
from keraformer.models.task import TransformerModel
from keraformer.models.layer_plan import STACK_OPTIONS, StackOptions
from keraformer.normalization import LayerNormalization, rms_norm
from keraformer.positions import PositionEmbedding, RandomPositions, RotaryEmbedding

APPLICATION_MASKS = {"encoder": "padding", "lm": "causal", "unilm": "unilm"}
FULL_MASK_ATTENTIONS = ("softmax", "gau")  # attentions that take a full boolean mask
NORMS = {"layer": {}, "rms": {"rms": True, "center": False, "scale": False}}
SCOPE = "bert"  # the checkpoint scope of every family's embeddings, blocks and pooler


@dataclasses.dataclass(frozen=True)
class Family:
    """What distinguishes one BERT-shaped family, as data.

    ``positions``: ``"table"`` (learned absolute positions) or ``"rotary"`` (RoPE on every
    attention's queries and keys, no table). ``biases``: whether dense layers have biases.
    ``norm``: ``"layer"`` (LayerNorm with ``gamma``/``beta``) or ``"rms"`` (parameter-free
    ``x / sqrt(mean(x²) + ε)``). ``pooler``: whether checkpoints hold the ``[CLS]`` pooler.
    ``mlm_head``: ``"transform"`` (dense, norm, tied projection, output bias) or ``"tied"``
    (``h · Eᵀ`` only). ``attention``: the default attention kind. ``gau_layer``: whether a
    ``"gau"`` attention is the whole layer (no feed-forward after it) and ``gau_options``
    its extra constructor arguments; ``gau_names``: the checkpoint name template of such a
    layer's weights (``{i}``: the layer). ``hf_export``: the ``transformers`` family
    ``save_pretrained`` writes, or ``None``. ``config_defaults``: config keys the family's
    checkpoints leave out.
    """

    positions: str
    biases: bool
    norm: str
    pooler: bool
    mlm_head: str
    attention: str
    gau_layer: bool
    gau_options: dict
    gau_names: str
    hf_export: str
    config_defaults: dict


# What differs between the families, one column each: read across a row to compare them.
FAMILY_NAMES = ("bert", "roberta", "roformer", "roformer_v2", "gau_alpha")
FAMILY_TABLE = {
    #               bert         roberta      roformer     roformer_v2  gau_alpha
    "positions":   ("table",     "table",     "rotary",    "rotary",    "rotary"),
    "biases":      (True,        True,        True,        False,       False),
    "norm":        ("layer",     "layer",     "layer",     "rms",       "rms"),
    "pooler":      (True,        True,        True,        False,       False),
    "mlm_head":    ("transform", "transform", "transform", "tied",      "tied"),
    "attention":   ("softmax",   "softmax",   "softmax",   "softmax",   "gau"),
    "gau_layer":   (False,       False,       False,       False,       True),
    "hf_export":   ("bert",      "bert",      "roformer",  None,        None),
}
# GAU-α's unit (Su 2022): softmax_plus normalisation, its own checkpoint scope, swish
GAU_ALPHA = dict(gau_options={"normalization": "softmax_plus", "min_length": 16},
                 gau_names="GAU_alpha/encoder/layer_{i}/gau/",
                 config_defaults={"hidden_act": "swish", "num_attention_heads": 1})
FAMILIES = {
    name: Family(**{field: row[column] for field, row in FAMILY_TABLE.items()},
                 **(GAU_ALPHA if name == "gau_alpha" else
                    dict(gau_options={}, gau_names=None, config_defaults={})))
    for column, name in enumerate(FAMILY_NAMES)}
# every config key an encoder builder reads (other keys of a config file are left alone)
CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "embedding_size", "type_vocab_size",
               "max_position_embeddings", "hidden_dropout_prob", "attention_probs_dropout_prob",
               "hidden_act", "layer_norm_eps", "pad_token_id", "initializer_range",
               "attention_key_size", "attention_head_size", "rotary_value", "model_type")
COMMON_OPTIONS = ("with_pool", "with_nsp", "with_mlm", "keep_tokens", "compound_tokens",
                  "dropout_rate", "attention_dropout_rate", "segment_vocab_size",
                  "sequence_length", "recompute", "entropy_scaling", "name",
                  *STACK_OPTIONS)
POSITION_OPTIONS = {"table": ("hierarchical_position", "max_position"),
                    "rotary": ("attention", "attention_options", "rotary_base")}


def dense_names(prefix, dense):
    """``{prefix + "kernel": ..., prefix + "bias": ...}`` of a Dense layer (bias if it has one)."""
    names = {prefix + "kernel": dense.kernel}
    if dense.use_bias:
        names[prefix + "bias"] = dense.bias
    return names


def norm_names(prefix, norm):
    """``gamma``/``beta`` checkpoint names of a normalisation layer (none if parameter-free)."""
    names = {}
    if norm.scale:
        names[prefix + "gamma"] = norm.gamma
    if norm.center:
        names[prefix + "beta"] = norm.beta
    return names


HEAD_ACTIVATIONS = {"with_pool": "tanh", "with_mlm": "softmax", "with_lm": "softmax"}


def head_activation(option, value):
    """The activation of a bert4keras head option: ``True`` gives the head's own (``tanh``
    for the pooler, ``softmax`` for the MLM head), a string names one (``"linear"``)."""
    if value is True:
        return HEAD_ACTIVATIONS[option]
    if isinstance(value, str):
        try:
            keras.activations.get(value)
            return value
        except (ValueError, TypeError):
            pass
    raise ValueError(f"`{option}` must be True, False or a Keras activation name such as "
                     f"'linear'; received {value!r}")


class BERT(Transformer):
    """The builder of every BERT-shaped family (``family``, one row of ``FAMILIES``).

    With an attention that takes no full boolean mask (linear, VQ) the blocks get the padding
    mask and ``causal=True`` for ``application="lm"``; ``"unilm"`` needs softmax or GAU.

    Args:
        config: the checkpoint's config dict (``bert_config.json`` / ``config.json`` keys).
        application: ``"encoder"`` (bidirectional), ``"lm"`` (causal) or ``"unilm"``
            (bidirectional over segment 0, causal over segment 1).
        with_pool: the ``[CLS]`` pooler (``True``: tanh; or an activation name).
        with_nsp: the next-sentence head on the pooler (implies ``with_pool``).
        with_mlm: the MLM head (``True``: probabilities; an activation name such as
            ``"linear"``: logits); ``None``: on for ``lm`` and ``unilm``.
        keep_tokens: checkpoint vocabulary rows to keep (a smaller vocabulary).
        compound_tokens: new rows, each the (weighted) mean of kept rows (bert4keras').
        dropout_rate: overrides the config's hidden and attention dropout rates.
        attention_dropout_rate: overrides the attention dropout rate alone.
        segment_vocab_size: overrides ``type_vocab_size``. 0 (either key): no segment
            embedding and, as in bert4keras, one input, ``token_ids``; ``"unilm"`` still
            takes ``[token_ids, segment_ids]``, which its mask reads source and target from.
        sequence_length: a fixed input length (``None``: any).
        recompute: recompute each block's activations in the backward pass.
        entropy_scaling: scale attention logits by ``log(n)/log(512)``.
        name: the Keras model's name.
        hierarchical_position: table families: Su's hierarchical decomposition of the
            position table (``True``, or its alpha in ``[0, 1)``), reaching ``rows²``
            positions.
        max_position: table families: rows of the position table (default the config's
            ``max_position_embeddings``, 512).
        attention: rotary families: ``"softmax"``, ``"linear"``, ``"vq"`` or ``"gau"``.
        attention_options: rotary families: extra constructor arguments of that layer.
        rotary_base: rotary families: the RoPE base (10000).
        attention_window: local attention in every block (softmax): query ``i`` sees key
            ``j`` only when ``|i − j| < attention_window``.
        rerope_window, rerope_leak: rotary families, softmax: ReRoPE / Leaky ReRoPE
            (``keraformer.positions.rerope``) in every rotary block.
        layer_plan: ``"uniform"`` or, rotary families, ``"hwfa"``: every block but the last
            local (``attention_window``) with RoPE, the last full, without positions, with
            ``log n`` scaling (``keraformer.models.layer_plan``).
        deepnorm: DeepNet's ``x ← LN(α·x + G(x))`` and ``β``-scaled initialisation in every
            block, ``α``, ``β`` from the depth (encoder-only; decoder-only for ``"lm"``).
        random_positions: ``N``: in training, each row's positions are a sorted random
            subset of ``[0, N)`` (rotary, or the position table, which needs ``N`` rows);
            ``0..n−1`` in inference.
    """

    model_name = "bert"
    APPLICATIONS = tuple(APPLICATION_MASKS)
    CONFIG_KEYS = CONFIG_KEYS

    @property
    def family(self):
        return FAMILIES[self.model_name]

    @classmethod
    def option_names(cls):
        """The keyword options this builder takes (the rest of ``build_transformer_model``'s
        keywords are config keys)."""
        positions = FAMILIES[cls.model_name].positions
        return set(COMMON_OPTIONS) | set(POSITION_OPTIONS[positions])

    def __init__(self, config, application="encoder", with_pool=False, with_nsp=False,
                 with_mlm=None, keep_tokens=None, compound_tokens=None, dropout_rate=None,
                 attention_dropout_rate=None, segment_vocab_size=None, sequence_length=None,
                 recompute=False, entropy_scaling=False, name=None, hierarchical_position=False,
                 max_position=None, attention=None, attention_options=None, rotary_base=10000,
                 attention_window=None, rerope_window=None, rerope_leak=None,
                 layer_plan="uniform", deepnorm=False, random_positions=None):
        family = FAMILIES[self.model_name]
        stack = StackOptions(attention_window, rerope_window, rerope_leak, layer_plan,
                             deepnorm, random_positions)
        given = dict(hierarchical_position=hierarchical_position, max_position=max_position,
                     attention=attention, attention_options=attention_options,
                     rotary_base=rotary_base)
        defaults = dict(hierarchical_position=False, max_position=None, attention=None,
                        attention_options=None, rotary_base=10000)
        foreign = sorted(k for k in given if k not in POSITION_OPTIONS[family.positions]
                         and given[k] != defaults[k])
        if foreign:
            other = "rotary" if family.positions == "table" else "position-table"
            raise ValueError(f"{type(self).__name__} does not take the option(s) {foreign} "
                             f"(they apply to {other} families); its options are "
                             f"{sorted(self.option_names())}")
        options = dict(with_pool=with_pool, with_nsp=with_nsp, with_mlm=with_mlm,
                       keep_tokens=keep_tokens, compound_tokens=compound_tokens,
                       dropout_rate=dropout_rate, attention_dropout_rate=attention_dropout_rate,
                       segment_vocab_size=segment_vocab_size, sequence_length=sequence_length,
                       recompute=recompute, entropy_scaling=entropy_scaling, name=name,
                       **stack.given())
        options.update({k: given[k] for k in POSITION_OPTIONS[family.positions]})
        super().__init__({**family.config_defaults, **config}, application, **options)
        for option, value in (("with_mlm", with_mlm), ("with_pool", with_pool)):
            if value is not None and not isinstance(value, bool):
                head_activation(option, value)  # True, False or an activation name
        check_bools(with_nsp=with_nsp, recompute=recompute, entropy_scaling=entropy_scaling)
        if not isinstance(hierarchical_position, bool):  # True, False or bert4keras' alpha
            check_rates(hierarchical_position=hierarchical_position)
        if sequence_length is not None:
            check_positive_ints(sequence_length=sequence_length)
        self.sequence_length = sequence_length
        with_pool = with_pool or with_nsp  # as bert4keras: NSP sits on the pooler
        if with_pool and not family.pooler:
            option = "with_nsp" if with_nsp else "with_pool"
            raise ValueError(f"`{option}=True`: {type(self).__name__} checkpoints have no "
                             f"pooler; received {option}=True")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"`name` must be a string; received {name!r}")
        self.with_pool, self.with_nsp = with_pool, with_nsp
        self.with_mlm = (application != "encoder") if with_mlm is None else with_mlm
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
        if family.gau_layer and (attention or family.attention) == "gau" and self.heads != 1:
            raise ValueError(f"`num_attention_heads` must be 1 (or left out) for "
                             f"{type(self).__name__}: each layer is one single-head gated "
                             f"attention unit, sized by intermediate_size and "
                             f"attention_key_size; received {self.heads!r}. With "
                             f"attention='softmax', 'linear' or 'vq' it sets their heads")
        if self.hidden_size % self.heads:
            raise ValueError(f"`hidden_size` ({self.hidden_size}) must be a multiple of "
                             f"`num_attention_heads` ({self.heads})")
        head_size = self.config.get("attention_head_size", self.hidden_size // self.heads)
        if head_size != self.hidden_size // self.heads:
            raise ValueError(f"`attention_head_size` must be hidden_size / "
                             f"num_attention_heads = {self.hidden_size // self.heads} for "
                             f"{type(self).__name__}; received {head_size!r}")
        self.pad_id = self.config.get("pad_token_id", 0)
        self.pad_id = 0 if self.pad_id is None else self.pad_id
        check_ids_in_vocabulary(self.vocab_size, pad_token_id=self.pad_id)
        self.vocabulary = Vocabulary(self.vocab_size, keep_tokens, compound_tokens)
        self.keep_tokens = self.vocabulary.keep_tokens
        self.vocab_size = self.vocabulary.size
        self.embedding_size = self.config.get("embedding_size") or self.hidden_size
        check_positive_ints(embedding_size=self.embedding_size)
        key = "type_vocab_size" if segment_vocab_size is None else "segment_vocab_size"
        self.segment_vocab_size = (self.config.get("type_vocab_size", 2)
                                   if segment_vocab_size is None else segment_vocab_size)
        if self.segment_vocab_size != 0:  # 0: no segment embedding
            check_positive_ints(**{key: self.segment_vocab_size})
        # the model takes segment ids for its segment embedding or for the UniLM mask
        self.takes_segments = bool(self.segment_vocab_size) or application == "unilm"
        self.max_position = self.config.get("max_position_embeddings", 512)
        if family.positions == "table" and max_position is None:
            check_positive_ints(max_position_embeddings=self.max_position)
        if max_position is not None:
            check_positive_ints(max_position=max_position)
            self.max_position = max_position
        self.dropout_rate = self.config.get("hidden_dropout_prob", 0.1)
        self.attention_dropout_rate = self.config.get("attention_probs_dropout_prob", 0.1)
        check_rates(hidden_dropout_prob=self.dropout_rate,
                    attention_probs_dropout_prob=self.attention_dropout_rate)
        if dropout_rate is not None:
            check_rates(dropout_rate=dropout_rate)
            self.dropout_rate = self.attention_dropout_rate = dropout_rate
        if attention_dropout_rate is not None:
            check_rates(attention_dropout_rate=attention_dropout_rate)
            self.attention_dropout_rate = attention_dropout_rate
        self.activation = self.config.get("hidden_act", "gelu")
        try:
            activation_by_name(self.activation)
        except (ValueError, TypeError):
            raise ValueError(f"`hidden_act` must be a Keras activation name (gelu, relu, "
                             f"swish...) or gelu_new; received {self.activation!r}") from None
        self.epsilon = self.config.get("layer_norm_eps", 1e-12)
        check_positive_numbers(layer_norm_eps=self.epsilon,
                               initializer_range=self.config.get("initializer_range", 0.02))
        self.name = name or SCOPE
        self.initializer = keras.initializers.TruncatedNormal(
            stddev=self.config.get("initializer_range", 0.02))
        self.attention = attention or family.attention
        attention_class(self.attention)
        if attention_options is not None and not isinstance(attention_options, dict):
            raise TypeError(f"`attention_options` must be a dict of constructor arguments; "
                            f"received {attention_options!r}")
        self.attention_options = dict(attention_options or {})
        check_positive_numbers(rotary_base=rotary_base)
        self.rotary_base = rotary_base
        self.stack = stack
        stack.check(type(self).__name__, self.attention, family.positions == "rotary")
        rows = self.max_position - self.hf_position_offset()
        if family.positions == "table" and (random_positions or 0) > rows:
            raise ValueError(f"`random_positions={random_positions}` draws positions below "
                             f"{random_positions}, but the position table has {rows} rows "
                             f"(max_position / max_position_embeddings)")
        self.plan = stack.plan(self.num_layers, family.positions == "rotary",
                               entropy_scaling)
        if family.positions == "rotary":
            if self.config.get("rotary_value"):
                raise ValueError("RoFormer with `rotary_value=True` (rotated values) is not "
                                 "supported; received rotary_value=True in the config")
            self.check_rotary_size()

    def check_rotary_size(self):
        """RoPE rotates pairs of features, so the rotated head (or GAU key) size must be even."""
        if self.attention == "gau":
            key_size = self.config.get("attention_key_size", 128)
            check_positive_ints(attention_key_size=key_size)
            if key_size % 2:
                raise ValueError(f"`attention_key_size` (the query/key size that rotary "
                                 f"positions rotate) must be even; received {key_size}")
            return
        size = self.hidden_size // self.heads
        if size % 2:
            raise ValueError(f"`hidden_size` / `num_attention_heads` (the head size that "
                             f"rotary positions rotate) must be even; received "
                             f"{self.hidden_size} / {self.heads} = {size}")

    # -- layers ---------------------------------------------------------------------------
    def norm(self, name):
        """A normalisation layer of the family's kind."""
        if self.family.norm == "rms":
            return rms_norm(self.epsilon, scale=False, name=name)
        return LayerNormalization(epsilon=self.epsilon, name=name)

    def make_embeddings(self):
        """The embedding layers: tokens, segments (unless ``segment_vocab_size=0``), the
        position table (``"table"`` families), the norm, dropout and the mapping from
        ``embedding_size`` to ``hidden_size`` where they differ."""
        self.token_embedding = Embedding(self.vocab_size, self.embedding_size,
                                         embeddings_initializer=self.initializer,
                                         name="Embedding-Token")
        self.segment_embedding = self.segment_add = None
        if self.segment_vocab_size:
            self.segment_embedding = Embedding(
                self.segment_vocab_size, self.embedding_size, ids_name="segment_ids",
                embeddings_initializer=self.initializer, name="Embedding-Segment")
            self.segment_add = keras.layers.Add(name="Embedding-Add")
        self.position_embedding = None
        if self.family.positions == "table":
            rows = self.max_position - self.hf_position_offset()
            if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
                raise ValueError(f"`max_position_embeddings` must give a position table of "
                                 f"at least one row; received {self.max_position!r}, which "
                                 f"gives {rows!r} rows for {type(self).__name__}")
            alpha = {} if isinstance(self.hierarchical_position, bool) else {
                "alpha": self.hierarchical_position}
            self.position_embedding = PositionEmbedding(
                rows, self.embedding_size, hierarchical=bool(self.hierarchical_position),
                embeddings_initializer=self.initializer, name="Embedding-Position", **alpha)
        self.embedding_norm = self.norm("Embedding-Norm")
        self.embedding_dropout = keras.layers.Dropout(self.dropout_rate,
                                                      name="Embedding-Dropout")
        self.embedding_mapping_dense = None
        if self.embedding_size != self.hidden_size:
            self.embedding_mapping_dense = keras.layers.Dense(
                self.hidden_size, use_bias=self.family.biases,
                kernel_initializer=self.initializer, name="Embedding-Mapping")

    def embed(self, token_ids, segment_ids, positions=None, training=None):
        """Token (+ segment) (+ position) embeddings, normalised, dropped out and mapped from
        ``embedding_size`` to ``hidden_size`` where they differ: the model's embedding graph,
        and each cached decoding step's (``positions``: ids broadcasting to ``token_ids``'
        shape; default ``0..length-1``)."""
        x = self.token_embedding(token_ids)
        if self.segment_embedding is not None:
            x = self.segment_add([x, self.segment_embedding(segment_ids)])
        if self.position_embedding is not None:
            x = (self.position_embedding(x) if positions is None else
                 self.position_embedding(x, positions=positions))
        x = self.embedding_dropout(self.embedding_norm(x), training=training)
        if self.embedding_mapping_dense is not None:
            x = self.embedding_mapping_dense(x)
        return x

    def block_options(self, index=0):
        """Keyword arguments of ``TransformerBlock`` ``index``, read off the family and the
        layer plan."""
        family, layer = self.family, self.plan[index]
        options = dict(activation=self.activation, norm="post", use_bias=family.biases,
                       normalization={**NORMS[family.norm], "epsilon": self.epsilon},
                       dropout_rate=self.dropout_rate,
                       attention_dropout_rate=self.attention_dropout_rate,
                       entropy_scaling=layer["entropy_scaling"], recompute=self.recompute,
                       kernel_initializer=self.initializer, attention=self.attention,
                       attention_options={**self.stack.attention_options(layer),
                                          **self.attention_options})
        layers = {"decoder_layers" if self.application == "lm" else "encoder_layers":
                  self.num_layers}
        options.update(self.stack.norm_options(**layers))
        if layer["rotary"]:
            options["rotary"] = RotaryEmbedding(base=self.rotary_base, interleaved=True)
        if self.attention == "gau":  # a gated unit takes its width and key size from the config
            options["attention_options"] = {
                "units": self.intermediate_size,
                "key_size": self.config.get("attention_key_size", 128),
                "activation": self.activation, **family.gau_options, **self.attention_options}
            options["feedforward"] = not family.gau_layer
        return options

    def attention_masks(self, token_ids, segment_ids):
        """``(mask, causal)`` for the blocks: the full application mask for attentions that
        take one (softmax, GAU), else the padding mask plus a causal flag."""
        if self.attention in FULL_MASK_ATTENTIONS:
            inputs = [token_ids, segment_ids] if self.application == "unilm" else token_ids
            mask = AttentionMask(APPLICATION_MASKS[self.application], pad_id=self.pad_id,
                                 name="Attention-Mask")(inputs)
            return mask, False
        if self.application == "unilm":
            raise ValueError(f"application='unilm' needs attention='softmax' or 'gau' (a "
                             f"full boolean mask); received attention={self.attention!r}")
        mask = AttentionMask("padding", pad_id=self.pad_id, name="Attention-Mask")(token_ids)
        return mask, self.application == "lm"

    def build(self):
        token_ids = keras.Input((self.sequence_length,), dtype="int32", name="Input-Token")
        inputs, segment_ids = [token_ids], None
        if self.takes_segments:
            segment_ids = keras.Input((self.sequence_length,), dtype="int32",
                                      name="Input-Segment")
            inputs.append(segment_ids)
        self.make_embeddings()
        positions, placed = self.random_positions(token_ids)
        # the padding mask rides on the hidden states from here on, so that every block's
        # output (model.get_layer("Transformer-3").output) carries it as its Keras mask
        x = OutputMask(self.pad_id, name="Embedding-Output-Mask")(
            [self.embed(token_ids, segment_ids, positions), token_ids])
        mask, causal = self.attention_masks(token_ids, segment_ids)
        self.blocks = []
        for i in range(self.num_layers):
            block = TransformerBlock(self.heads, self.hidden_size // self.heads,
                                     self.intermediate_size, **self.block_options(i),
                                     name=f"Transformer-{i}")
            x = block(x, attention_mask=mask, causal=causal, **placed)
            self.blocks.append(block)
        self.model = TransformerModel(self, inputs if self.takes_segments else token_ids,
                                      self.heads_on(x, token_ids), name=self.name)
        return self.model

    def random_positions(self, token_ids):
        """``(positions, block keywords)`` of ``random_positions=N``: a
        :class:`~keraformer.positions.RandomPositions` layer's ids (random in training,
        ``0..n−1`` otherwise) for the position table or the blocks' rotary embeddings;
        ``(None, {})`` without the option."""
        if self.stack.random_positions is None:
            return None, {}
        positions = RandomPositions(self.stack.random_positions,
                                    name="Random-Positions")(token_ids)
        rotary = self.family.positions == "rotary"
        return (None if rotary else positions), ({"positions": positions} if rotary else {})

    def model_inputs(self, token_ids, segment_ids):
        """What ``self.model`` takes for these ids: ``[token_ids, segment_ids]``, or
        ``token_ids`` alone when it has no segment input (``segment_vocab_size=0``)."""
        return [token_ids, segment_ids] if self.takes_segments else token_ids

    def heads_on(self, x, token_ids):
        """The bert4keras output convention over the last hidden state ``x``; sequence
        outputs carry the padding mask of ``token_ids`` as their Keras mask."""
        outputs = []
        if self.with_pool:
            first = FirstToken(name="Pooler-First")(x)
            self.pooler = keras.layers.Dense(
                self.hidden_size, activation=head_activation("with_pool", self.with_pool),
                kernel_initializer=self.initializer, name="Pooler")
            pooled = self.pooler(first)
            if self.with_nsp:
                self.nsp = keras.layers.Dense(2, activation="softmax", dtype="float32",
                                              kernel_initializer=self.initializer,
                                              name="NSP-Proba")
                pooled = self.nsp(pooled)
            outputs.append(pooled)
        if self.with_mlm:
            outputs.append(OutputMask(self.pad_id, name="MLM-Output-Mask")(
                [self.mlm_head(x), token_ids]))
        if not outputs:
            return OutputMask(self.pad_id, name="Output-Mask")([x, token_ids])
        return outputs[0] if len(outputs) == 1 else outputs

    def mlm_head(self, x):
        """The MLM head's layers on the last hidden state ``x``: logits (:meth:`mlm_logits`)
        then the ``with_mlm`` activation."""
        if self.family.mlm_head == "transform":
            self.mlm_dense = keras.layers.Dense(self.embedding_size,
                                                activation=activation_by_name(self.activation),
                                                kernel_initializer=self.initializer,
                                                name="MLM-Dense")
            self.mlm_norm = LayerNormalization(epsilon=self.epsilon, name="MLM-Norm")
            self.mlm_bias = OutputBias(name="MLM-Bias")
        return keras.layers.Activation(head_activation("with_mlm", self.with_mlm),
                                       dtype="float32", name="MLM-Activation")(
            self.mlm_logits(x))

    def mlm_logits(self, x):
        """Logits over the vocabulary with the token table tied as output projection; the
        ``"transform"`` head first applies a dense layer and a norm and adds a bias."""
        if self.family.mlm_head == "transform":
            x = self.mlm_norm(self.mlm_dense(x))
        x = self.token_embedding(x, reverse=True)
        if self.family.mlm_head == "transform":
            x = self.mlm_bias(x)
        return x

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
    def embedding_mapping(self):
        p = f"{SCOPE}/embeddings/"
        mapping = {p + "word_embeddings": self.token_embedding.embeddings}
        if self.segment_embedding is not None:
            mapping[p + "token_type_embeddings"] = self.segment_embedding.embeddings
        if self.position_embedding is not None:
            mapping[p + "position_embeddings"] = self.position_embedding.embeddings
        mapping.update(norm_names(p + "LayerNorm/", self.embedding_norm))
        if self.embedding_mapping_dense is not None:
            mapping.update(dense_names(f"{SCOPE}/encoder/embedding_hidden_mapping_in/",
                                       self.embedding_mapping_dense))
        return mapping

    def block_mapping(self, i, block):
        """Checkpoint names of block ``i``: Google BERT's for softmax attention; for another
        attention its own weights under ``.../attention/`` (or the family's ``gau_names``)."""
        p = f"{SCOPE}/encoder/layer_{i}/"
        att = block.attention
        if self.attention == "softmax":
            mapping = {}
            for name, dense in (("self/query/", att.query_dense), ("self/key/", att.key_dense),
                                ("self/value/", att.value_dense),
                                ("output/dense/", att.output_dense)):
                mapping.update(dense_names(p + "attention/" + name, dense))
        else:
            template = self.family.gau_names if self.attention == "gau" else None
            scope = (template or p + "attention/").format(i=i)
            mapping = {scope + v.path.split("/attention/", 1)[-1]: v for v in att.weights}
        mapping.update(norm_names(p + "attention/output/LayerNorm/", block.attention_norm))
        if block.use_feedforward:
            mapping.update(dense_names(p + "intermediate/dense/", block.feedforward.input_dense))
            mapping.update(dense_names(p + "output/dense/", block.feedforward.output_dense))
            mapping.update(norm_names(p + "output/LayerNorm/", block.feedforward_norm))
        return mapping

    def head_mapping(self):
        mapping = {}
        if self.with_pool:
            mapping.update(dense_names(f"{SCOPE}/pooler/dense/", self.pooler))
        if self.with_nsp:
            mapping["cls/seq_relationship/output_weights"] = self.nsp.kernel
            mapping["cls/seq_relationship/output_bias"] = self.nsp.bias
        if self.with_mlm and self.family.mlm_head == "transform":
            mapping.update(dense_names("cls/predictions/transform/dense/", self.mlm_dense))
            mapping.update(norm_names("cls/predictions/transform/LayerNorm/", self.mlm_norm))
            mapping["cls/predictions/output_bias"] = self.mlm_bias.bias
        return mapping

    def variable_mapping(self):
        mapping = self.embedding_mapping()
        for i, block in enumerate(self.blocks):
            mapping.update(self.block_mapping(i, block))
        mapping.update(self.head_mapping())
        return mapping

    def to_keras(self, name, array):
        if name.endswith(("embeddings/word_embeddings", "cls/predictions/output_bias")):
            return self.vocabulary.rows(array)
        if name == "cls/seq_relationship/output_weights":
            return array.T  # Google stores (2, hidden)
        return array

    def to_checkpoint(self, name, array):
        return array.T if name == "cls/seq_relationship/output_weights" else array

    HEADS = {"with_pool": f"{SCOPE}/pooler/", "with_mlm": "cls/predictions/",
             "with_nsp": "cls/seq_relationship/"}

    def unused_allowed(self, name):
        """A head the checkpoint holds and the user did not ask for (``HEADS``)."""
        return any(name.startswith(prefix) and not getattr(self, option)
                   for option, prefix in self.HEADS.items())

    # -- other checkpoint namings -----------------------------------------------------------
    def hf_position_offset(self):
        """Rows at the top of a Hugging Face ``roberta`` position table that positions never
        reach (they start after the padding id); dropped on load."""
        if self.config.get("model_type") != "roberta":
            return 0
        return self.config.get("pad_token_id", 1) + 1

    def rename(self, arrays, naming):
        if naming == "google":
            return dict(arrays)
        if naming not in ("pytorch", "tf_h5"):
            return super().rename(arrays, naming)
        check_tied_decoder(arrays)
        converted = (hf_to_google(key, array, naming == "pytorch")
                     for key, array in arrays.items()
                     if "embed_positions" not in key)  # transformers RoFormer's sinusoids
        old, new = f"{SCOPE}/embeddings_project/", f"{SCOPE}/encoder/embedding_hidden_mapping_in/"
        arrays = {name.replace(old, new): value for name, value in converted if name is not None}
        position = f"{SCOPE}/embeddings/position_embeddings"
        if position in arrays:
            arrays[position] = arrays[position][self.hf_position_offset():]
        return arrays

    # -- Hugging Face export ---------------------------------------------------------------
    def save_pretrained(self, directory):
        """Write a Hugging Face directory (``config.json`` + ``model.safetensors``) that
        ``transformers`` loads (``BertModel``, ``BertForPreTraining``...); returns it."""
        if self.family.hf_export is None:
            raise NotImplementedError(
                f"{type(self).__name__} cannot be saved as a Hugging Face directory: "
                f"transformers has no port of it (bias-free layers, parameter-free RMS norms"
                f"{', gated attention units' if self.attention == 'gau' else ''}), so no "
                f"transformers class could load it; use save_weights_as_checkpoint (Google / "
                f"bert4keras format) or save (keraformer's own format)")
        return checkpoints.write_hf_directory(directory, self.hf_arrays(), self.hf_config())

    def hf_arrays(self):
        """The weights as ``{PyTorch name: array}`` (Linear weights ``(out, in)``)."""
        arrays = dict(google_to_hf(n, a) for n, a in self.checkpoint_arrays().items())
        if self.segment_embedding is None:  # transformers always adds one: a zero row is exact
            arrays[f"{SCOPE}.embeddings.token_type_embeddings.weight"] = np.zeros(
                (1, self.embedding_size), "float32")
        if "cls.predictions.bias" in arrays:  # the decoder is tied to the word embeddings
            arrays["cls.predictions.decoder.bias"] = arrays["cls.predictions.bias"]
        return arrays

    def hf_config(self):
        """The Hugging Face ``config.json`` dict of this architecture."""
        config = {k: self.config[k] for k in HF_CONFIG_KEYS if k in self.config}
        config.update(model_type="bert", architectures=["BertForPreTraining"],
                      vocab_size=int(self.vocab_size), hidden_act=self.activation,
                      type_vocab_size=int(self.segment_vocab_size or 1))
        return config


class RoBERTa(BERT):
    """RoBERTa: BERT's architecture (``FAMILIES["roberta"]`` equals BERT's row).
    Google-format (e.g. Chinese RoBERTa-wwm) checkpoints use BERT's names; Hugging Face
    ``roberta`` directories keep ``pad_token_id + 1`` unused position rows, dropped on load.
    """

    model_name = "roberta"


@keras.saving.register_keras_serializable(package="keraformer")
class FirstToken(keras.layers.Layer):
    """The first position of a sequence: ``(batch, length, dim) -> (batch, dim)``; the
    sequence's Keras mask ends here."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, x):
        return x[:, 0]

    def compute_mask(self, inputs, previous_mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package="keraformer")
class OutputBias(keras.layers.Layer):
    """Adds a learned bias over the last axis (BERT's ``cls/predictions/output_bias``)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x):
        return x + keras.ops.cast(self.bias, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


ROBERTA_LM_HEAD = (("lm_head.dense.", "cls.predictions.transform.dense."),
                   ("lm_head.layer_norm.", "cls.predictions.transform.LayerNorm."),
                   ("lm_head.decoder.", "cls.predictions.decoder."),
                   ("lm_head.bias", "cls.predictions.bias"))
HF_MODEL_PREFIXES = ("bert.", "roberta.", "roformer.", "electra.")
HF_SUFFIXES = (("LayerNorm.weight", "LayerNorm/gamma"), ("LayerNorm.bias", "LayerNorm/beta"),
               ("LayerNorm.gamma", "LayerNorm/gamma"), ("LayerNorm.beta", "LayerNorm/beta"))


def check_tied_decoder(arrays):
    """Raise ``ValueError`` if a Hugging Face MLM decoder weight differs from the word
    embeddings: the builders tie it, so an untied one would be dropped silently."""
    words = [v for k, v in arrays.items() if k.endswith("word_embeddings.weight")]
    for key, value in arrays.items():
        if key.endswith(("predictions.decoder.weight", "lm_head.decoder.weight")) and words \
                and not np.array_equal(np.asarray(value), np.asarray(words[0])):
            raise ValueError(f"checkpoint tensor {key!r} is an MLM decoder not tied to the "
                             f"word embeddings; keraformer's MLM head is tied, so it cannot "
                             f"load it")


def hf_to_google(key, array, transposed):
    """One Hugging Face BERT-style variable as ``(google_name, array)``; ``(None, None)`` to drop.

    PyTorch names (``encoder.layer.0.attention.self.query.weight``, Linear weights stored
    ``(out, in)``) and TF ``tf_model.h5`` paths (``.../encoder/layer_._0/.../kernel``) both map
    to Google names (``bert/encoder/layer_0/attention/self/query/kernel``).
    """
    if not transposed:  # tf_model.h5: keep the path from the model's main layer on
        key = re.sub(r"^(?:.*?/)?tf_[a-z_]+/(?:mlm___|nsp___)?", "", key)
        key = re.sub(r"layer_\._(\d+)", r"layer.\1", key).replace("/", ".")
        key = re.sub(r"_embeddings\.(weight|embeddings)$", "_embeddings", key)
    for old, new in ROBERTA_LM_HEAD:  # RoBERTa's MLM head is BERT's under other names
        if key.startswith(old):
            key = new + key[len(old):]
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
        key = f"{SCOPE}." + key
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

