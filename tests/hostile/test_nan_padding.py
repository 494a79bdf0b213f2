"""NaN at padding never reaches a real position.

A masked key gets an exact zero attention weight, but ``0 · NaN`` is NaN: a NaN (or inf) key
or value at a padded position, or a NaN ``[PAD]`` embedding row, used to turn every real
position of its row into NaN. Each attention core and layer is run twice, with finite and
with NaN keys/values at the padded positions: the outputs at every query must be equal and
finite (and, for softmax attention, equal the NumPy reference over the unmasked keys). The
builders are run with the ``[PAD]`` row set to NaN: their outputs at the real positions equal
those with the original row.

Out of scope (stated in the README): a NaN at a *real* position reaches the later positions
of a causal model through their zero-weighted future keys only in the sense that the
position itself is NaN; padding is what is masked for every query.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keraformer.attentions import (GatedAttentionUnit, LinearAttention, MultiHeadAttention,
                                   VQAttention, dot_product_attention, linear_attention,
                                   vq_attention)
from keraformer.models import build_transformer_model
from tests.references import config_for, numpy_softmax_attention, segment_batch, tiny_configs

RNG = np.random.default_rng(0)
BATCH, LENGTH, HEADS, DIM = 2, 6, 2, 4
Q, K, V = (RNG.normal(size=(BATCH, LENGTH, HEADS, DIM)).astype("float32") for _ in range(3))
KEEP = np.ones((BATCH, LENGTH), bool)
KEEP[0, 4:] = False  # the first row's last two positions are padding
CODEBOOK = RNG.normal(size=(HEADS, 3, DIM)).astype("float32")
X = RNG.normal(size=(BATCH, LENGTH, 8)).astype("float32")


def at_padding(x, value):
    x = x.copy()
    x[~KEEP] = value
    return x


KEY_MASK_4D = KEEP[:, None, None, :]
CORES = {
    "softmax fused": lambda k, v: dot_product_attention(Q, k, v, mask=KEY_MASK_4D),
    "softmax entropy-scaled": lambda k, v: dot_product_attention(Q, k, v, mask=KEY_MASK_4D,
                                                                 entropy_scaling=True),
    "softmax causal": lambda k, v: dot_product_attention(Q, k, v, mask=KEY_MASK_4D,
                                                         causal=True),
    "softmax per-query mask": lambda k, v: dot_product_attention(
        Q, k, v, mask=np.broadcast_to(KEY_MASK_4D, (BATCH, 1, LENGTH, LENGTH))),
    "linear elu": lambda k, v: linear_attention(Q, k, v, mask=KEEP),
    "linear softmax causal": lambda k, v: linear_attention(Q, k, v, mask=KEEP, causal=True,
                                                           feature_map="softmax"),
    "vq": lambda k, v: vq_attention(Q, k, v, CODEBOOK, mask=KEEP),
    "vq causal": lambda k, v: vq_attention(Q, k, v, CODEBOOK, mask=KEY_MASK_4D, causal=True,
                                           block_size=2),
}


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("name", sorted(CORES))
def test_core_ignores_nan_keys_and_values_at_padding(name, bad):
    run = CORES[name]
    want = np.asarray(run(K, V))
    got = np.asarray(run(at_padding(K, bad), at_padding(V, bad)))
    assert np.isfinite(got).all(), f"{name}: a {bad} at padding reached the outputs"
    np.testing.assert_array_equal(got, want)


def test_softmax_with_nan_padding_equals_the_numpy_reference():
    got = np.asarray(dot_product_attention(Q, at_padding(K, np.nan), at_padding(V, np.nan),
                                           mask=KEY_MASK_4D))
    np.testing.assert_allclose(got, numpy_softmax_attention(Q, K, V, KEY_MASK_4D), atol=1e-5,
                               rtol=0)  # float32 against float64


def twice(layer, bad_x, **call):
    """``layer(X)`` and ``layer(bad_x)`` from the same state: every variable (weights, an EMA
    codebook, dropout's seed) is set back between the calls, so both draw the same dropout."""
    layer(X, **call)  # builds the layer
    start = [np.array(ops.convert_to_numpy(v)) for v in layer.variables]
    want = np.asarray(layer(X, **call))
    for variable, value in zip(layer.variables, start):
        variable.assign(value)
    return want, np.asarray(layer(bad_x, **call))


LAYERS = {
    "MultiHeadAttention": (lambda: MultiHeadAttention(HEADS, DIM), KEY_MASK_4D),
    "LinearAttention": (lambda: LinearAttention(HEADS, DIM), KEEP),
    "GatedAttentionUnit softmax_plus": (lambda: GatedAttentionUnit(16, key_size=4), KEEP),
    "GatedAttentionUnit relu2": (lambda: GatedAttentionUnit(16, key_size=4,
                                                            normalization="relu2"), KEEP),
    "GatedAttentionUnit mixed chunks": (lambda: GatedAttentionUnit(
        16, key_size=4, normalization="relu2", chunk_size=2), KEEP),
    "VQAttention": (lambda: VQAttention(HEADS, DIM, codes=3), KEEP),
}


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_ignores_nan_inputs_at_padding(name, training):
    """Self-attention over ``X`` with NaN rows at the padding: outputs at the real positions
    (padded queries have NaN inputs of their own) equal those with finite padding."""
    make, mask = LAYERS[name]
    want, got = twice(make(), at_padding(X, np.nan), mask=mask, training=training)
    assert np.isfinite(got[KEEP]).all(), f"{name}: NaN at padding reached a real position"
    np.testing.assert_allclose(got[KEEP], want[KEEP], atol=1e-6, rtol=0)


def test_multi_head_attention_with_dropout_ignores_nan_values_at_padding():
    layer = MultiHeadAttention(HEADS, DIM, dropout_rate=0.5)
    want, got = twice(layer, at_padding(X, np.nan), mask=KEY_MASK_4D, training=True)
    assert np.isfinite(got[KEEP]).all()
    np.testing.assert_allclose(got[KEEP], want[KEEP], atol=1e-6, rtol=0)


# -- builders with a NaN [PAD] row --------------------------------------------------------------

VOCAB = 24
ENCODER, T5_CONFIG = tiny_configs(VOCAB, layers=2)
BUILDS = [("bert", "encoder"), ("bert", "lm"), ("bert", "unilm"), ("roformer", "encoder"),
          ("roformer_v2", "encoder"), ("gau_alpha", "encoder"), ("gau_alpha", "unilm")]


def with_nan_pad_row(model):
    layer = model.get_layer("Embedding-Token")
    table = np.array(ops.convert_to_numpy(layer.embeddings))
    table[0] = np.nan
    layer.embeddings.assign(table)


@pytest.mark.parametrize("model_name, application", BUILDS,
                         ids=[f"{m}-{a}" for m, a in BUILDS])
def test_nan_pad_row_never_reaches_real_positions(model_name, application):
    """The last hidden state (the lm/unilm MLM head ties the [PAD] row as the output vector
    of the [PAD] token, so its NaN logit is the model's own weight, not padding)."""
    model = build_transformer_model(model=model_name, application=application,
                                    **config_for(model_name, ENCODER))
    blocks = [layer for layer in model.layers if layer.name.startswith("Transformer-")]
    model = keras.Model(model.inputs, blocks[-1].output)
    tokens, segments = segment_batch(3, VOCAB)  # the second row is padded from position 6
    want = np.asarray(model([tokens, segments]))
    with_nan_pad_row(model)
    got = np.asarray(model([tokens, segments]))
    real = tokens != 0
    assert np.isfinite(got[real]).all(), "the NaN [PAD] row reached a real position"
    np.testing.assert_allclose(got[real], want[real], atol=1e-6, rtol=0)


def test_nan_pad_row_never_reaches_the_t5_encoder_outputs():
    builder = build_transformer_model(model="t5.1.1", return_keras_model=False, **T5_CONFIG)
    source = np.array([[5, 6, 7, 1, 0, 0], [5, 6, 7, 8, 9, 1]], "int32")
    want = np.asarray(builder.encoder(source))
    with_nan_pad_row(builder.model)
    got = np.asarray(builder.encoder(source))
    real = source != 0
    assert np.isfinite(got[real]).all()
    np.testing.assert_allclose(got[real], want[real], atol=1e-6, rtol=0)
