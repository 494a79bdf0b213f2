"""RoFormer, RoFormerV2 and GAU-α (Su et al. 2021 "RoFormer: Enhanced Transformer with Rotary
Position Embedding"; Su 2022, RoFormerV2 and "GAU-α" notes): the builders and checkpoint maps.

All three are BERT-shaped encoders whose only position signal is the rotary embedding of the
queries and keys (interleaved pairs, ``θ_i = 10000^(-2i/d)``), so no table limits the input
length. Inputs ``[token_ids, segment_ids]`` ``(batch, length)``; output the last hidden state
``(batch, length, hidden)`` or the bert4keras heads (``with_pool``, ``with_mlm``).

* RoFormer: BERT without the absolute position table, post-norm, BERT's checkpoint names.
* RoFormerV2: no biases anywhere, parameter-free RMS norms ``x / sqrt(mean(x²) + ε)`` after
  the embeddings and after every residual add, bias-free feed-forward, MLM head tied to the
  token embeddings without transform or bias. Names: BERT's minus every beta, gamma and bias.
* GAU-α: RoFormerV2 whose layers are each one gated attention unit
  ``o = W_o (u ⊙ A v)``, ``A = softmax(log(max(n,16))/log(512) · q kᵀ/√s)``, with ``u, v, z``
  split from ``swish(W_i x)`` and ``q, k`` per-dimension scalings of ``z`` rotated by RoPE;
  ``x = norm(x + o)``. Names ``GAU_alpha/encoder/layer_{i}/gau/...``.

``attention="linear"`` or ``"vq"`` (or ``"softmax"``/``"gau"``) swaps the attention layer of
every block while keeping the rest of the model.
"""

import keras
import numpy as np

from keraformer.checks import check_positive_ints
from keraformer.embedding import Embedding
from keraformer.masks import AttentionMask
from keraformer.models.bert import BERT, APPLICATION_MASKS
from keraformer.models.blocks import TransformerBlock, attention_class
from keraformer.normalization import LayerNormalization
from keraformer.positions import RotaryEmbedding

FULL_MASK_ATTENTIONS = ("softmax", "gau")


