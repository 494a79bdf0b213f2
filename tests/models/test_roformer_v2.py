"""RoFormerV2 against an independent NumPy forward pass, Google-format checkpoints, masks."""

import numpy as np
import pytest

from keraformer import checkpoints
from keraformer.models import build_transformer_model
from tests.references import (application_allowed, assert_builder_matches,
                              assert_checkpoint_round_trip, builders_per_application,
                              numpy_rms_norm, numpy_rope,
                              numpy_softmax_attention, segment_batch)

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
def numpy_roformer_v2(w, tokens, segments, application="encoder"):
    x = w["bert/embeddings/word_embeddings"][tokens]
    x = numpy_rms_norm(x + w["bert/embeddings/token_type_embeddings"][segments])
    mask = application_allowed(tokens, segments, application)[:, None]
    b, n = tokens.shape
    for i in range(2):
        p = f"bert/encoder/layer_{i}/"
        heads = lambda name: (x @ w[p + name]).reshape(b, n, HEADS, HEAD)
        q = numpy_rope(heads("attention/self/query/kernel"))
        k = numpy_rope(heads("attention/self/key/kernel"))
        v = heads("attention/self/value/kernel")
        o = numpy_softmax_attention(q, k, v, allowed=mask).reshape(b, n, -1)
        x = numpy_rms_norm(x + o @ w[p + "attention/output/dense/kernel"])
        f = np.maximum(x @ w[p + "intermediate/dense/kernel"], 0) @ w[p + "output/dense/kernel"]
        x = numpy_rms_norm(x + f)
    return x, x @ w["bert/embeddings/word_embeddings"].T


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """The random checkpoint's arrays and ``{application: builder}`` loaded from it."""
    return builders_per_application(tmp_path_factory.mktemp("m"), "roformer_v2",
                                    random_checkpoint(), CONFIG)


@pytest.mark.parametrize("application", ["encoder", "lm", "unilm"])
def test_matches_numpy_reference(loaded, application):
    arrays, builders = loaded
    tokens, segments = segment_batch(1, 53)
    _, expected = numpy_roformer_v2(arrays, tokens, segments, application)
    assert_builder_matches(builders[application].model, expected, tokens, segments, 1e-4, 1e-4)


def test_checkpoint_names_and_exact_round_trip(loaded, tmp_path):
    assert_checkpoint_round_trip(loaded[1]["lm"], loaded[0], tmp_path)


def test_has_no_bias_gamma_or_beta(loaded):
    names = [v.path for v in loaded[1]["encoder"].model.weights]
    assert not [n for n in names if n.endswith(("bias", "beta", "gamma"))]


def test_long_input_matches_reference(loaded):
    """No position table: 600 tokens (beyond BERT's 512) still follow the formula."""
    arrays, builders = loaded
    rng = np.random.default_rng(5)
    tokens = rng.integers(1, 53, (1, 600)).astype("int32")
    segments = np.zeros_like(tokens)
    _, expected = numpy_roformer_v2(arrays, tokens, segments, "lm")
    assert_builder_matches(builders["lm"].model, expected, tokens, segments, 1e-3, 1e-4)


def test_checkpoint_missing_a_variable_is_named(tmp_path):
    arrays = random_checkpoint()
    arrays = dict(arrays)
    del arrays["bert/encoder/layer_1/output/dense/kernel"]
    checkpoints.write_tf_checkpoint(arrays, str(tmp_path / "model.ckpt"))
    with pytest.raises(ValueError, match="layer_1/output/dense/kernel"):
        build_transformer_model(checkpoint_path=str(tmp_path / "model.ckpt"),
                                model="roformer_v2", **CONFIG)
