"""GAU-α against an independent NumPy forward pass, Google-format checkpoints, masks."""

import json

import keras
import numpy as np
import pytest

from keraformer import checkpoints
from keraformer.models import build_transformer_model, load_pretrained

CONFIG = dict(vocab_size=47, hidden_size=32, num_hidden_layers=2, intermediate_size=24,
              attention_key_size=16, type_vocab_size=2, hidden_act="swish")
UNITS, KEY = 24, 16


def random_checkpoint(seed=0):
    """Google-format arrays with GAU-α's names; ``i_dense`` splits as u, v, qk."""
    rng = np.random.default_rng(seed)
    w = lambda *shape, s=0.3: (s * rng.standard_normal(shape)).astype("float32")
    arrays = {"bert/embeddings/word_embeddings": w(47, 32),
              "bert/embeddings/token_type_embeddings": w(2, 32)}
    for i in range(2):
        p = f"GAU_alpha/encoder/layer_{i}/gau/"
        arrays.update({p + "i_dense/kernel": w(32, 2 * UNITS + KEY),
                       p + "o_dense/kernel": w(UNITS, 32),
                       p + "q_scaleoffset/gamma": 1 + w(KEY, s=0.2),
                       p + "k_scaleoffset/gamma": 1 + w(KEY, s=0.2)})
    return arrays


# -- the NumPy reference, from the formulas ---------------------------------------------------
def rms_norm(x, eps=1e-12):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def rope(x):
    """Interleaved rotary embedding of (batch, length, dim)."""
    length, dim = x.shape[1], x.shape[-1]
    angle = np.arange(length)[:, None] * 10000.0 ** (-np.arange(0, dim, 2) / dim)
    cos, sin = np.cos(angle)[None], np.sin(angle)[None]
    out = np.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
    return out


def allowed(tokens, segments, application):
    n = tokens.shape[1]
    keys = (tokens != 0)[:, None, :]
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    if application == "lm":
        return keys & (j <= i)[None]
    if application == "unilm":
        return keys & ((segments[:, None, :] == 0) | (j <= i)[None])
    return np.broadcast_to(keys, (len(tokens), n, n))


def numpy_gau_alpha(w, tokens, segments, application="encoder"):
    x = w["bert/embeddings/word_embeddings"][tokens]
    x = rms_norm(x + w["bert/embeddings/token_type_embeddings"][segments])
    mask = allowed(tokens, segments, application)
    n = np.maximum(mask.sum(-1, keepdims=True), 16)  # keys each query sees, floored at 16
    for i in range(2):
        p = f"GAU_alpha/encoder/layer_{i}/gau/"
        h = x @ w[p + "i_dense/kernel"]
        h = h / (1 + np.exp(-h))  # swish
        u, v, z = h[..., :UNITS], h[..., UNITS:2 * UNITS], h[..., 2 * UNITS:]
        q = rope(z * w[p + "q_scaleoffset/gamma"])
        k = rope(z * w[p + "k_scaleoffset/gamma"])
        scores = np.einsum("bqd,bkd->bqk", q, k) / np.sqrt(KEY) * np.log(n) / np.log(512)
        scores = np.where(mask, scores, -1e9)
        a = np.exp(scores - scores.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = rms_norm(x + (u * (a @ v)) @ w[p + "o_dense/kernel"])
    return x, x @ w["bert/embeddings/word_embeddings"].T


def inputs(seed=1, length=9):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 47, (2, length)).astype("int32")
    tokens[1, 6:] = 0
    segments = np.zeros_like(tokens)
    segments[:, 4:] = 1
    segments[1, 6:] = 0
    return tokens, segments


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("gau_alpha")
    arrays = random_checkpoint()
    checkpoints.write_tf_checkpoint(arrays, str(path / "model.ckpt"))
    with open(path / "bert_config.json", "w") as f:
        json.dump(CONFIG, f)
    return arrays, path