class RoFormer(BERT):
    """RoFormer builder: BERT with rotary positions on the queries and keys of every layer.

    Options as :class:`~keraformer.models.bert.BERT` (no ``hierarchical_position``: there is
    no table) plus ``attention`` (``"softmax"`` by default, ``"linear"``, ``"vq"``, ``"gau"``)
    and ``attention_options`` (extra constructor arguments of that layer, e.g. the VQ codebook
    size). With a non-softmax attention the blocks get the padding mask and ``causal=True``
    for ``application="lm"``; ``"unilm"`` needs an attention that takes full boolean masks.
    Hugging Face ``roformer`` directories load too (the sinusoidal buffer is dropped; an
    ``embedding_size`` below ``hidden_size`` adds the ``embeddings_project`` mapping), and
    ``save_pretrained`` writes one (``RoFormerModel``, ``RoFormerForMaskedLM``, or
    ``RoFormerForCausalLM`` with ``is_decoder`` for ``application="lm"``).
    """

    default_attention = "softmax"
    config_defaults = {}

    def __init__(self, config, application="encoder", with_pool=False, with_mlm=None,
                 keep_tokens=None, dropout_rate=None, recompute=False, entropy_scaling=False,
                 attention=None, attention_options=None, rotary_base=10000, name=None):
        config = {**self.config_defaults, **config}
        super().__init__(config, application, with_pool=with_pool, with_mlm=with_mlm,
                         keep_tokens=keep_tokens, dropout_rate=dropout_rate,
                         recompute=recompute, entropy_scaling=entropy_scaling, name=name)
        if self.config.get("rotary_value"):
            raise ValueError("RoFormer with `rotary_value=True` (rotated values) is not "
                             "supported; received rotary_value=True in the config")
        self.attention = attention or self.default_attention
        attention_class(self.attention)
        self.attention_options = dict(attention_options or {})
        self.check_rotary_size()
        self.rotary_base = rotary_base
        self.embedding_size = self.config.get("embedding_size") or self.hidden_size
        if self.with_pool and not self.has_pooler():
            raise ValueError(f"`with_pool=True`: {type(self).__name__} checkpoints have no "
                             f"pooler; received with_pool={with_pool!r}")

    def has_pooler(self):
        return True

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
    def rotary(self):
        return RotaryEmbedding(base=self.rotary_base, interleaved=True)

    def block_options(self):
        options = super().block_options()
        options.update(rotary=self.rotary(), attention=self.attention,
                       attention_options=self.attention_options)
        if self.attention == "gau":  # a gated unit takes its width and key size from the config
            options["attention_options"] = {
                "units": self.intermediate_size,
                "key_size": self.config.get("attention_key_size", 128),
                "activation": self.activation, **self.attention_options}
        return options

    def norm_layer(self, name):
        return LayerNormalization(epsilon=self.epsilon, name=name)

    def embed(self, token_ids, segment_ids):
        """Token + segment embeddings, normalised, dropped out, mapped to ``hidden_size``."""
        self.token_embedding = Embedding(self.vocab_size, self.embedding_size,
                                         embeddings_initializer=self.initializer,
                                         name="Embedding-Token")
        x = self.token_embedding(token_ids)
        segments = self.config.get("type_vocab_size", 2)
        self.segment_embedding = None
        if segments:
            self.segment_embedding = Embedding(
                segments, self.embedding_size, ids_name="segment_ids",
                embeddings_initializer=self.initializer, name="Embedding-Segment")
            x = keras.layers.Add(name="Embedding-Add")([x, self.segment_embedding(segment_ids)])
        self.embedding_norm = self.norm_layer("Embedding-Norm")
        x = keras.layers.Dropout(self.dropout_rate, name="Embedding-Dropout")(
            self.embedding_norm(x))
        self.embedding_mapping_dense = None
        if self.embedding_size != self.hidden_size:
            self.embedding_mapping_dense = keras.layers.Dense(
                self.hidden_size, use_bias=self.use_bias(),
                kernel_initializer=self.initializer, name="Embedding-Mapping")
            x = self.embedding_mapping_dense(x)
        return x

    def use_bias(self):
        return True

    def masks(self, token_ids, segment_ids):
        """``(mask, causal)`` for the blocks: the full application mask for attentions that
        take one (softmax, GAU), else the padding mask plus a causal flag."""
        if self.attention in FULL_MASK_ATTENTIONS:
            inputs = [token_ids, segment_ids] if self.application == "unilm" else token_ids
            mask = AttentionMask(APPLICATION_MASKS[self.application], pad_id=self.pad_id,
                                 name="Attention-Mask")(inputs)
            return mask, False
        if self.application == "unilm":
            raise ValueError(f"application='unilm' needs attention='softmax' (a full "
                             f"boolean mask); received attention={self.attention!r}")
        mask = AttentionMask("padding", pad_id=self.pad_id, name="Attention-Mask")(token_ids)
        return mask, self.application == "lm"

    def make_block(self, i):
        return TransformerBlock(self.heads, self.hidden_size // self.heads,
                                self.intermediate_size, **self.block_options(),
                                name=f"Transformer-{i}")

    def build(self):
        token_ids = keras.Input((None,), dtype="int32", name="Input-Token")
        segment_ids = keras.Input((None,), dtype="int32", name="Input-Segment")
        x = self.embed(token_ids, segment_ids)
        mask, causal = self.masks(token_ids, segment_ids)
        self.blocks = []
        for i in range(self.num_layers):
            block = self.make_block(i)
            x = block(x, attention_mask=mask, causal=causal)
            self.blocks.append(block)
        self.model = keras.Model([token_ids, segment_ids], self.heads_on(x), name=self.name)
        return self.model

    def mlm_head(self, x):
        """BERT's head; its transform maps to ``embedding_size`` (tied to the token table)."""
        hidden_size, self.hidden_size = self.hidden_size, self.embedding_size
        try:
            return super().mlm_head(x)
        finally:
            self.hidden_size = hidden_size

    # -- checkpoint names -----------------------------------------------------------------
    def block_mapping(self, i, block):
        if self.attention != "softmax":
            return self.swapped_block_mapping(i, block)
        return super().block_mapping(i, block)

    def swapped_block_mapping(self, i, block):
        """Names for a block whose attention was swapped: the attention layer's own weights
        under ``.../attention/<weight path>``, the rest as usual."""
        p = f"{self.prefix}/encoder/layer_{i}/"
        mapping = {p + "attention/" + v.path.split("/attention/", 1)[-1]: v
                   for v in block.attention.weights}
        if block.use_feedforward:
            ffn = block.feedforward
            mapping.update({p + "intermediate/dense/kernel": ffn.input_dense.kernel,
                            p + "output/dense/kernel": ffn.output_dense.kernel})
            if ffn.use_bias:
                mapping.update({p + "intermediate/dense/bias": ffn.input_dense.bias,
                                p + "output/dense/bias": ffn.output_dense.bias})
        for norm, name in ((block.attention_norm, "attention/output/LayerNorm/"),
                           (getattr(block, "feedforward_norm", None), "output/LayerNorm/")):
            if norm is not None and norm.scale:
                mapping[p + name + "gamma"] = norm.gamma
            if norm is not None and norm.center:
                mapping[p + name + "beta"] = norm.beta
        return mapping

    def embedding_mapping(self):
        p = f"{self.prefix}/embeddings/"
        mapping = {p + "word_embeddings": self.token_embedding.embeddings}
        if self.embedding_norm.scale:
            mapping[p + "LayerNorm/gamma"] = self.embedding_norm.gamma
        if self.embedding_norm.center:
            mapping[p + "LayerNorm/beta"] = self.embedding_norm.beta
        if self.segment_embedding is not None:
            mapping[p + "token_type_embeddings"] = self.segment_embedding.embeddings
        if self.embedding_mapping_dense is not None:
            q = f"{self.prefix}/encoder/embedding_hidden_mapping_in/"
            mapping[q + "kernel"] = self.embedding_mapping_dense.kernel
            if self.embedding_mapping_dense.use_bias:
                mapping[q + "bias"] = self.embedding_mapping_dense.bias
        return mapping

    def from_hf_names(self, arrays, transposed):
        arrays = {k: v for k, v in arrays.items() if "embed_positions" not in k}
        converted = super().from_hf_names(arrays, transposed)
        old = f"{self.prefix}/embeddings_project/"
        return {name.replace(old, f"{self.prefix}/encoder/embedding_hidden_mapping_in/"): value
                for name, value in converted.items()}

    # -- Hugging Face export -----------------------------------------------------------
    def check_hf_export(self):
        """Refuse options that ``transformers``' RoFormer cannot express (it would compute
        something else with the same weights)."""
        refusals = [
            (self.attention != "softmax", "attention", "'softmax'", self.attention),
            (self.rotary_base != 10000, "rotary_base", "10000", self.rotary_base),
            (self.with_pool, "with_pool", "False (transformers' RoFormer has no pooler)",
             self.with_pool),
            (self.application == "unilm", "application",
             "'encoder' or 'lm' (transformers has no UniLM mask)", self.application),
            (self.entropy_scaling, "entropy_scaling", "False", self.entropy_scaling),
            (self.segment_embedding is None, "type_vocab_size", "at least 1",
             self.config.get("type_vocab_size")),
        ]
        for refused, argument, expected, received in refusals:
            if refused:
                raise ValueError(f"save_pretrained: `{argument}` must be {expected} for a "
                                 f"Hugging Face RoFormer; received {received!r}. Use "
                                 f"save_weights_as_checkpoint or save instead")

    def hf_max_positions(self):
        """Rows of transformers' sinusoidal table, which bounds its input length."""
        return self.config.get("max_position_embeddings") or 1536

    def hf_arrays(self):
        """BERT's PyTorch names under ``roformer.``, the embedding projection as
        ``roformer.embeddings_project`` and the sinusoidal table transformers stores."""
        self.check_hf_export()
        model = f"{self.prefix}."
        project = f"{self.prefix}.encoder.embedding_hidden_mapping_in."
        arrays = {}
        for name, array in super().hf_arrays().items():
            if name.startswith(project):
                name = "roformer.embeddings_project." + name[len(project):]
            elif name.startswith(model):
                name = "roformer." + name[len(model):]
            arrays[name] = array
        arrays["roformer.encoder.embed_positions.weight"] = rotary_table(
            self.hf_max_positions(), self.hidden_size // self.heads)
        return arrays

    def hf_config(self):
        config = super().hf_config()
        mlm_class = "RoFormerForCausalLM" if self.application == "lm" else "RoFormerForMaskedLM"
        config.update(model_type="roformer",
                      architectures=[mlm_class if self.with_mlm else "RoFormerModel"],
                      embedding_size=self.embedding_size,
                      max_position_embeddings=self.hf_max_positions(),
                      is_decoder=self.application == "lm", rotary_value=False,
                      tie_word_embeddings=True)
        return config


class RoFormerV2(RoFormer):
    """RoFormerV2 builder: RoFormer without biases, with parameter-free RMS norms and a tied,
    transform-free MLM head (``with_mlm``); no pooler."""

    def has_pooler(self):
        return False

    def use_bias(self):
        return False

    def norm_layer(self, name):
        return LayerNormalization(rms=True, center=False, scale=False, epsilon=self.epsilon,
                                  name=name)

    def block_options(self):
        options = super().block_options()
        options.update(use_bias=False, normalization={"rms": True, "center": False,
                                                      "scale": False, "epsilon": self.epsilon})
        return options

    def mlm_head(self, x):
        """Logits ``h · Eᵀ`` with the token table, then softmax unless ``with_mlm="linear"``."""
        x = self.token_embedding(x, reverse=True)
        activation = "linear" if self.with_mlm == "linear" else "softmax"
        return keras.layers.Activation(activation, dtype="float32", name="MLM-Activation")(x)

    def block_mapping(self, i, block):
        if self.attention != "softmax":
            return self.swapped_block_mapping(i, block)
        p = f"{self.prefix}/encoder/layer_{i}/"
        att, ffn = block.attention, block.feedforward
        return {p + "attention/self/query/kernel": att.query_dense.kernel,
                p + "attention/self/key/kernel": att.key_dense.kernel,
                p + "attention/self/value/kernel": att.value_dense.kernel,
                p + "attention/output/dense/kernel": att.output_dense.kernel,
                p + "intermediate/dense/kernel": ffn.input_dense.kernel,
                p + "output/dense/kernel": ffn.output_dense.kernel}

    def head_mapping(self):
        return {}

    def save_pretrained(self, directory):
        raise NotImplementedError(
            f"{type(self).__name__} cannot be saved as a Hugging Face directory: transformers "
            f"has no port of RoFormerV2 or GAU-α (bias-free layers, parameter-free RMS norms"
            f"{', gated attention units' if isinstance(self, GAUAlpha) else ''}), so no "
            f"transformers class could load it; use save_weights_as_checkpoint (Google / "
            f"bert4keras format) or save (keraformer's own format)")


class GAUAlpha(RoFormerV2):
    """GAU-α builder: RoFormerV2's embeddings and norms, each layer one gated attention unit
    (``intermediate_size`` units, ``attention_key_size`` (128) for ``q``/``k``, the config's
    ``hidden_act`` (swish), ``softmax_plus`` normalisation, RoPE, no biases) then add & norm.
    ``attention="softmax"``, ``"linear"`` or ``"vq"`` puts that attention in the unit's place.
    """

    default_attention = "gau"
    layer_prefix = "GAU_alpha"

    config_defaults = {"hidden_act": "swish", "num_attention_heads": 1}

    def block_options(self):
        options = super().block_options()
        gau = self.attention == "gau"
        key_size = self.config.get("attention_key_size", 128)
        options["feedforward"] = not gau
        if gau:
            options["attention_options"] = {
                "units": self.intermediate_size, "key_size": key_size,
                "activation": self.activation, "normalization": "softmax_plus",
                "min_length": 16, **self.attention_options}
        return options

    def block_mapping(self, i, block):
        if self.attention != "gau":
            return super().block_mapping(i, block)
        p = f"{self.layer_prefix}/encoder/layer_{i}/gau/"
        gau = block.attention
        return {p + "i_dense/kernel": gau.i_dense.kernel,
                p + "o_dense/kernel": gau.o_dense.kernel,
                p + "q_scaleoffset/gamma": gau.q_scaleoffset.gamma,
                p + "k_scaleoffset/gamma": gau.k_scaleoffset.gamma}


def rotary_table(positions, dim):
    """``(positions, dim)`` float32 table of transformers' RoFormer: ``sin(p·θ_i)`` in the
    first ``ceil(dim/2)`` features, ``cos(p·θ_i)`` in the rest, ``θ_i = 10000^(-2i/dim)``,
    computed in float64 as transformers does."""
    angles = np.arange(positions)[:, None] / np.power(10000.0, 2 * np.arange(
        (dim + 1) // 2) / dim)
    return np.concatenate([np.sin(angles), np.cos(angles[:, :dim // 2])], 1).astype("float32")
