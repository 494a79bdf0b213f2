"""Property-based fuzzing of every public layer, loss, optimizer and builder with random shapes,
dtypes, lengths, masks (all-masked rows, length 1) and configs.

Each case must give a correctly shaped, finite result, or a ``ValueError``/``TypeError`` whose
message names the offending argument; never a crash inside the backend (InvalidArgumentError,
XlaRuntimeError, IndexError...), a NaN, or a silent broadcast (a mask of the wrong length).
Most tests draw at most one ``fault`` per case (``"argument:variant"``): the named argument is
made invalid and the error must name it. The number of cases each test ran, and how many of
them were rightly rejected, is printed by the last test (``pytest -s``). Backend-agnostic:
``keras.ops`` and NumPy only, so it runs under TensorFlow and JAX.
"""

import collections
import contextlib
import os

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from keraformer.attentions import (GatedAttentionUnit, LinearAttention, MultiHeadAttention,
                                   VQAttention, dot_product_attention, linear_attention,
                                   vq_attention)
from keraformer.embedding import Embedding
from keraformer.feedforward import FeedForward
from keraformer.generation import viterbi_decode
from keraformer.losses import (EMOLoss, LogitAdjustedLoss, adjust_logits, emo_loss,
                               global_pointer_crossentropy, logit_adjusted_loss,
                               multilabel_categorical_crossentropy)
from keraformer.masks import AttentionMask
from keraformer.models import (ConditionalRandomField, EfficientGlobalPointer, GlobalPointer,
                               build_transformer_model)
from keraformer.normalization import LayerNormalization
from keraformer.optimizers import SGD, AdamW, PiecewiseLinearSchedule, recompute_grad
from keraformer.positions import (PositionEmbedding, RelativePositionBias, RotaryEmbedding,
                                  SinusoidalPositionEmbedding, apply_rotary)
from keraformer.positions.relative import relative_position_bucket
from tests.references import (crf_path_scores, numpy_global_pointer,
                              numpy_multilabel_crossentropy)

# a key length of 1 is a case drawn on purpose, not a mistake to warn about
pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis")

CASES = collections.Counter()     # cases drawn, per test
REJECTED = collections.Counter()  # of those, rightly refused with an error naming the argument
CURRENT = [None]
ERRORS = (ValueError, TypeError)

# no shrinking: a failing case is printed as drawn (shrinking builders takes minutes)
BASE = dict(deadline=None, derandomize=True, database=None,
            phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
# Eager JAX compiles every op anew for every new shape (about 20x slower per case than
# TensorFlow here), so it draws fewer cases; KERAFORMER_FUZZ_SCALE=1 runs them all.
SCALE = float(os.environ.get("KERAFORMER_FUZZ_SCALE",
                             1.0 if keras.backend.backend() == "tensorflow" else 0.25))


def examples(count):
    return max(4, round(count * SCALE))


FUZZ = settings(max_examples=examples(25), **BASE)
SMALL = settings(max_examples=examples(15), **BASE)
SEEDS = st.integers(0, 2 ** 16)
DTYPES = st.sampled_from(["float32", "float16", "bfloat16"])
POLICIES = st.sampled_from(["float32", "float16", "bfloat16", "mixed_float16"])


def case(name):
    CASES[name] += 1
    CURRENT[0] = name


@contextlib.contextmanager
def rejected(argument):
    """The block must raise a ValueError/TypeError whose message matches ``argument``."""
    with pytest.raises(ERRORS, match=argument):
        yield
    REJECTED[CURRENT[0]] += 1


def finite(x):
    return bool(np.isfinite(np.asarray(keras.ops.cast(x, "float32"))).all())


def faults(*names):
    """One fault ``"argument:variant"`` of ``names``; tests marked ``FAULTY`` run once with
    valid cases (the fault drawn is ignored) and once with a fault in every case."""
    return st.sampled_from(names)


FAULTY = pytest.mark.parametrize("faulty", [False, True], ids=["valid", "faulty"])


def faulty_case(name, faulty, fault, seed=0):
    """Counts a case of ``name`` in a ``FAULTY`` test; returns the fault it checks (``None``
    in the valid run) and a NumPy random state seeded with ``seed``."""
    case(name)
    return (fault if faulty else None), np.random.RandomState(seed)


def named(fault):
    """Regex for an error message that names the argument of ``fault`` (``None``: no error)."""
    if fault is None:
        return None
    argument = fault.split(":")[0]
    return f"`{argument}`" if len(argument) == 1 else rf"\b{argument}\b"


def is_(fault, argument):
    return fault is not None and fault.split(":")[0] == argument


def outcome(call, fault, shape=None):
    """``call()`` must raise an error naming the argument of ``fault`` when there is one, else
    return a finite tensor of ``shape``, which is returned for more checks."""
    if fault:
        with rejected(named(fault)):
            call()
        return None
    out = call()
    if shape is not None:
        assert tuple(out.shape) == tuple(shape), (tuple(out.shape), shape)
    assert all(finite(x) for x in keras.tree.flatten(out))
    return out


def tensor(rng, shape, dtype="float32", scale=1.0):
    return keras.ops.cast((rng.randn(*shape) * scale).astype("float32"), dtype)


@FUZZ
@given(shape=st.lists(st.integers(1, 6), min_size=2, max_size=4),
       dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
       center=st.booleans(), scale=st.booleans(), rms=st.booleans())
def test_layer_normalization(shape, dtype, center, scale, rms):
    case("LayerNormalization")
    layer = LayerNormalization(center=center, scale=scale, rms=rms, dtype=dtype)
    x = np.random.RandomState(len(shape)).randn(*shape).astype("float32") * 100
    y = layer(keras.ops.cast(x, dtype))
    assert tuple(y.shape) == tuple(shape) and finite(y)


@FUZZ
@given(batch=st.integers(1, 3), length=st.integers(1, 7), dim=st.integers(1, 9),
       units=st.integers(1, 9), glu=st.booleans(),
       activation=st.sampled_from(["gelu", "relu", "swish", "gelu_new", "tanh"]))
def test_feedforward(batch, length, dim, units, glu, activation):
    case("FeedForward")
    y = FeedForward(units, activation, glu=glu)(np.ones((batch, length, dim), "float32"))
    assert tuple(y.shape) == (batch, length, dim) and finite(y)


@FUZZ
@given(vocab=st.integers(1, 20), dim=st.integers(1, 8), batch=st.integers(1, 3),
       length=st.integers(1, 6), offset=st.integers(-3, 3))
def test_embedding_range_is_checked(vocab, dim, batch, length, offset):
    case("Embedding")
    layer = Embedding(vocab, dim)
    ids = np.full((batch, length), max(0, vocab - 1 + offset), "int32")
    if offset < 0 and vocab - 1 + offset < 0:
        ids[:] = vocab - 1 + offset  # negative ids
    if (ids >= vocab).any() or (ids < 0).any():
        with rejected("token_ids"):
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
    case("PositionEmbedding")
    layer = PositionEmbedding(rows, dim, hierarchical=hierarchical,
                              embeddings_initializer="random_normal")
    x = np.zeros((2, length, dim), "float32")
    limit = rows * rows if hierarchical else rows
    if length > limit:
        with rejected(str(length)):
            layer(x)
    else:
        y = layer(x)
        assert tuple(y.shape) == (2, length, dim) and finite(y)


@FUZZ
@given(batch=st.integers(1, 3), length=st.integers(1, 9),
       mode=st.sampled_from(["padding", "causal", "unilm"]), data=st.data())
def test_attention_mask_shapes(batch, length, mode, data):
    case("AttentionMask")
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


@SMALL
@given(config=CONFIGS, batch=st.integers(1, 3), length=st.integers(1, 20),
       all_padding=st.booleans())
def test_bert_builder(config, batch, length, all_padding):
    case("BERT")
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
        with rejected(f"{length}"):
            model([ids, segments])
        return
    out = model([ids, segments])
    assert tuple(out.shape) == (batch, length, config["vocab_size"]) and finite(out)


def faulty_ids(fault, ids, segments, positions, rng):
    """The model inputs ``[ids, segments]`` with ``fault`` applied (``None``: as they are)."""
    batch, length = ids.shape
    if fault == "token_ids:fraction":
        ids = ids.astype("float32")
        ids[rng.randint(batch), rng.randint(length)] += 0.5
    elif fault == "token_ids:ragged":
        ids = [list(row) for row in ids] + [[1] * (length + 1)]
    elif fault == "token_ids:string":
        ids = ids.astype(str)
    elif fault == "token_ids:empty":
        ids, segments = ids[:, :0], segments[:, :0]
    elif fault == "token_ids:too_long":
        ids = np.ones((batch, positions + 1 + rng.randint(3)), "int32")
        segments = np.zeros_like(ids)
    elif fault == "segment_ids:batch":
        segments = np.concatenate([segments, segments[:1]])
    elif fault == "segment_ids:length":
        segments = segments[:, :-1] if length > 1 else np.zeros((batch, 2), "int32")
    elif fault == "segment_ids:fraction":
        segments = segments + 0.25
    return [ids, segments]


@FAULTY
@SMALL
@given(config=CONFIGS, batch=st.integers(1, 3), length=st.integers(1, 12),
       predict=st.booleans(), nan_pad_row=st.booleans(),
       fault=faults("token_ids:fraction", "token_ids:ragged", "token_ids:string",
                    "token_ids:empty", "token_ids:too_long", "segment_ids:batch",
                    "segment_ids:length", "segment_ids:fraction"))
def test_bert_model_inputs(faulty, config, batch, length, predict, nan_pad_row, fault):
    """The builders' models check ids where they enter (eager call or ``predict``), and a NaN
    ``[PAD]`` row never reaches a real position."""
    fault, rng = faulty_case("BERT model inputs", faulty, fault, batch * 100 + length)
    config = dict(config)
    heads, head_size = config.pop("heads"), config.pop("head_size")
    application = config.pop("application")
    positions = config["max_position_embeddings"]
    model = build_transformer_model(model="bert", application=application,
                                    hidden_size=heads * head_size, num_attention_heads=heads,
                                    **config)
    length = min(length, positions)
    ids = rng.randint(1, config["vocab_size"], (batch, length)).astype("int32")
    ids[-1, length // 2 + 1:] = 0  # padding in the last row
    if nan_pad_row and application == "encoder":  # lm/unilm tie the row as [PAD]'s logit
        table = model.get_layer("Embedding-Token")
        values = np.array(keras.ops.convert_to_numpy(table.embeddings))
        values[0] = np.nan
        table.embeddings.assign(values)
    inputs = faulty_ids(fault, ids, np.zeros_like(ids), positions, rng)

    def call():
        if predict:
            return model.predict(inputs, verbose=0)
        return model(inputs)
    if fault:
        outcome(call, fault)
        return
    out = np.asarray(call())
    assert out.shape[:2] == (batch, length)
    assert np.isfinite(out[ids != 0]).all()


@pytest.mark.parametrize("bad, match", [
    ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"vocab_size": 2.5}, "vocab_size"),
    ({"intermediate_size": -1}, "intermediate_size"),
])
def test_bert_bad_configs(bad, match):
    case("BERT bad configs")
    config = dict(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=8)
    with rejected(match):
        build_transformer_model(**{**config, **bad})


