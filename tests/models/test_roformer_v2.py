"""RoFormerV2 against an independent NumPy forward pass, Google-format checkpoints, masks."""

import json

import keras
import numpy as np
import pytest

from keraformer import checkpoints
from keraformer.models import build_transformer_model, load_pretrained

CONFIG = dict(vocab_size=53, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=40, type_vocab_size=2, hidden_act="relu")
HEADS, HEAD = 4, 8


def random_checkpoint(seed=0):
    """Google-format arrays with RoFormerV2's names: BERT's minus every bias, beta, gamma."""
    rng = np.random.default_rng(seed)
    w = lambda *shape: (0.3 * rng.standard_normal(shape)).astype("float32")
    arrays = {"bert/embeddings/word_embeddings": w(53, 32),
              "bert/embeddings/token_type_embeddings": w(2, 32)}
    for i in range(2):
        p = f"bert/encoder/layer_{i}/"
        arrays.update({p + "attention/self/query/kernel": w(32, 32),
                       p + "attention/self/key/kernel": w(32, 32),
                       p + "attention/self/value/kernel": w(32, 32),
                       p + "attention/output/dense/kernel": w(32, 32),
                       p + "intermediate/dense/kernel": w(32, 40),
                       p + "output/dense/kernel": w(40, 32)})
    return arrays


# -- the NumPy reference, from the formulas ---------------------------------------------------
def rms_norm(x, eps=1e-12):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def rope(x):
    """Interleaved rotary embedding of (batch, length, heads, dim): pair (2i, 2i+1) at
    position m turns by m · 10000^(-2i/dim)."""
    length, dim = x.shape[1], x.shape[-1]
    angle = np.arange(length)[:, None] * 10000.0 ** (-np.arange(0, dim, 2) / dim)
    cos = np.cos(angle)[None, :, None, :]
    sin = np.sin(angle)[None, :, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def allowed(tokens, segments, application):
    """(batch, q, k) booleans: key not padding, plus causal / UniLM structure."""
    n = tokens.shape[1]
    keys = (tokens != 0)[:, None, :]
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    if application == "lm":
        return keys & (j <= i)[None]
    if application == "unilm":
        return keys & ((segments[:, None, :] == 0) | (j <= i)[None])
    return np.broadcast_to(keys, (len(tokens), n, n))


def numpy_roformer_v2(w, tokens, segments, application="encoder"):
    x = w["bert/embeddings/word_embeddings"][tokens]
    x = rms_norm(x + w["bert/embeddings/token_type_embeddings"][segments])
    mask = allowed(tokens, segments, application)[:, None]
    b, n = tokens.shape
    for i in range(2):
        p = f"bert/encoder/layer_{i}/"
        heads = lambda name: (x @ w[p + name]).reshape(b, n, HEADS, HEAD)
        q = rope(heads("attention/self/query/kernel"))
        k = rope(heads("attention/self/key/kernel"))
        v = heads("attention/self/value/kernel")
        scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(HEAD)
        scores = np.where(mask, scores, -1e9)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        o = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, -1)
        x = rms_norm(x + o @ w[p + "attention/output/dense/kernel"])
        f = np.maximum(x @ w[p + "intermediate/dense/kernel"], 0) @ w[p + "output/dense/kernel"]
        x = rms_norm(x + f)
    return x, x @ w["bert/embeddings/word_embeddings"].T


def inputs(seed=1):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 53, (2, 9)).astype("int32")
    tokens[1, 6:] = 0
    segments = np.zeros_like(tokens)
    segments[:, 4:] = 1
    segments[1, 6:] = 0
    return tokens, segments


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("roformer_v2")
    arrays = random_checkpoint()
    checkpoints.write_tf_checkpoint(arrays, str(path / "model.ckpt"))
    with open(path / "bert_config.json", "w") as f:
        json.dump(CONFIG, f)
    return arrays, path


@pytest.fixture(scope="module")
def builders(checkpoint):
    arrays, path = checkpoint
    return {app: load_pretrained(str(path), model="roformer_v2", application=app,
                                 with_mlm="linear", return_keras_model=False)
            for app in ("encoder", "lm", "unilm")}


