"""Swapping the attention of a builder keeps token order, and options an attention kind cannot
honour are refused by name.

Permutation test: every encoder builder (``bert``, ``roberta``: absolute positions;
``roformer``, ``roformer_v2``, ``gau_alpha``: rotary only) with every attention kind it
accepts, as an encoder and as a causal language model. Reordering the other tokens must move
the watched token's output (token 0 for the encoder, the last token for ``lm``) by more than
1e-4 relative to its size. The language model has one layer: in a deeper causal stack the
prefix sums carry order even without positions, which would let a position-blind model
pass. The weights are drawn with ``initializer_range=0.5`` so that attention is far from
uniform (measured: 8.6e-4 for GAU-α's one-layer ``lm`` to 0.14). A position-blind block
moves it by float noise only (measured 0 to 1.2e-7; asserted < 1e-5 below), so the test
fails for a model that ignores positions, as RoFormers built with ``attention="linear"`` or
``"vq"`` did before their layers took ``rotary``.
"""

import keras
import numpy as np
import pytest

from keraformer.models import build_transformer_model
from keraformer.models.blocks import TransformerBlock
from keraformer.positions import RotaryEmbedding
from tests.references import config_for

CONFIG = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=24, type_vocab_size=2, attention_key_size=8,
              initializer_range=0.5, dropout_rate=0.0)
KINDS = ("softmax", "linear", "vq", "gau")
SWAPS = [("bert", None), ("roberta", None)] + [
    (model, kind) for model in ("roformer", "roformer_v2", "gau_alpha") for kind in KINDS]
MOVED = 1e-4  # relative change that token order must cause
BLIND = 1e-5  # relative change a position-blind model stays below


def relative_change(a, b):
    return float(np.abs(a - b).max() / np.abs(a).max())


def permuted(length=8, seed=0, causal=False):
    """Token ids ``(1, length)`` and the same ids with all but the watched token reversed."""
    tokens = np.random.default_rng(seed).permutation(np.arange(1, 50))[:length][None]
    tokens = tokens.astype("int32")
    order = tokens.copy()
    if causal:
        order[0, :-1] = tokens[0, :-1][::-1]
    else:
        order[0, 1:] = tokens[0, 1:][::-1]
    return tokens, order


@pytest.mark.parametrize("application", ["encoder", "lm"])
@pytest.mark.parametrize("model, attention", SWAPS, ids=lambda v: str(v))
def test_token_order_changes_the_output(model, attention, application):
    keras.utils.set_random_seed(1)
    options = {} if attention is None else {"attention": attention}
    causal = application == "lm"
    layers = {"num_hidden_layers": 1} if causal else {}
    network = build_transformer_model(model=model, application=application,
                                      **config_for(model, {**CONFIG, **layers}, attention),
                                      **options)
    tokens, order = permuted(causal=causal)
    watched = -1 if causal else 0
    a, b = (np.asarray(network([t, np.zeros_like(t)]))[0, watched] for t in (tokens, order))
    assert relative_change(a, b) > MOVED


@pytest.mark.parametrize("attention", KINDS)
def test_a_position_blind_block_fails_the_permutation_check(attention):
    """The control: without rotary positions every kind is permutation-equivariant."""
    keras.utils.set_random_seed(2)
    options = {"units": 24, "key_size": 8} if attention == "gau" else {}
    block = TransformerBlock(2, 8, 24, attention=attention, attention_options=options,
                             kernel_initializer=keras.initializers.RandomNormal(stddev=0.5))
    x = np.random.RandomState(3).randn(1, 8, 16).astype("float32")
    y = x.copy()
    y[0, 1:] = x[0, 1:][::-1]
    a, b = (np.asarray(block(t))[0, 0] for t in (x, y))
    assert relative_change(a, b) < BLIND
    rotated = TransformerBlock.from_config({**block.get_config(), "rotary": RotaryEmbedding()})
    rotated(x)
    rotated.set_weights(block.get_weights())
    a, b = (np.asarray(rotated(t))[0, 0] for t in (x, y))
    assert relative_change(a, b) > MOVED


# (attention, block options, text of the refusal)
REFUSED = [
    ("linear", {"entropy_scaling": True},
     "attention='linear' does not support entropy_scaling=True"),
    ("linear", {"attention_dropout_rate": 0.1},
     "attention='linear' does not support attention_dropout_rate=0.1"),
    ("vq", {"attention_dropout_rate": 0.1},
     "attention='vq' does not support attention_dropout_rate=0.1"),
    ("gau", {"entropy_scaling": True, "attention_options": {"units": 8}},
     "attention='gau' does not support entropy_scaling=True"),
    ("linear", {"attention_options": {"dropout_rate": 0.1}},
     "attention='linear' does not support dropout_rate=0.1"),
    ("linear", {"attention_options": {"codes": 16}},
     "attention='linear' does not support codes=16"),
    ("softmax", {"attention_options": {"feature_map": "elu"}},
     "attention='softmax' does not support feature_map='elu'"),
    ("vq", {"attention_options": {"chunk_size": 8}},
     "attention='vq' does not support chunk_size=8"),
    ("gau", {"attention_options": {"units": 8, "codes": 4}},
     "attention='gau' does not support codes=4"),
]


@pytest.mark.parametrize("attention, options, message", REFUSED,
                         ids=[f"{a}-{m.split()[-1]}" for a, _, m in REFUSED])
def test_options_a_kind_cannot_honour_are_refused_by_name(attention, options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        TransformerBlock(2, 4, 16, attention=attention, **options)


def test_rotary_with_a_feature_map_that_cannot_take_it_is_refused():
    block = TransformerBlock(2, 4, 16, attention="linear", rotary=RotaryEmbedding(),
                             attention_options={"feature_map": "softmax"})
    with pytest.raises(ValueError, match="rotary.*feature_map='softmax'"):
        block(np.zeros((1, 3, 8), "float32"))


@pytest.mark.parametrize("attention, options, message", [
    ("linear", {"entropy_scaling": True},
     "attention='linear' does not support entropy_scaling=True"),
    ("vq", {"attention_probs_dropout_prob": 0.1},
     "attention='vq' does not support attention_dropout_rate=0.1"),
    ("gau", {"entropy_scaling": True}, "attention='gau' does not support entropy_scaling=True"),
])
def test_builders_refuse_by_name(attention, options, message):
    config = {**CONFIG, "dropout_rate": None, "attention_probs_dropout_prob": 0.0, **options}
    with pytest.raises(ValueError, match=message):
        build_transformer_model(model="roformer", attention=attention, **config)


@pytest.mark.parametrize("attention", ["softmax", "vq"])
def test_entropy_scaling_is_honoured_where_the_formula_allows(attention):
    """Softmax and VQ (softmax over quantised keys) scale their logits: the output changes."""
    keras.utils.set_random_seed(4)
    plain = TransformerBlock(2, 8, 24, attention=attention, rotary=RotaryEmbedding(),
                             kernel_initializer=keras.initializers.RandomNormal(stddev=0.5))
    x = np.random.RandomState(5).randn(1, 8, 16).astype("float32")
    plain(x)
    scaled = TransformerBlock.from_config({**plain.get_config(), "entropy_scaling": True})
    scaled(x)
    scaled.set_weights(plain.get_weights())
    assert scaled.attention.entropy_scaling
    assert relative_change(np.asarray(plain(x)), np.asarray(scaled(x))) > 1e-3