# -- attentions: functional cores -----------------------------------------------------------

MASK_SHAPES = {
    "keys": lambda b, h, q, k: (b, 1, 1, k), "keys2d": lambda b, h, q, k: (b, k),
    "full": lambda b, h, q, k: (b, 1, q, k), "heads": lambda b, h, q, k: (1, h, q, k),
    "one_row": lambda b, h, q, k: (1, 1, 1, k),
    # faults: a wrong key length that would broadcast, a wrong batch, unsupported ranks
    "short": lambda b, h, q, k: (b, 1, 1, k + 1 if k == 1 else 1),
    "short2d": lambda b, h, q, k: (b, k + 1 if k == 1 else 1),
    "batch": lambda b, h, q, k: (b + 1, 1, 1, k), "rank3": lambda b, h, q, k: (b, q, k),
}


def attention_mask(rng, kind, batch, heads, q_len, k_len):
    """A boolean mask of ``kind`` (see ``MASK_SHAPES``) whose first row masks every key."""
    if kind is None:
        return None
    mask = rng.rand(*MASK_SHAPES[kind](batch, heads, q_len, k_len)) > 0.4
    mask[0] = False  # all-masked rows
    return mask


QKV_FAULTS = ("q:rank", "k:dim", "v:length", "k:heads", "v:batch")


def qkv(rng, batch, q_len, k_len, heads, dim, v_dim, dtype, fault, scale=3.0):
    """q, k, v ``(batch, length, heads, d)``, with the shape ``fault`` if it is one of theirs."""
    q_shape = (batch, q_len, heads * dim) if fault == "q:rank" else (batch, q_len, heads, dim)
    k_shape = (batch, k_len, heads + (fault == "k:heads"), dim + (fault == "k:dim"))
    v_shape = (batch + (fault == "v:batch"), k_len + (fault == "v:length"), heads, v_dim)
    return [tensor(rng, s, dtype, scale) for s in (q_shape, k_shape, v_shape)]


def mask_kind(fault, kind):
    return fault.split(":")[1] if is_(fault, "mask") else kind


@FAULTY
@FUZZ
@given(batch=st.integers(1, 3), q_len=st.integers(1, 6), k_len=st.integers(1, 6),
       heads=st.integers(1, 3), dim=st.integers(1, 8), v_dim=st.integers(1, 8), dtype=DTYPES,
       mask=st.sampled_from([None, "keys", "full", "heads", "one_row"]),
       bias=st.sampled_from([None, "shared", "batch", "keys"]), causal=st.booleans(),
       entropy_scaling=st.booleans(), scale=st.one_of(st.none(), st.floats(0.05, 2.0)),
       fault=faults(*QKV_FAULTS, "mask:short", "mask:batch", "mask:keys2d", "mask:rank3",
                    "bias:short"), seed=SEEDS)
def test_dot_product_attention(faulty, batch, q_len, k_len, heads, dim, v_dim, dtype, mask, bias,
                               causal, entropy_scaling, scale, fault, seed):
    fault, rng = faulty_case("dot_product_attention", faulty, fault, seed)
    q, k, v = qkv(rng, batch, q_len, k_len, heads, dim, v_dim, dtype, fault)
    mask = attention_mask(rng, mask_kind(fault, mask), batch, heads, q_len, k_len)
    bias_shapes = {"shared": (1, heads, q_len, k_len), "batch": (batch, heads, q_len, k_len),
                   "keys": (1, heads, 1, k_len), "short": (1, heads, q_len, k_len + 1)}
    bias = "short" if fault == "bias:short" else bias
    bias = None if bias is None else tensor(rng, bias_shapes[bias], dtype)
    out = outcome(lambda: dot_product_attention(q, k, v, mask, bias, causal, scale,
                                                entropy_scaling),
                  fault, (batch, q_len, heads, v_dim))
    if out is not None:
        assert out.dtype == v.dtype


def bad_size(fault, argument, value):
    """``value``, or an invalid size when ``fault`` is ``argument:<variant>``."""
    if not is_(fault, argument):
        return value
    return {"zero": 0, "negative": -2, "float": 2.5, "bool": True}[fault.split(":")[1]]


def bad_sizes(fault, **sizes):
    """The values of ``sizes`` in order, through ``bad_size`` with their names."""
    return tuple(bad_size(fault, name, value) for name, value in sizes.items())


def key_padded_lengths(fault, q_len, k_len, causal):
    """``(q_len, k_len, causal)`` for the key-padding-mask attentions (linear, VQ): causal
    needs equal lengths, the ``causal:lengths`` fault breaks that on purpose, and
    ``mask:full`` needs two queries (a ``(batch, 1, 1, k)`` mask is valid for one)."""
    q_len = max(q_len, 2) if fault == "mask:full" else q_len
    if fault == "causal:lengths":
        return q_len, q_len + 1, True
    return q_len, (q_len if causal else k_len), causal


@FAULTY
@FUZZ
@given(batch=st.integers(1, 3), q_len=st.integers(1, 7), k_len=st.integers(1, 7),
       heads=st.integers(1, 3), dim=st.integers(1, 6), v_dim=st.integers(1, 6), dtype=DTYPES,
       mask=st.sampled_from([None, "keys", "keys2d", "one_row"]), causal=st.booleans(),
       feature_map=st.sampled_from(["elu", "softmax"]), chunk_size=st.integers(1, 8),
       fault=faults(*QKV_FAULTS, "mask:short", "mask:short2d", "mask:batch", "mask:full",
                    "feature_map:relu", "chunk_size:zero", "chunk_size:float",
                    "causal:lengths"), seed=SEEDS)
def test_linear_attention(faulty, batch, q_len, k_len, heads, dim, v_dim, dtype, mask, causal,
                          feature_map, chunk_size, fault, seed):
    fault, rng = faulty_case("linear_attention", faulty, fault, seed)
    q_len, k_len, causal = key_padded_lengths(fault, q_len, k_len, causal)
    q, k, v = qkv(rng, batch, q_len, k_len, heads, dim, v_dim, dtype, fault)
    mask = attention_mask(rng, mask_kind(fault, mask), batch, heads, q_len, k_len)
    feature_map = "relu" if is_(fault, "feature_map") else feature_map
    chunk_size = bad_size(fault, "chunk_size", chunk_size)
    out = outcome(lambda: linear_attention(q, k, v, mask, causal, feature_map, chunk_size),
                  fault, (batch, q_len, heads, v_dim))
    if out is not None and mask is not None and dtype == "float32":
        # masked keys never change any output: make them huge and compare
        keep = np.broadcast_to(np.asarray(mask).reshape(mask.shape[0], k_len), (batch, k_len))
        k2 = keras.ops.where(keep[:, :, None, None], k, 1e3 * keras.ops.ones_like(k))
        again = linear_attention(q, k2, v, mask, causal, feature_map, chunk_size)
        np.testing.assert_allclose(np.asarray(again), np.asarray(out), atol=1e-4)


