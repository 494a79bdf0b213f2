"""Property-based fuzzing of public layers and builders with random shapes, dtypes, lengths,
masks (all-masked rows, length 1) and configs.

Each case must give a correctly shaped, finite result, or a ``ValueError``/``TypeError`` whose
message names the offending argument; never a crash inside the backend, a NaN, or a silent
broadcast. The number of cases each test ran is printed (``pytest -s``) via ``CASES``.
"""

import collections

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keraformer.embedding import Embedding
from keraformer.feedforward import FeedForward
from keraformer.masks import AttentionMask
from keraformer.models import build_transformer_model
from keraformer.normalization import LayerNormalization
from keraformer.positions import PositionEmbedding

CASES = collections.Counter()
FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


def finite(x):
    return bool(np.isfinite(np.asarray(keras.ops.cast(x, "float32"))).all())


@FUZZ
@given(shape=st.lists(st.integers(1, 6), min_size=2, max_size=4),
       dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
       center=st.booleans(), scale=st.booleans(), rms=st.booleans())
def test_layer_normalization(shape, dtype, center, scale, rms):
    CASES["LayerNormalization"] += 1
    layer = LayerNormalization(center=center, scale=scale, rms=rms, dtype=dtype)
    x = np.random.RandomState(len(shape)).randn(*shape).astype("float32") * 100
    y = layer(keras.ops.cast(x, dtype))
    assert tuple(y.shape) == tuple(shape) and finite(y)


@FUZZ
@given(batch=st.integers(1, 3), length=st.integers(1, 7), dim=st.integers(1, 9),
       units=st.integers(1, 9), glu=st.booleans(),
       activation=st.sampled_from(["gelu", "relu", "swish", "gelu_new", "tanh"]))
def test_feedforward(batch, length, dim, units, glu, activation):
    CASES["FeedForward"] += 1
    y = FeedForward(units, activation, glu=glu)(np.ones((batch, length, dim), "float32"))
    assert tuple(y.shape) == (batch, length, dim) and finite(y)


@FUZZ
@given(vocab=st.integers(1, 20), dim=st.integers(1, 8), batch=st.integers(1, 3),
       length=st.integers(1, 6), offset=st.integers(-3, 3))
def test_embedding_range_is_checked(vocab, dim, batch, length, offset):
    CASES["Embedding"] += 1
    layer = Embedding(vocab, dim)
    ids = np.full((batch, length), max(0, vocab - 1 + offset), "int32")
    if offset < 0 and vocab - 1 + offset < 0:
        ids[:] = vocab - 1 + offset  # negative ids
    if (ids >= vocab).any() or (ids < 0).any():
        with pytest.raises(ValueError, match="token_ids"):
            layer(ids)
    else:
        y = layer(ids)
        assert tuple(y.shape) == (batch, length, dim)
        logits = layer(keras.ops.ones((batch, length, dim)), reverse=True)
        assert tuple(logits.shape) == (batch, length, vocab)


@FUZZ
@given(rows=st.integers(1, 8), length=st.integers(1, 80), hierarchical=st.booleans(),
       dim=st.integers(1, 6))
def test_position_embedding_lengths(rows, length, hierarchical, dim):
    CASES["PositionEmbedding"] += 1
    layer = PositionEmbedding(rows, dim, hierarchical=hierarchical,
                              embeddings_initializer="random_normal")
    x = np.zeros((2, length, dim), "float32")
    limit = rows * rows if hierarchical else rows
    if length > limit:
        with pytest.raises(ValueError, match=str(length)):
            layer(x)
    else:
        y = layer(x)
        assert tuple(y.shape) == (2, length, dim) and finite(y)


@FUZZ
@given(batch=st.integers(1, 3), length=st.integers(1, 9),
       mode=st.sampled_from(["padding", "causal", "unilm"]), data=st.data())
def test_attention_mask_shapes(batch, length, mode, data):
    CASES["AttentionMask"] += 1
    ids = np.array(data.draw(st.lists(st.lists(st.integers(0, 3), min_size=length,
                                                max_size=length), min_size=batch,
                                       max_size=batch)), "int32")
    segments = np.zeros_like(ids)
    segments[:, length // 2:] = 1
    mask = np.asarray(AttentionMask(mode)([ids, segments] if mode == "unilm" else ids))
    rows = 1 if mode == "padding" else length
    assert mask.shape == (batch, 1, rows, length) and mask.dtype == bool
    np.testing.assert_array_equal(mask[:, 0, -1, :], ids != 0 if mode == "padding" else
                                  mask[:, 0, -1, :] & (ids != 0))
    assert not (mask & (ids == 0)[:, None, None, :]).any()  # padding keys never attended


CONFIGS = st.fixed_dictionaries({
    "vocab_size": st.integers(5, 40), "heads": st.integers(1, 4),
    "head_size": st.integers(1, 8), "num_hidden_layers": st.integers(1, 2),
    "intermediate_size": st.integers(1, 16), "max_position_embeddings": st.integers(4, 16),
    "application": st.sampled_from(["encoder", "lm", "unilm"]),
    "hidden_act": st.sampled_from(["gelu", "relu", "gelu_new"]),
})


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(config=CONFIGS, batch=st.integers(1, 3), length=st.integers(1, 20),
       all_padding=st.booleans())
def test_bert_builder(config, batch, length, all_padding):
    CASES["BERT"] += 1
    config = dict(config)
    heads, head_size = config.pop("heads"), config.pop("head_size")
    application = config.pop("application")
    model = build_transformer_model(model="bert", application=application,
                                    hidden_size=heads * head_size, num_attention_heads=heads,
                                    with_mlm="linear", **config)
    rng = np.random.RandomState(length)
    ids = rng.randint(1, config["vocab_size"], (batch, length)).astype("int32")
    if all_padding:
        ids[0] = 0  # a row with no real token: every query fully masked
    segments = np.zeros_like(ids)
    if length > config["max_position_embeddings"]:
        with pytest.raises(ValueError, match=f"{length}"):
            model([ids, segments])
        return
    out = model([ids, segments])
    assert tuple(out.shape) == (batch, length, config["vocab_size"]) and finite(out)


@pytest.mark.parametrize("bad, match", [
    ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"vocab_size": 2.5}, "vocab_size"),
    ({"intermediate_size": -1}, "intermediate_size"),
])
def test_bert_bad_configs(bad, match):
    config = dict(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=8)
    with pytest.raises((ValueError, TypeError), match=match):
        build_transformer_model(**{**config, **bad})


def test_report_case_counts():
    """Runs last in this file: prints how many fuzz cases each test drew."""
    print("fuzz cases:", dict(CASES), "total", sum(CASES.values()))
    assert sum(CASES.values()) >= 100
