"""RoFormerV2 against an independent NumPy forward pass, Google-format checkpoints, masks."""

import numpy as np
import pytest

from keraformer import checkpoints
from keraformer.models import build_transformer_model
from tests.references import (NumpyReferenceChecks, application_allowed, numpy_rms_norm,
                              numpy_rope, numpy_softmax_attention)

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


class TestRoFormerV2(NumpyReferenceChecks):
    MODEL, CONFIG, LENGTH = "roformer_v2", CONFIG, 9
    ROUND_TRIP = LONG = "lm"
    random_checkpoint = staticmethod(random_checkpoint)
    reference = staticmethod(numpy_roformer_v2)

    def test_has_no_bias_gamma_or_beta(self, loaded):
        names = [v.path for v in loaded[1]["encoder"].model.weights]
        assert not [n for n in names if n.endswith(("bias", "beta", "gamma"))]


def test_checkpoint_missing_a_variable_is_named(tmp_path):
    arrays = random_checkpoint()
    arrays = dict(arrays)
    del arrays["bert/encoder/layer_1/output/dense/kernel"]
    checkpoints.write_tf_checkpoint(arrays, str(tmp_path / "model.ckpt"))
    with pytest.raises(ValueError, match="layer_1/output/dense/kernel"):
        build_transformer_model(checkpoint_path=str(tmp_path / "model.ckpt"),
                                model="roformer_v2", **CONFIG)