@FAULTY
@FUZZ
@given(batch=st.integers(1, 3), q_len=st.integers(1, 7), k_len=st.integers(1, 7),
       heads=st.integers(1, 3), dim=st.integers(1, 6), v_dim=st.integers(1, 6),
       codes=st.integers(1, 6), dtype=DTYPES,
       mask=st.sampled_from([None, "keys", "keys2d", "one_row"]), causal=st.booleans(),
       block_size=st.one_of(st.none(), st.integers(1, 8)), straight_through=st.booleans(),
       fault=faults(*QKV_FAULTS, "mask:short", "mask:batch", "mask:full", "codebook:heads",
                    "codebook:dim", "codebook:rank", "block_size:zero", "block_size:float",
                    "causal:lengths"), seed=SEEDS)
def test_vq_attention(faulty, batch, q_len, k_len, heads, dim, v_dim, codes, dtype, mask, causal,
                      block_size, straight_through, fault, seed):
    fault, rng = faulty_case("vq_attention", faulty, fault, seed)
    q_len, k_len, causal = key_padded_lengths(fault, q_len, k_len, causal)
    q, k, v = qkv(rng, batch, q_len, k_len, heads, dim, v_dim, dtype, fault)
    mask = attention_mask(rng, mask_kind(fault, mask), batch, heads, q_len, k_len)
    k_heads, k_dim = (heads, dim) if fault == "q:rank" else k.shape[2:]
    codebook = tensor(rng, {"codebook:heads": (k_heads + 1, codes, k_dim),
                            "codebook:dim": (k_heads, codes, k_dim + 1),
                            "codebook:rank": (codes, k_dim)}.get(fault, (k_heads, codes, k_dim)),
                      "float32", 3.0)
    block_size = bad_size(fault, "block_size", block_size)
    outcome(lambda: vq_attention(q, k, v, codebook, mask, causal, block_size,
                                 straight_through=straight_through),
            fault, (batch, q_len, heads, v_dim))


# -- attentions: layers ---------------------------------------------------------------------

# the sizes and options drawn alike for the projected-heads layers (softmax and linear)
LAYER_SIZES = dict(batch=st.integers(1, 3), dim=st.integers(1, 8), k_dim=st.integers(1, 8),
                   heads=st.integers(1, 3), key_size=st.one_of(st.none(), st.integers(1, 5)),
                   output_dim=st.one_of(st.none(), st.integers(1, 6)), cross=st.booleans(),
                   causal=st.booleans(), policy=POLICIES)


def layer_inputs(rng, batch, q_len, k_len, dim, k_dim, policy, cross):
    """``query`` and, for cross attention, ``key``; and the key length."""
    dtype = keras.DTypePolicy(policy).compute_dtype
    query = tensor(rng, (batch, q_len, dim), dtype)
    key = tensor(rng, (batch, k_len, k_dim), dtype) if cross else None
    return query, key, (k_len if cross else q_len)


def key_padded_layer_inputs(rng, fault, mask, batch, q_len, k_len, dim, k_dim, heads, policy,
                            cross, causal):
    """``query``, ``key``, a ``mask`` of kind ``mask`` (or of the ``mask`` fault) and the query
    length for the key-padding-mask layers (linear, VQ): no cross attention when causal, and
    two queries for ``mask:full`` (a ``(batch, 1, 1, k)`` mask is valid for one)."""
    cross = cross and not causal
    q_len = max(q_len, 2) if fault == "mask:full" else q_len
    query, key, k_len = layer_inputs(rng, batch, q_len, k_len, dim, k_dim, policy, cross)
    mask = attention_mask(rng, mask_kind(fault, mask), batch, heads, q_len, k_len)
    return query, key, mask, q_len


def even(size):
    return size + size % 2


@FAULTY
@FUZZ
@given(**LAYER_SIZES, q_len=st.integers(1, 6), k_len=st.integers(1, 6),
       head_size=st.integers(1, 5), rotary=st.booleans(), entropy_scaling=st.booleans(),
       dropout=st.sampled_from([0.0, 0.3]), training=st.booleans(),
       mask=st.sampled_from([None, "keys", "full", "heads"]),
       fault=faults("heads:zero", "heads:negative", "head_size:float", "key_size:zero",
                    "output_dim:negative", "key_size:odd", "mask:short", "mask:batch",
                    "mask:keys2d"), seed=SEEDS)
def test_multi_head_attention(faulty, batch, q_len, k_len, dim, k_dim, heads, head_size, key_size,
                              output_dim, cross, rotary, entropy_scaling, causal, dropout, training,
                              policy, mask, fault, seed):
    fault, rng = faulty_case("MultiHeadAttention", faulty, fault, seed)
    query, key, k_len = layer_inputs(rng, batch, q_len, k_len, dim, k_dim, policy, cross)
    mask = attention_mask(rng, mask_kind(fault, mask), batch, heads, q_len, k_len)
    if rotary:  # rotary positions rotate pairs: an even key size, unless that is the fault
        key_size = even(key_size or head_size)
    if fault == "key_size:odd":
        rotary, key_size = True, 2 * (key_size or head_size) + 1
    heads, head_size, output_dim = bad_sizes(fault, heads=heads, head_size=head_size,
                                             output_dim=output_dim)
    key_size = key_size if fault == "key_size:odd" else bad_size(fault, "key_size", key_size)

    def call():
        layer = MultiHeadAttention(heads, head_size, key_size=key_size, output_dim=output_dim,
                                   dropout_rate=dropout, entropy_scaling=entropy_scaling,
                                   rotary=RotaryEmbedding() if rotary else None, dtype=policy)
        return layer(query, key, mask=mask, causal=causal, training=training)
    outcome(call, fault, (batch, q_len, output_dim or dim))


@FAULTY
@FUZZ
@given(**LAYER_SIZES, q_len=st.integers(1, 7), k_len=st.integers(1, 7),
       head_size=st.integers(1, 4), feature_map=st.sampled_from(["elu", "softmax"]),
       chunk_size=st.integers(1, 8), mask=st.sampled_from([None, "keys", "keys2d"]),
       fault=faults("heads:zero", "head_size:negative", "chunk_size:zero", "mask:short",
                    "mask:full"), seed=SEEDS)
def test_linear_attention_layer(faulty, batch, q_len, k_len, dim, k_dim, heads, head_size, key_size,
                                output_dim, cross, causal, feature_map, chunk_size, policy, mask,
                                fault, seed):
    fault, rng = faulty_case("LinearAttention", faulty, fault, seed)
    query, key, mask, q_len = key_padded_layer_inputs(rng, fault, mask, batch, q_len, k_len, dim,
                                                      k_dim, heads, policy, cross, causal)
    heads, head_size, chunk_size = bad_sizes(fault, heads=heads, head_size=head_size,
                                             chunk_size=chunk_size)

    def call():
        layer = LinearAttention(heads, head_size, key_size=key_size, output_dim=output_dim,
                                feature_map=feature_map, chunk_size=chunk_size, dtype=policy)
        return layer(query, key, mask=mask, causal=causal)
    outcome(call, fault, (batch, q_len, output_dim or dim))


@FAULTY
@FUZZ
@given(batch=st.integers(1, 3), length=st.integers(1, 8), dim=st.integers(1, 8),
       units=st.integers(1, 6), key_size=st.integers(1, 6),
       normalization=st.sampled_from(["softmax_plus", "softmax", "relu2"]),
       chunk_size=st.one_of(st.none(), st.none(), st.integers(1, 5)), rotary=st.booleans(),
       causal=st.booleans(), min_length=st.one_of(st.none(), st.integers(1, 16)),
       output_dim=st.one_of(st.none(), st.integers(1, 6)), policy=POLICIES,
       mask=st.sampled_from([None, "keys", "keys2d", "full"]), training=st.booleans(),
       fault=faults("units:zero", "key_size:negative", "key_size:odd", "normalization:sigmoid",
                    "chunk_size:zero", "chunk_size:softmax", "mask:short", "mask:rank3",
                    "mask:batch"), seed=SEEDS)