@pytest.fixture(scope="module")
def builders(checkpoint):
    arrays, path = checkpoint
    return {app: load_pretrained(str(path), model="gau_alpha", application=app,
                                 with_mlm="linear", return_keras_model=False)
            for app in ("encoder", "lm", "unilm")}


@pytest.mark.parametrize("application", ["encoder", "lm", "unilm"])
def test_matches_numpy_reference(checkpoint, builders, application):
    arrays, _ = checkpoint
    tokens, segments = inputs(length=20)  # longer than 16: the floor and the log both act
    _, expected = numpy_gau_alpha(arrays, tokens, segments, application)
    logits = keras.ops.convert_to_numpy(builders[application].model([tokens, segments]))
    real = tokens != 0
    np.testing.assert_allclose(logits[real], expected[real], atol=1e-4, rtol=1e-4)


def test_encoder_hidden_states_match_numpy_reference(checkpoint):
    arrays, path = checkpoint
    tokens, segments = inputs(2)
    model = build_transformer_model(str(path / "bert_config.json"), str(path / "model.ckpt"),
                                    model="gau_alpha")
    hidden = keras.ops.convert_to_numpy(model([tokens, segments]))
    expected, _ = numpy_gau_alpha(arrays, tokens, segments)
    np.testing.assert_allclose(hidden[tokens != 0], expected[tokens != 0], atol=1e-4, rtol=0)


def test_checkpoint_names_and_exact_round_trip(checkpoint, builders, tmp_path):
    arrays, _ = checkpoint
    builder = builders["unilm"]
    assert set(builder.variable_mapping()) == set(arrays)
    builder.save_weights_as_checkpoint(str(tmp_path / "again.ckpt"))
    saved = checkpoints.read_tf_checkpoint(str(tmp_path))
    assert set(saved) == set(arrays)
    for name, value in arrays.items():
        np.testing.assert_array_equal(saved[name], value)


@pytest.mark.parametrize("application", ["encoder", "lm", "unilm"])
def test_padding_does_not_change_real_positions(builders, application):
    tokens, segments = inputs(3)
    tokens, segments = tokens[:1], segments[:1]
    model = builders[application].model
    short = keras.ops.convert_to_numpy(model([tokens, segments]))
    long = keras.ops.convert_to_numpy(model([np.pad(tokens, ((0, 0), (0, 30))),
                                             np.pad(segments, ((0, 0), (0, 30)))]))
    np.testing.assert_allclose(long[:, :9], short, atol=1e-5, rtol=0)


@pytest.mark.parametrize("application", ["lm", "unilm"])
def test_no_leak_from_future_positions(builders, application):
    tokens, segments = inputs(4)
    tokens, segments = tokens[:1], segments[:1]
    changed = tokens.copy()
    changed[0, 6:] = changed[0, 6:] % 46 + 1
    model = builders[application].model
    a = keras.ops.convert_to_numpy(model([tokens, segments]))
    b = keras.ops.convert_to_numpy(model([changed, segments]))
    np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-5, rtol=0)
    assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-3


def test_long_input_matches_reference(checkpoint, builders):
    arrays, _ = checkpoint
    rng = np.random.default_rng(5)
    tokens = rng.integers(1, 47, (1, 600)).astype("int32")
    segments = np.zeros_like(tokens)
    _, expected = numpy_gau_alpha(arrays, tokens, segments, "encoder")
    logits = keras.ops.convert_to_numpy(builders["encoder"].model([tokens, segments]))
    np.testing.assert_allclose(logits, expected, atol=1e-3, rtol=1e-4)


def test_with_pool_is_refused():
    with pytest.raises(ValueError, match="with_pool"):
        build_transformer_model(model="gau_alpha", with_pool=True, **CONFIG)


def test_keras_file_round_trip_in_safe_mode(builders, tmp_path):
    model = builders["unilm"].model
    model.save(str(tmp_path / "gau.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "gau.keras"))
    tokens, segments = inputs(6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded([tokens, segments])),
                                  keras.ops.convert_to_numpy(model([tokens, segments])))