@pytest.mark.parametrize("application", ["encoder", "lm", "unilm"])
def test_matches_numpy_reference(checkpoint, builders, application):
    arrays, _ = checkpoint
    tokens, segments = inputs()
    _, expected = numpy_roformer_v2(arrays, tokens, segments, application)
    logits = keras.ops.convert_to_numpy(builders[application].model([tokens, segments]))
    real = tokens != 0
    np.testing.assert_allclose(logits[real], expected[real], atol=1e-4, rtol=1e-4)


def test_encoder_hidden_states_match_numpy_reference(checkpoint):
    arrays, path = checkpoint
    tokens, segments = inputs(2)
    model = build_transformer_model(str(path / "bert_config.json"), str(path / "model.ckpt"),
                                    model="roformer_v2")
    hidden = keras.ops.convert_to_numpy(model([tokens, segments]))
    expected, _ = numpy_roformer_v2(arrays, tokens, segments)
    np.testing.assert_allclose(hidden[tokens != 0], expected[tokens != 0], atol=1e-4, rtol=0)


def test_checkpoint_names_and_exact_round_trip(checkpoint, builders, tmp_path):
    arrays, _ = checkpoint
    builder = builders["lm"]
    assert set(builder.variable_mapping()) == set(arrays)
    builder.save_weights_as_checkpoint(str(tmp_path / "again.ckpt"))
    saved = checkpoints.read_tf_checkpoint(str(tmp_path))
    assert set(saved) == set(arrays)
    for name, value in arrays.items():
        np.testing.assert_array_equal(saved[name], value)


def test_has_no_bias_gamma_or_beta(builders):
    names = [v.path for v in builders["encoder"].model.weights]
    assert not [n for n in names if n.endswith(("bias", "beta", "gamma"))]


@pytest.mark.parametrize("application", ["encoder", "lm", "unilm"])
def test_padding_does_not_change_real_positions(builders, application):
    tokens, segments = inputs(3)
    tokens, segments = tokens[:1], segments[:1]
    model = builders[application].model
    short = keras.ops.convert_to_numpy(model([tokens, segments]))
    long = keras.ops.convert_to_numpy(model([np.pad(tokens, ((0, 0), (0, 4))),
                                             np.pad(segments, ((0, 0), (0, 4)))]))
    np.testing.assert_allclose(long[:, :9], short, atol=1e-5, rtol=0)


@pytest.mark.parametrize("application", ["lm", "unilm"])
def test_no_leak_from_future_positions(builders, application):
    tokens, segments = inputs(4)
    tokens, segments = tokens[:1], segments[:1]
    changed = tokens.copy()
    changed[0, 6:] = changed[0, 6:] % 52 + 1
    model = builders[application].model
    a = keras.ops.convert_to_numpy(model([tokens, segments]))
    b = keras.ops.convert_to_numpy(model([changed, segments]))
    np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-5, rtol=0)
    assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-3


def test_long_input_matches_reference(checkpoint, builders):
    """No position table: 600 tokens (beyond BERT's 512) still follow the formula."""
    arrays, _ = checkpoint
    rng = np.random.default_rng(5)
    tokens = rng.integers(1, 53, (1, 600)).astype("int32")
    segments = np.zeros_like(tokens)
    hidden, expected = numpy_roformer_v2(arrays, tokens, segments, "lm")
    logits = keras.ops.convert_to_numpy(builders["lm"].model([tokens, segments]))
    np.testing.assert_allclose(logits, expected, atol=1e-3, rtol=1e-4)


def test_with_pool_is_refused():
    with pytest.raises(ValueError, match="with_pool"):
        build_transformer_model(model="roformer_v2", with_pool=True, **CONFIG)


def test_checkpoint_missing_a_variable_is_named(checkpoint, tmp_path):
    arrays, _ = checkpoint
    arrays = dict(arrays)
    del arrays["bert/encoder/layer_1/output/dense/kernel"]
    checkpoints.write_tf_checkpoint(arrays, str(tmp_path / "model.ckpt"))
    with pytest.raises(ValueError, match="layer_1/output/dense/kernel"):
        build_transformer_model(checkpoint_path=str(tmp_path / "model.ckpt"),
                                model="roformer_v2", **CONFIG)