def test_gated_attention_unit(faulty, batch, length, dim, units, key_size, normalization,
                              chunk_size, rotary, causal, min_length, output_dim, policy, mask,
                              training, fault, seed):
    fault, rng = faulty_case("GatedAttentionUnit", faulty, fault, seed)
    x = tensor(rng, (batch, length, dim), keras.DTypePolicy(policy).compute_dtype)
    if chunk_size is not None:  # mixed-chunk attention: relu2 and key padding masks only
        normalization = "relu2"
        mask = "keys" if mask == "full" else mask
    if rotary:
        key_size = even(key_size)
    if fault == "key_size:odd":
        rotary, key_size = True, 2 * key_size + 1
    elif fault == "normalization:sigmoid":
        normalization, chunk_size = "sigmoid", None
    elif fault == "chunk_size:softmax":
        normalization, chunk_size = "softmax", 4
    elif fault == "chunk_size:zero":
        normalization, chunk_size = "relu2", 0
    mask = attention_mask(rng, mask_kind(fault, mask), batch, 1, length, length)
    units = bad_size(fault, "units", units)
    key_size = key_size if fault == "key_size:odd" else bad_size(fault, "key_size", key_size)

    def call():
        layer = GatedAttentionUnit(units, key_size, normalization=normalization,
                                   chunk_size=chunk_size, min_length=min_length,
                                   rotary=RotaryEmbedding() if rotary else None,
                                   output_dim=output_dim, dropout_rate=0.2, dtype=policy)
        return layer(x, mask=mask, causal=causal, training=training)
    outcome(call, fault, (batch, length, output_dim or dim))


@FAULTY
@FUZZ
@given(batch=st.integers(1, 3), q_len=st.integers(1, 7), k_len=st.integers(1, 7),
       dim=st.integers(1, 8), heads=st.integers(1, 3), head_size=st.integers(1, 4),
       codes=st.integers(1, 5), block_size=st.integers(1, 8), cross=st.booleans(),
       causal=st.booleans(), training=st.booleans(), decay=st.sampled_from([0.0, 0.5, 0.99]),
       policy=POLICIES, mask=st.sampled_from([None, "keys", "keys2d"]),
       fault=faults("codes:zero", "block_size:float", "heads:negative", "decay:one",
                    "mask:short", "mask:full"), seed=SEEDS)
def test_vq_attention_layer(faulty, batch, q_len, k_len, dim, heads, head_size, codes, block_size,
                            cross, causal, training, decay, policy, mask, fault, seed):
    fault, rng = faulty_case("VQAttention", faulty, fault, seed)
    query, key, mask, q_len = key_padded_layer_inputs(rng, fault, mask, batch, q_len, k_len, dim,
                                                      dim, heads, policy, cross, causal)
    codes, block_size, heads = bad_sizes(fault, codes=codes, block_size=block_size, heads=heads)
    decay = 1.0 if fault == "decay:one" else decay
    layer = []

    def call():
        layer.append(VQAttention(heads, head_size, codes=codes, block_size=block_size,
                                 decay=decay, dtype=policy))
        return layer[0](query, key, mask=mask, causal=causal, training=training)
    if outcome(call, fault, (batch, q_len, dim)) is not None:
        assert finite(layer[0].codebook)  # after the EMA update, with all-masked rows
        assert all(finite(loss) for loss in layer[0].losses)


# -- positions ------------------------------------------------------------------------------

@FAULTY
@FUZZ
@given(batch=st.integers(1, 3), length=st.integers(1, 9), heads=st.integers(1, 3),
       half=st.integers(1, 4), rank=st.sampled_from([3, 4]),
       positions=st.sampled_from([None, "1d", "2d", "offset", "one_row"]),
       base=st.sampled_from([10, 10000, 1e6]), interleaved=st.booleans(),
       scaling=st.sampled_from([None, "linear", "ntk"]), factor=st.sampled_from([0.5, 1.0, 4.0]),
       dtype=DTYPES, use_layer=st.booleans(),
       fault=faults("x:rank2", "x:rank5", "x:odd", "positions:short", "positions:long",
                    "positions:batch", "positions:rank3", "scaling:yarn", "factor:zero",
                    "factor:negative"), seed=SEEDS)
def test_rotary(faulty, batch, length, heads, half, rank, positions, base, interleaved, scaling,
                factor, dtype, use_layer, fault, seed):
    fault, rng = faulty_case("rotary", faulty, fault, seed)
    dim = 2 * half + (fault == "x:odd")
    rank = {"x:rank2": 2, "x:rank5": 5}.get(fault, rank)
    shape = {2: (batch, dim), 3: (batch, length, dim), 4: (batch, length, heads, dim),
             5: (batch, length, heads, 1, dim)}[rank]
    x = tensor(rng, shape, dtype)
    positions = fault.split(":")[1] if is_(fault, "positions") else positions
    ids = {None: None, "1d": np.arange(length), "2d": rng.randint(0, 1000, (batch, length)),
           "offset": np.arange(length) + 5000, "one_row": rng.randint(0, 9, (1, length)),
           "short": np.arange(1 if length > 1 else 2), "long": np.arange(length + 1),
           "batch": np.zeros((batch + 1, length), "int32"),
           "rank3": np.zeros((batch, length, 1), "int32")}[positions]
    scaling = "yarn" if fault == "scaling:yarn" else scaling
    factor = {"factor:zero": 0.0, "factor:negative": -1.0}.get(fault, factor)

    def call():
        if use_layer:
            return RotaryEmbedding(base, interleaved, scaling, factor)(x, positions=ids)
        return apply_rotary(x, ids, base, interleaved, scaling, factor)
    out = outcome(call, fault, shape)
    if out is not None and dtype == "float32":  # rotations keep the norm of every pair
        pairs = (lambda y: np.asarray(y).reshape(shape[:-1] + (half, 2)) if interleaved else
                 np.stack(np.split(np.asarray(y), 2, axis=-1), axis=-1))
        np.testing.assert_allclose(np.linalg.norm(pairs(out), axis=-1),
                                   np.linalg.norm(pairs(x), axis=-1), rtol=1e-4, atol=1e-4)


@FAULTY
@FUZZ
@given(heads=st.integers(1, 3), num_buckets=st.integers(4, 40), extra=st.integers(1, 150),
       bidirectional=st.booleans(), q_len=st.integers(1, 9), k_len=st.integers(1, 9),
       offset=st.integers(0, 300), dtype=DTYPES,
       fault=faults("heads:zero", "heads:float", "num_buckets:small", "max_distance:small"))
def test_relative_position_bias(faulty, heads, num_buckets, extra, bidirectional, q_len, k_len,
                                offset, dtype, fault):
    fault, _ = faulty_case("RelativePositionBias", faulty, fault)
    minimum = 4 if bidirectional else 2
    max_distance = num_buckets // minimum + extra
    if fault == "num_buckets:small":
        num_buckets = minimum - 1
    elif fault == "max_distance:small":
        max_distance = num_buckets // minimum
    heads = bad_size(fault, "heads", heads)
    query, key = np.zeros((1, q_len, 1), dtype), np.zeros((2, k_len, 1), dtype)

    def call():
        layer = RelativePositionBias(heads, num_buckets, max_distance, bidirectional,
                                     embeddings_initializer="random_normal", dtype=dtype)
        return layer(query, key, offset=offset)
    if outcome(call, fault, (1, heads, q_len, k_len)) is not None:
        relative = np.arange(k_len)[None, :] - np.arange(q_len)[:, None] - offset
        buckets = np.asarray(relative_position_bucket(relative, bidirectional, num_buckets,
                                                      max_distance))
        assert buckets.min() >= 0 and buckets.max() < num_buckets  # never an out-of-range row


@FAULTY
@FUZZ
@given(batch=st.integers(1, 3), length=st.integers(1, 40), half=st.integers(1, 5),
       merge_mode=st.sampled_from(["add", "mul", "zero"]), dtype=DTYPES,
       fault=faults("output_dim:odd", "output_dim:zero", "output_dim:mismatch",
                    "merge_mode:concat"))
def test_sinusoidal_position_embedding(faulty, batch, length, half, merge_mode, dtype, fault):
    fault, _ = faulty_case("SinusoidalPositionEmbedding", faulty, fault)
    output_dim = {"output_dim:odd": 2 * half + 1, "output_dim:zero": 0}.get(fault, 2 * half)
    input_dim = output_dim + 2 if fault == "output_dim:mismatch" else output_dim
    merge_mode = {"merge_mode:concat": "concat", "output_dim:mismatch": "add"}.get(fault,
                                                                                 merge_mode)
    x = np.ones((batch, length, max(input_dim, 1)), "float32")
    shape = (1, length, output_dim) if merge_mode == "zero" else x.shape
    outcome(lambda: SinusoidalPositionEmbedding(output_dim, merge_mode, dtype=dtype)(x), fault,
            shape)


@FAULTY
@FUZZ
@given(rows=st.integers(1, 6), length=st.integers(1, 36), dim=st.integers(1, 5),
       merge_mode=st.sampled_from(["add", "zero"]), alpha=st.sampled_from([0.0, 0.4, 0.9]),
       dtype=DTYPES, fault=faults("alpha:one", "alpha:negative", "length:beyond"))
