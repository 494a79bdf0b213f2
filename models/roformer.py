"""RoFormer, RoFormerV2 and GAU-α (Su et al. 2021 "RoFormer: Enhanced Transformer with Rotary
Position Embedding"; Su 2022, RoFormerV2 and "GAU-α" notes): their builder classes.

All three are rows of ``keraformer.models.bert.FAMILIES`` built by the one encoder builder;
their only position signal is the rotary embedding of the queries and keys (interleaved
pairs, ``θ_i = 10000^(-2i/d)``), so no table limits the input length.

* RoFormer: BERT without the absolute position table, post-norm, BERT's checkpoint names.
* RoFormerV2: no biases anywhere, parameter-free RMS norms ``x / sqrt(mean(x²) + ε)`` after
  the embeddings and after every residual add, bias-free feed-forward, MLM head tied to the
  token embeddings without transform or bias. Names: BERT's minus every beta, gamma and bias.
* GAU-α: RoFormerV2 whose layers are each one gated attention unit
  ``o = W_o (u ⊙ A v)``, ``A = softmax(log(max(n,16))/log(512) · q kᵀ/√s)``, with ``u, v, z``
  split from ``swish(W_i x)`` and ``q, k`` per-dimension scalings of ``z`` rotated by RoPE;
  ``x = norm(x + o)``. Names ``GAU_alpha/encoder/layer_{i}/gau/...``.

``attention="linear"`` or ``"vq"`` (or ``"softmax"``/``"gau"``) swaps the attention layer of
every block while keeping the rest of the model. Hugging Face ``roformer`` directories load
(the sinusoidal buffer is dropped; an ``embedding_size`` below ``hidden_size`` adds the
``embeddings_project`` mapping) and RoFormer's ``save_pretrained`` writes one
(``RoFormerModel``, ``RoFormerForMaskedLM``, or ``RoFormerForCausalLM`` with ``is_decoder``
for ``application="lm"``).
"""

import numpy as np

from keraformer.models.bert import BERT, SCOPE


class RoFormer(BERT):
    """RoFormer builder (``FAMILIES["roformer"]``), exportable to transformers' RoFormer."""

    model_name = "roformer"

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
        model = f"{SCOPE}."
        project = f"{SCOPE}.encoder.embedding_hidden_mapping_in."
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



class RoFormerV2(BERT):
    """RoFormerV2 builder (``FAMILIES["roformer_v2"]``)."""

    model_name = "roformer_v2"


class GAUAlpha(BERT):
    """GAU-α builder (``FAMILIES["gau_alpha"]``): each layer one gated attention unit
    (``intermediate_size`` units, ``attention_key_size`` (128) for ``q``/``k``, the config's
    ``hidden_act`` (swish), ``softmax_plus`` normalisation, RoPE, no biases) then add & norm.
    ``attention="softmax"``, ``"linear"`` or ``"vq"`` puts that attention in the unit's place.

    The unit has one head, so ``num_attention_heads`` must be 1 or absent (it defaults to 1;
    the released GAU-α config says 1, the Hugging Face and Paddle ports leave it out); another
    value is refused rather than ignored (bert4keras' ``GAU_alpha`` ignores it). With an
    attention swap it sets the heads of that attention.
    """

    model_name = "gau_alpha"


def rotary_table(positions, dim):
    """``(positions, dim)`` float32 table of transformers' RoFormer: ``sin(p·θ_i)`` in the
    first ``ceil(dim/2)`` features, ``cos(p·θ_i)`` in the rest, ``θ_i = 10000^(-2i/dim)``,
    computed in float64 as transformers does."""
    angles = np.arange(positions)[:, None] / np.power(10000.0, 2 * np.arange(
        (dim + 1) // 2) / dim)
    return np.concatenate([np.sin(angles), np.cos(angles[:, :dim // 2])], 1).astype("float32")