def test_hierarchical_position_embedding(faulty, rows, length, dim, merge_mode, alpha, dtype,
                                        fault):
    fault, _ = faulty_case("PositionEmbedding hierarchical", faulty, fault)
    length = min(length, rows * rows) if fault != "length:beyond" else rows * rows + 1
    alpha = {"alpha:one": 1.0, "alpha:negative": -0.5}.get(fault, alpha)
    x = np.zeros((2, length, dim), "float32")
    layer = []

    def call():
        layer.append(PositionEmbedding(rows, dim, merge_mode=merge_mode, hierarchical=True,
                                       alpha=alpha, embeddings_initializer="random_normal",
                                       dtype=dtype))
        return layer[0](x)
    out = outcome(call, fault, ((1 if merge_mode == "zero" else 2), length, dim))
    if out is not None:  # the trained rows are kept as they are
        table = np.asarray(keras.ops.cast(layer[0].embeddings, "float32"))
        got = np.asarray(keras.ops.cast(out, "float32"))[0]
        np.testing.assert_allclose(got[:rows], table[:length], rtol=0.02, atol=0.02)


# -- losses ---------------------------------------------------------------------------------

LABEL_SHAPES = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


def sparse_labels(rng, shape, classes, fault, ignore_index=None):
    labels = rng.randint(0, classes, shape)
    if ignore_index is not None:
        labels[rng.rand(*shape) < 0.3] = ignore_index
    if fault == "y_true:high":
        labels.flat[0] = classes + (ignore_index == classes)
    elif fault == "y_true:negative":
        labels.flat[0] = -1
    elif fault == "y_true:shape":
        labels = labels[..., None] if len(shape) < 3 else labels[..., 0]
    return labels


@FAULTY
@FUZZ
@given(shape=LABEL_SHAPES, vocab=st.integers(1, 7), dim=st.integers(1, 5),
       ignore_index=st.sampled_from([None, -100, 0]),
       mask=st.sampled_from([None, "same", "none_kept", "rows"]),
       sample_weight=st.sampled_from([None, "batch", "same", "scalar"]),
       zero_row=st.booleans(), mode=st.sampled_from(["combined", "emo"]), dtype=DTYPES,
       use_class=st.booleans(),
       fault=faults("y_true:high", "y_true:negative", "y_true:shape", "cost_embeddings:vocab",
                    "cost_embeddings:rank", "mode:ce", "sample_weight:wrong", "mask:wrong"),
       seed=SEEDS)
def test_emo_loss(faulty, shape, vocab, dim, ignore_index, mask, sample_weight, zero_row, mode,
                  dtype, use_class, fault, seed):
    fault, rng = faulty_case("EMO loss", faulty, fault, seed)
    use_class = use_class and not is_(fault, "mask")  # EMOLoss takes no mask
    labels = sparse_labels(rng, shape, vocab, fault, ignore_index)
    logits = tensor(rng, shape + (vocab,), dtype, 5.0)
    cost = rng.randn(vocab + (fault == "cost_embeddings:vocab"), dim).astype("float32")
    if zero_row:
        cost[0] = 0
    if fault == "cost_embeddings:rank":
        cost = cost[None]
    mode = "ce" if fault == "mode:ce" else mode
    mask = {None: None, "same": rng.rand(*shape) > 0.5, "none_kept": np.zeros(shape, bool),
            "rows": rng.rand(shape[0], *[1] * (len(shape) - 1)) > 0.5,
            "wrong": np.ones(shape[:-1] + (shape[-1] + 1,), bool)}[mask_kind(fault, mask)]
    weight = {None: None, "batch": rng.rand(shape[0]), "same": rng.rand(*shape),
              "scalar": np.float32(0.5), "wrong": rng.rand(shape[0] + 1)}[
        "wrong" if fault == "sample_weight:wrong" else sample_weight]

    def call():
        if use_class:
            loss = EMOLoss(cost, mode=mode, ignore_index=ignore_index)
            return loss(labels, logits, sample_weight=weight)
        return emo_loss(labels, logits, cost, mask=mask, ignore_index=ignore_index,
                        sample_weight=weight, mode=mode)
    out = outcome(call, fault, ())
    if out is not None:
        assert float(out) >= -1e-3
        if not use_class and mask is not None and not np.asarray(mask).any():
            assert float(out) == 0.0  # nothing counted: zero, not NaN


@FAULTY
@FUZZ
@given(shape=LABEL_SHAPES, classes=st.integers(2, 6),
       priors=st.sampled_from(["counts", "probs", "uniform"]),
       tau=st.sampled_from([0.0, 1.0, 2.5]), sample_weight=st.sampled_from([None, "batch",
                                                                           "same"]),
       use=st.sampled_from(["function", "class", "adjust"]), dtype=DTYPES,
       fault=faults("class_priors:zero", "class_priors:negative", "class_priors:nan",
                    "class_priors:long", "class_priors:matrix", "class_priors:one_class",
                    "tau:negative", "tau:nan", "tau:string", "y_true:high", "y_true:negative",
                    "y_true:shape"), seed=SEEDS)
def test_logit_adjustment(faulty, shape, classes, priors, tau, sample_weight, use, dtype, fault,
                          seed):
    fault, rng = faulty_case("logit adjustment", faulty, fault, seed)
    if use == "adjust" and is_(fault, "y_true"):
        use = "function"
    if use == "class" and sample_weight == "batch" and len(shape) > 2:
        sample_weight = "same"  # Keras' reduction expands a (batch,) weight by one axis only
    classes = 1 if fault == "class_priors:one_class" else classes
    labels = sparse_labels(rng, shape, classes, fault)
    logits = tensor(rng, shape + (classes,), dtype, 5.0)
    counts = rng.randint(1, 1000, classes).astype("float64")
    variant = fault.split(":")[1] if is_(fault, "class_priors") else priors
    prior = {"counts": counts, "probs": counts / counts.sum(), "uniform": np.ones(classes),
             "one_class": counts, "zero": np.concatenate([[0.0], counts[1:]]),
             "negative": np.concatenate([[-1.0], counts[1:]]),
             "nan": np.concatenate([[np.nan], counts[1:]]), "long": np.ones(classes + 1),
             "matrix": np.ones((1, classes))}[variant]
    tau = {"tau:negative": -1.0, "tau:nan": float("nan"), "tau:string": "1"}.get(fault, tau)
    weight = {None: None, "batch": rng.rand(shape[0]), "same": rng.rand(*shape)}[sample_weight]

    def call():
        if use == "adjust":
            return adjust_logits(logits, prior, tau)
        if use == "class":
            return LogitAdjustedLoss(prior, tau)(labels, logits, sample_weight=weight)
        return logit_adjusted_loss(labels, logits, prior, tau)
    out = outcome(call, fault, {"adjust": shape + (classes,), "class": ()}.get(use, shape))
    if out is not None and use != "adjust":
        assert float(np.min(np.asarray(out))) >= -1e-3


# -- optimizers -----------------------------------------------------------------------------

@FAULTY
@FUZZ
@given(kind=st.sampled_from(["AdamW", "SGD"]),
       steps=st.sampled_from([1, 2, 3, 4, np.int64(2)]), nesterov=st.booleans(),
       weight_decay=st.sampled_from([None, 0.0, 0.01]), micro_steps=st.integers(1, 7),
       shape=st.lists(st.integers(1, 4), min_size=1, max_size=2).map(tuple),
       fault=faults("accumulation_steps:zero", "accumulation_steps:negative",
                    "accumulation_steps:float", "accumulation_steps:bool",
                    "accumulation_steps:string", "momentum:zero", "nesterov:steps",
                    "amsgrad:true", "gradient_accumulation_steps:both"),
       seed=SEEDS)
def test_accumulating_optimizers(faulty, kind, steps, nesterov, weight_decay, micro_steps, shape,
                                 fault, seed):
    fault, rng = faulty_case("optimizers", faulty, fault, seed)
    steps = {"accumulation_steps:zero": 0, "accumulation_steps:negative": -1,
             "accumulation_steps:float": 2.5, "accumulation_steps:bool": True,
             "accumulation_steps:string": "2"}.get(fault, steps)
    kind = {"momentum:zero": "SGD", "nesterov:steps": "SGD", "amsgrad:true": "AdamW"}.get(
        fault, kind)
    momentum = 0.0 if fault == "momentum:zero" else 0.9
    nesterov = fault == "nesterov:steps" or (nesterov and steps == 1)
    if fault in ("momentum:zero", "nesterov:steps"):
        steps = 3
    extra = {"gradient_accumulation_steps": 2} if is_(fault, "gradient_accumulation_steps") \
        else {}

    def make():
        if kind == "AdamW":
            return AdamW(0.1, weight_decay=weight_decay or 0.0, accumulation_steps=steps,
                         amsgrad=fault == "amsgrad:true", **extra)
        return SGD(0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                   accumulation_steps=steps, **extra)
    if fault:
        with rejected(named(fault)):
            make()
        return
    optimizer = make()
    variable = keras.Variable(rng.randn(*shape).astype("float32"))
    previous = np.asarray(variable.numpy())
    for t in range(micro_steps):
        gradient = keras.ops.convert_to_tensor(rng.randn(*shape).astype("float32"))
        optimizer.apply_gradients([(gradient, variable)])
        now = np.asarray(variable.numpy())
        assert np.isfinite(now).all()
        if (t + 1) % int(steps):  # inside a cycle the weights do not move
            np.testing.assert_array_equal(now, previous)
        else:
            assert not np.array_equal(now, previous)
        previous = now


@SMALL
@given(batch=st.integers(1, 3), dim=st.integers(1, 6), units=st.integers(1, 6),
       masked=st.booleans(), seed=SEEDS)
def test_recompute_grad(batch, dim, units, masked, seed):
    case("recompute_grad")
    rng = np.random.RandomState(seed)
    x = rng.randn(batch, dim).astype("float32")
    y = rng.randn(batch, dim).astype("float32")
    keep = (rng.rand(batch, dim) > 0.5).astype("float32")
    inputs = [x, keep] if masked else [x]

    def train(recompute):
        """One SGD step of a small model, the block recomputed or not: equal gradients give
        equal weights afterwards."""
        keras.utils.set_random_seed(seed)
        inner, outer = keras.layers.Dense(units, activation="tanh"), keras.layers.Dense(dim)

        def block(h, m=None):
            h = outer(inner(h))
            return h if m is None else h * m
        fn = recompute_grad(block) if recompute else block
        symbolic = [keras.Input((dim,)) for _ in inputs]
        model = keras.Model(symbolic, fn(*symbolic))
        model.compile(keras.optimizers.SGD(0.1), "mse", run_eagerly=True)
        model.train_on_batch(inputs, y)
        eager = fn(*(keras.ops.convert_to_tensor(a) for a in inputs))  # called on tensors
        return [np.asarray(w) for w in model.get_weights()], np.asarray(eager)
    plain, plain_out = train(False)
    recomputed, recomputed_out = train(True)
    for a, b in zip(plain, recomputed):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(plain_out, recomputed_out, atol=1e-5)
    assert np.isfinite(recomputed_out).all()


# -- builders -------------------------------------------------------------------------------

def token_batch(rng, vocab, batch, length, all_padding, fault, argument="token_ids"):
    ids = rng.randint(1, max(vocab, 2), (batch, length)).astype("int32")
    if all_padding:
        ids[0] = 0  # a row with no real token: every query fully masked
    if fault == f"{argument}:high":
        ids[-1, -1] = vocab
    elif fault == f"{argument}:negative":
        ids[-1, 0] = -1
    return ids


@FAULTY
@SMALL
@given(model=st.sampled_from(["roberta", "roformer", "roformer_v2", "gau_alpha"]),
       attention=st.sampled_from([None, None, "softmax", "linear", "vq", "gau"]),
       vocab=st.integers(4, 30), heads=st.integers(1, 3), head_size=st.integers(1, 4),
       layers=st.integers(1, 2), intermediate=st.integers(1, 8),
       max_position=st.integers(6, 16), key_size=st.integers(1, 4),
       application=st.sampled_from(["encoder", "lm", "unilm"]),
       with_mlm=st.sampled_from([False, "linear"]), with_pool=st.booleans(),
       batch=st.integers(1, 3), length=st.integers(1, 10), all_padding=st.booleans(),
       fault=faults("hidden_size:indivisible", "num_hidden_layers:zero", "vocab_size:negative",
                    "intermediate_size:float", "application:seq2seq", "attention:sparse",
                    "attention_key_size:odd", "hidden_size:odd_head", "with_pool:v2",
                    "application:unilm", "max_position_embeddings:zero", "token_ids:high",
                    "token_ids:negative", "segment_ids:high"), seed=SEEDS)
def test_encoder_builders(faulty, model, attention, vocab, heads, head_size, layers, intermediate,
                          max_position, key_size, application, with_mlm, with_pool, batch, length,
                          all_padding, fault, seed):
    fault, rng = faulty_case("encoder builders", faulty, fault, seed)
    rotary = model != "roberta"
    attention = None if not rotary else attention
    model = {"with_pool:v2": "roformer_v2", "max_position_embeddings:zero": "roberta",
             "attention_key_size:odd": "gau_alpha", "hidden_size:odd_head": "roformer",
             "application:unilm": "roformer", "attention:sparse": "roformer"}.get(fault, model)
    if is_(fault, "token_ids") or is_(fault, "segment_ids"):
        length = min(length, max_position)  # one error at a time
    rotary = model != "roberta"
    attention = {"attention:sparse": "sparse", "attention_key_size:odd": "gau",
                 "hidden_size:odd_head": "softmax", "application:unilm": "linear"}.get(
        fault, attention if rotary else None)
    kind = attention or ("gau" if model == "gau_alpha" else "softmax")
    if rotary:  # an even rotated size unless that is the fault
        head_size, key_size = even(head_size), 2 * key_size
    if fault == "hidden_size:odd_head":
        head_size = 3
    if kind not in ("softmax", "gau") and application == "unilm":
        application = "lm"
    if model in ("roformer_v2", "gau_alpha"):
        with_pool = False
    if model == "gau_alpha" and kind == "gau":  # one head: another count is refused
        fault = "num_attention_heads:gau" if fault == "hidden_size:indivisible" else fault
        heads = 2 if fault == "num_attention_heads:gau" else 1
    heads = max(heads, 2) if fault == "hidden_size:indivisible" else heads
    hidden = heads * head_size + (fault == "hidden_size:indivisible")
    config = dict(vocab_size=-3 if fault == "vocab_size:negative" else vocab,
                  hidden_size=hidden, num_attention_heads=heads,
                  num_hidden_layers=0 if fault == "num_hidden_layers:zero" else layers,
                  intermediate_size=2.5 if fault == "intermediate_size:float" else intermediate,
                  max_position_embeddings=0 if fault == "max_position_embeddings:zero"
                  else max_position,
                  attention_key_size=key_size + (fault == "attention_key_size:odd"))
    options = dict(application={"application:seq2seq": "seq2seq",
                                "application:unilm": "unilm"}.get(fault, application),
                   with_mlm=with_mlm, with_pool=with_pool or fault == "with_pool:v2",
                   dropout_rate=0.0)
    if attention is not None:
        options["attention"] = attention
    build_fault = None if is_(fault, "token_ids") or is_(fault, "segment_ids") else fault
    if build_fault:
        with rejected(named(build_fault)):
            build_transformer_model(model=model, **config, **options)
        return
    network = build_transformer_model(model=model, **config, **options)
    ids = token_batch(rng, vocab, batch, length, all_padding, fault)
    segments = np.zeros_like(ids)
    segments[:, length // 2:] = 1
    if fault == "segment_ids:high":
        segments[-1, -1] = 2  # type_vocab_size is 2
    if not rotary and length > max_position:
        fault = "length:beyond the position table"
    out = outcome(lambda: network([ids, segments]), fault)
    if out is None:
        return
    outs = out if isinstance(out, (list, tuple)) else [out]
    shapes = [(batch, hidden)] * bool(with_pool) + [(batch, length, vocab)] * bool(with_mlm)
    assert [tuple(o.shape) for o in outs] == (shapes or [(batch, length, hidden)])
    assert all(finite(o) for o in outs)


@FAULTY
@SMALL
@given(version=st.sampled_from(["t5", "t5.1.1", "mt5"]), vocab=st.integers(3, 30),
       d_model=st.integers(1, 8), d_kv=st.integers(1, 4), d_ff=st.integers(1, 8),
       layers=st.integers(1, 2), decoder_layers=st.one_of(st.none(), st.integers(1, 2)),
       heads=st.integers(1, 3), buckets=st.integers(4, 12), extra=st.integers(1, 30),
       batch=st.integers(1, 3), src_len=st.integers(1, 8), tgt_len=st.integers(1, 6),
       all_padding=st.booleans(),
       fault=faults("relative_attention_num_buckets:small",
                    "relative_attention_max_distance:small", "d_model:zero", "num_heads:negative",
                    "d_kv:float", "feed_forward_proj:bad", "token_ids:high",
                    "token_ids:negative", "token_ids:decoder"), seed=SEEDS)
def test_t5_builders(faulty, version, vocab, d_model, d_kv, d_ff, layers, decoder_layers, heads,
                     buckets, extra, batch, src_len, tgt_len, all_padding, fault, seed):
    fault, rng = faulty_case("T5 builders", faulty, fault, seed)
    config = dict(vocab_size=vocab, d_model=bad_size(fault, "d_model", d_model),
                  d_kv=bad_size(fault, "d_kv", d_kv), d_ff=d_ff, num_layers=layers,
                  num_decoder_layers=decoder_layers, num_heads=bad_size(fault, "num_heads", heads),
                  relative_attention_num_buckets=3 if is_(
                      fault, "relative_attention_num_buckets") else buckets,
                  relative_attention_max_distance=buckets // 2 if is_(
                      fault, "relative_attention_max_distance") else buckets // 2 + extra,
                  dropout_rate=0.0)
    if fault == "feed_forward_proj:bad":
        config["feed_forward_proj"] = "relu-gated"
    if fault and not is_(fault, "token_ids"):
        with rejected(named(fault)):
            build_transformer_model(model=version, **config)
        return
    builder = build_transformer_model(model=version, return_keras_model=False, **config)
    source = token_batch(rng, vocab, batch, src_len, all_padding, fault)
    target = token_batch(rng, vocab, batch, tgt_len, False, None)
    if fault == "token_ids:decoder":
        target[0, -1] = vocab + 1
    probs = outcome(lambda: builder.model([source, target]), fault, (batch, tgt_len, vocab))
    if probs is None:
        return
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-4)
    encoded = np.asarray(builder.encoder(source))
    assert encoded.shape == (batch, src_len, config["d_model"]) and np.isfinite(encoded).all()


BUILDER_CONFIGS = {
    "bert": dict(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=8),
    "t5": dict(vocab_size=10, d_model=8, d_kv=2, d_ff=8, num_layers=1, num_heads=2),
}
BAD_CONFIGS = [
    ("roberta", {"hidden_size": 30, "num_attention_heads": 4}, "hidden_size"),
    ("roberta", {"num_hidden_layers": -1}, "num_hidden_layers"),
    ("roberta", {"max_position_embeddings": -2}, "max_position_embeddings"),
    ("roformer", {"hidden_size": 9, "num_attention_heads": 2}, "hidden_size"),
    ("roformer", {"hidden_size": 6, "num_attention_heads": 2}, "hidden_size"),
    ("roformer", {"vocab_size": 0}, "vocab_size"),
    ("roformer", {"intermediate_size": 2.5}, "intermediate_size"),
    ("roformer_v2", {"num_attention_heads": 0}, "num_attention_heads"),
    ("roformer_v2", {"hidden_size": -8}, "hidden_size"),
    ("gau_alpha", {"intermediate_size": 0}, "intermediate_size"),
    ("gau_alpha", {"attention_key_size": -2, "num_attention_heads": 1}, "attention_key_size"),
    ("gau_alpha", {"attention_key_size": 3, "num_attention_heads": 1}, "attention_key_size"),
    ("gau_alpha", {"num_attention_heads": 2}, "num_attention_heads"),
    ("t5", {"d_model": 0}, "d_model"),
    ("t5", {"num_heads": -1}, "num_heads"),
    ("t5", {"vocab_size": "32"}, "vocab_size"),
    ("t5", {"relative_attention_num_buckets": 2}, "relative_attention_num_buckets"),
    ("t5.1.1", {"d_kv": 2.5}, "d_kv"),
    ("t5.1.1", {"feed_forward_proj": "gelu-gated"}, "feed_forward_proj"),
    ("mt5", {"d_ff": -4}, "d_ff"),
    ("mt5", {"num_decoder_layers": -1}, "num_decoder_layers"),
    ("mt5", {"relative_attention_max_distance": 8}, "relative_attention_max_distance"),
]


@pytest.mark.parametrize("model, bad, match", BAD_CONFIGS)
def test_builder_bad_configs(model, bad, match):
    case("builder bad configs")
    config = BUILDER_CONFIGS["t5" if model.startswith(("t5", "mt5")) else "bert"]
    with rejected(rf"\b{match}\b"):
        build_transformer_model(model=model, **{**config, **bad})



# == bert4keras' task heads, their losses, viterbi_decode, PiecewiseLinearSchedule ==========
# References (tests/references.py): NumPy span scores and multi-label loss from the formulas,
# a brute force over every CRF label path, np.interp for the schedule.

def assert_spans_close(scores, expected, tolerance):
    """``-inf`` at exactly the same spans, the other scores finite and close."""
    np.testing.assert_array_equal(np.isneginf(scores), np.isneginf(expected))
    real = np.isfinite(expected)
    assert np.isfinite(scores[real]).all()
    np.testing.assert_allclose(scores[real], expected[real], rtol=tolerance, atol=tolerance)


@FAULTY
@SMALL
@given(efficient=st.booleans(), batch=st.integers(1, 3), length=st.integers(1, 6),
       hidden=st.integers(1, 6), heads=st.integers(1, 3), half=st.integers(1, 3),
       rope=st.booleans(), use_bias=st.booleans(), tril=st.booleans(), masked=st.booleans(),
       extra=st.integers(1, 3),
       fault=faults("heads:zero", "heads:float", "head_size:negative", "head_size:bool",
                    "head_size:odd"), seed=SEEDS)
def test_global_pointers(faulty, efficient, batch, length, hidden, heads, half, rope, use_bias,
                         tril, masked, extra, fault, seed):
    """Scores equal the NumPy formula (1e-4), ``-inf`` exactly at masked and (``tril``)
    backward spans; appended padding changes no real span; the loss of the padded scores
    (targets set at padded spans too) equals the loss of the real ones and the formula."""
    case("GlobalPointer / EfficientGlobalPointer")
    fault = fault if faulty else None
    rng = np.random.RandomState(seed)
    layer_class = EfficientGlobalPointer if efficient else GlobalPointer
    head_size = 2 * half
    if fault == "head_size:odd":
        rope, head_size = True, 2 * half + 1
    else:
        head_size = bad_size(fault, "head_size", head_size)
    if fault:
        with rejected(named(fault)):
            layer_class(bad_size(fault, "heads", heads), head_size, RoPE=rope)
        return
    layer = layer_class(heads, head_size, RoPE=rope, use_bias=use_bias, tril_mask=tril)
    layer.build((None, None, hidden))
    weights = [rng.randn(*w.shape) * 0.7 for w in layer.get_weights()]
    layer.set_weights(weights)
    x = rng.randn(batch, length, hidden).astype("float32")
    lengths = rng.randint(0 if masked else length, length + 1, batch)
    mask = np.arange(length)[None] < lengths[:, None]  # masked: rows of any length, even 0
    out = np.asarray(layer(x, mask=mask if masked else None))
    assert out.shape == (batch, heads, length, length)
    expected = numpy_global_pointer(x, weights, heads, head_size, efficient, rope,
                                    mask if masked else None, tril)
    assert_spans_close(out, expected, 1e-4)
    # padding: extra masked positions (random hidden states) leave every real span alone
    padded_x = np.concatenate([x, rng.randn(batch, extra, hidden).astype("float32")], 1)
    padded_mask = np.concatenate([mask, np.zeros((batch, extra), bool)], 1)
    padded = np.asarray(layer(padded_x, mask=padded_mask))
    assert_spans_close(padded[..., :length, :length], out, 1e-5)
    assert np.isneginf(padded[..., length:, :]).all() and np.isneginf(padded[..., length:]).all()
    y_true = (rng.rand(batch, heads, length, length) < 0.3).astype("float32")
    padded_true = (rng.rand(*padded.shape) < 0.3).astype("float32")
    padded_true[..., :length, :length] = y_true
    loss = np.asarray(global_pointer_crossentropy(y_true, out))
    assert loss.shape == (batch,) and np.isfinite(loss).all() and (loss >= 0).all()
    np.testing.assert_allclose(np.asarray(global_pointer_crossentropy(padded_true, padded)),
                               loss, rtol=1e-5, atol=1e-5)
    flat = numpy_multilabel_crossentropy(y_true.reshape(batch, heads, -1),
                                         out.reshape(batch, heads, -1)).mean(-1)
    np.testing.assert_allclose(loss, flat, rtol=1e-4, atol=1e-4)


@FAULTY
@FUZZ
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), soft=st.booleans(),
       scale=st.sampled_from([1.0, 30.0]), left_out=st.sampled_from([0.0, 0.3, 1.0]),
       dtype=DTYPES, fault=faults("y_true:rank", "y_true:above_one", "y_true:negative",
                                  "y_true:broadcast"), seed=SEEDS)
def test_multilabel_crossentropy(faulty, shape, soft, scale, left_out, dtype, fault, seed):
    """Equals the formula (float64 NumPy on the same rounded scores; 1e-4 relative) with
    ``-inf`` scores left out, stays finite for large scores, is >= 0; targets of another
    rank or shape (one that would broadcast) or outside [0, 1] are refused naming
    ``y_true``."""
    case("multilabel_categorical_crossentropy")
    fault = fault if faulty else None
    rng = np.random.RandomState(seed)
    y_pred = rng.randn(*shape) * scale
    y_pred[rng.rand(*shape) < left_out] = -np.inf  # left_out=1: every class left out
    y_pred = np.asarray(keras.ops.cast(y_pred.astype("float32"), dtype))
    y_true = (rng.rand(*shape) if soft else rng.rand(*shape) < 0.4).astype("float32")
    if fault:
        y_true = {"y_true:rank": y_true[..., None], "y_true:above_one": y_true + 1.5,
                  "y_true:negative": y_true - 1.5, "y_true:broadcast": y_true[..., :1]
                  if shape[-1] > 1 else np.repeat(y_true, 2, axis=-1)}[fault]
    out = outcome(lambda: multilabel_categorical_crossentropy(y_true, y_pred), fault,
                  tuple(shape[:-1]))
    if out is None:
        return
    out = np.asarray(out)
    assert out.dtype == np.float32 and (out >= 0).all()
    expected = numpy_multilabel_crossentropy(y_true, np.asarray(y_pred, "float64"))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def subset(rng, labels):
    """A random non-empty list of labels."""
    chosen = [label for label in range(labels) if rng.rand() < 0.6]
    return chosen or [int(rng.randint(labels))]


@FAULTY
@SMALL
@given(batch=st.integers(1, 3), length=st.integers(1, 5), labels=st.integers(1, 3),
       lr_multiplier=st.sampled_from([1, 3, 0.5]), constrain=st.booleans(),
       explicit_mask=st.booleans(),
       fault=faults("lr_multiplier:zero", "lr_multiplier:bool", "transitions:shape",
                    "mask:shape", "starts:range", "ends:empty", "y_pred:labels",
                    "y_true:range", "y_true:one_hot", "mask:broadcast"), seed=SEEDS)
def test_crf_and_viterbi(faulty, batch, length, labels, lr_multiplier, constrain,
                         explicit_mask, fault, seed):
    """On right-padded rows (some empty): the CRF's sparse and dense losses equal the brute
    force ``log Z - score(path)`` over every label path of the real positions (1e-4);
    ``viterbi_decode`` gives the best path (with ``starts``/``ends``: the best allowed one,
    or an error naming them when none is), ``-1`` at padding, the same from ``-inf`` rows or
    an explicit ``mask``; ``crf.trans`` is the stored weight times ``lr_multiplier``. A
    label out of range at a real position, a target row that is not one-hot and a mask that
    would broadcast are refused by name."""
    case("ConditionalRandomField / viterbi_decode")
    fault = fault if faulty else None
    rng = np.random.RandomState(seed)
    if is_(fault, "lr_multiplier"):
        with rejected(named(fault)):
            ConditionalRandomField(lr_multiplier={"lr_multiplier:zero": 0,
                                                  "lr_multiplier:bool": True}[fault])
        return
    emissions = (rng.randn(batch, length, labels) * 2).astype("float32")
    lengths = rng.randint(0, length + 1, batch)
    lengths[0] = length
    mask = np.arange(length)[None] < lengths[:, None]
    crf = ConditionalRandomField(lr_multiplier=lr_multiplier)
    y_pred = np.asarray(crf(emissions, mask=mask))
    stored = rng.randn(labels, labels).astype("float32")
    crf.set_weights([stored])
    transitions = np.asarray(crf.trans, "float64")
    np.testing.assert_allclose(transitions, stored * lr_multiplier, rtol=1e-6)
    starts, ends = (subset(rng, labels), subset(rng, labels)) if constrain else (None, None)
    if fault == "mask:broadcast":
        with rejected("mask"):
            crf(emissions, mask=mask[:, :1])
        return
    if fault in ("y_true:range", "y_true:one_hot"):
        targets = np.zeros((batch, length), "int32")
        targets[0, -1] = labels  # row 0 has no padding
        with rejected("y_true"):
            if fault == "y_true:range":
                crf.sparse_loss(targets, y_pred)
            else:
                crf.dense_loss(np.ones((batch, length, labels)) * 0.5, y_pred)
        return
    if fault == "y_pred:labels":
        with rejected("y_pred"):
            crf.sparse_loss(np.zeros((batch, length), "int32"),
                            np.concatenate([y_pred, y_pred[..., :1]], -1))
        return
    if fault in ("transitions:shape", "mask:shape", "starts:range", "ends:empty"):
        arguments = {"transitions": transitions, "mask": None, "starts": starts, "ends": ends}
        arguments.update({"transitions:shape": {"transitions": transitions[:, :1].repeat(
                              labels + 1, 1)},
                          "mask:shape": {"mask": mask[:, :-1]},
                          "starts:range": {"starts": [labels]},
                          "ends:empty": {"ends": []}}[fault])
        with rejected(named(fault)):
            viterbi_decode(y_pred, **arguments)
        return
    targets = rng.randint(0, labels, (batch, length))
    sparse = np.asarray(crf.sparse_loss(targets, y_pred))
    dense = np.asarray(crf.dense_loss(np.eye(labels, dtype="float32")[targets], y_pred))
    assert sparse.shape == (batch,) and np.isfinite(sparse).all()
    np.testing.assert_allclose(dense, sparse, rtol=1e-5, atol=1e-5)
    paths = viterbi_decode(y_pred, transitions)
    masked_paths = viterbi_decode(emissions, transitions, mask=mask)
    np.testing.assert_array_equal(masked_paths if explicit_mask else paths, paths)
    for row in range(batch):
        n = lengths[row]
        assert (paths[row, n:] == -1).all()
        if n == 0:
            continue
        scores = crf_path_scores(emissions[row, :n], transitions)
        values = np.array(list(scores.values()))
        log_z = values.max() + np.log(np.exp(values - values.max()).sum())
        np.testing.assert_allclose(sparse[row], log_z - scores[tuple(targets[row, :n])],
                                   rtol=1e-4, atol=1e-4)
        assert tuple(paths[row, :n]) == max(scores, key=scores.get)
        if constrain:
            allowed = crf_path_scores(emissions[row, :n], transitions, starts, ends)
            if not allowed:  # e.g. one position whose label must be in starts and in ends
                with rejected("starts"):
                    viterbi_decode(emissions[row, :n], transitions, starts=starts, ends=ends)
                continue
            best = viterbi_decode(emissions[row, :n], transitions, starts=starts, ends=ends)
            assert tuple(best) == max(allowed, key=allowed.get)


@FAULTY
@FUZZ
@given(points=st.dictionaries(st.integers(0, 40), st.floats(0.0, 2.0), min_size=1,
                              max_size=4),
       learning_rate=st.floats(0.0, 1.0), from_zero=st.booleans(), as_pairs=st.booleans(),
       fault=faults("schedule:negative_step", "schedule:nan", "schedule:repeated",
                    "schedule:empty", "schedule:bool_step", "schedule:float_step",
                    "schedule:negative_value", "learning_rate:negative",
                    "learning_rate:inf"))
def test_piecewise_linear_schedule(faulty, points, learning_rate, from_zero, as_pairs, fault):
    """``learning_rate × np.interp(step, steps, multipliers)`` at steps 0..59 (a point
    ``(0, 0)`` first with ``from_zero`` unless the schedule starts at 0; the first value
    before the first point, the last after the last), also after a config round trip;
    bad points (negative multipliers too) and rates are refused naming ``schedule`` /
    ``learning_rate``."""
    case("PiecewiseLinearSchedule")
    fault = fault if faulty else None
    pairs = sorted(points.items())
    bad = {"schedule:negative_step": pairs + [(-1, 0.5)],
           "schedule:nan": pairs + [(99, float("nan"))],
           "schedule:repeated": pairs + [pairs[0]],
           "schedule:empty": [],
           "schedule:bool_step": pairs + [(True, 0.5)],
           "schedule:float_step": pairs + [(45.5, 0.5)],
           "schedule:negative_value": pairs + [(99, -0.5)]}
    schedule = bad.get(fault, pairs if as_pairs else dict(points))
    rate = {"learning_rate:negative": -0.1, "learning_rate:inf": float("inf")}.get(
        fault, learning_rate)
    if fault:
        with rejected(named(fault)):
            PiecewiseLinearSchedule(rate, schedule, from_zero=from_zero)
        return
    steps = np.arange(60)
    schedule = PiecewiseLinearSchedule(rate, schedule, from_zero=from_zero)
    xp, fp = [step for step, _ in pairs], [value for _, value in pairs]
    if from_zero and xp[0] != 0:
        xp, fp = [0] + xp, [0.0] + fp
    expected = rate * np.interp(steps, xp, fp)
    for candidate in (schedule, PiecewiseLinearSchedule.from_config(schedule.get_config())):
        got = np.array([float(candidate(keras.ops.convert_to_tensor(step, "int64")))
                        for step in steps[::7]] + list(np.asarray(candidate(steps))))
        np.testing.assert_allclose(got, np.concatenate([expected[::7], expected]),
                                   rtol=1e-5, atol=1e-6)


def test_report_case_counts():
    """Runs last in this file: prints how many cases each test drew and how many of them
    were rightly rejected with an error naming the argument."""
    print("\nfuzz cases:", dict(CASES), "total", sum(CASES.values()))
    print("rejected with a named error:", dict(REJECTED), "total", sum(REJECTED.values()))
    assert sum(CASES.values()) >= 500 * SCALE
