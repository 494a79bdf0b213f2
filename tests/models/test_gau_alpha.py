"""GAU-α against an independent NumPy forward pass, Google-format checkpoints, masks."""

import numpy as np
import pytest

from keraformer.models import build_transformer_model, load_pretrained
from tests.references import (NumpyReferenceChecks, application_allowed, google_directory,
                              numpy_rms_norm, numpy_rope, segment_batch)

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
def numpy_gau_alpha(w, tokens, segments, application="encoder"):
    x = w["bert/embeddings/word_embeddings"][tokens]
    x = numpy_rms_norm(x + w["bert/embeddings/token_type_embeddings"][segments])
    mask = application_allowed(tokens, segments, application)
    n = np.maximum(mask.sum(-1, keepdims=True), 16)  # keys each query sees, floored at 16
    for i in range(2):
        p = f"GAU_alpha/encoder/layer_{i}/gau/"
        h = x @ w[p + "i_dense/kernel"]
        h = h / (1 + np.exp(-h))  # swish
        u, v, z = h[..., :UNITS], h[..., UNITS:2 * UNITS], h[..., 2 * UNITS:]
        q = numpy_rope(z * w[p + "q_scaleoffset/gamma"])
        k = numpy_rope(z * w[p + "k_scaleoffset/gamma"])
        scores = np.einsum("bqd,bkd->bqk", q, k) / np.sqrt(KEY) * np.log(n) / np.log(512)
        scores = np.where(mask, scores, -1e9)
        a = np.exp(scores - scores.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = numpy_rms_norm(x + (u * (a @ v)) @ w[p + "o_dense/kernel"])
    return x, x @ w["bert/embeddings/word_embeddings"].T


class TestGAUAlpha(NumpyReferenceChecks):
    MODEL, CONFIG = "gau_alpha", CONFIG
    LENGTH = 20  # longer than 16: the floor and the log both act
    ROUND_TRIP, LONG = "unilm", "encoder"
    random_checkpoint = staticmethod(random_checkpoint)
    reference = staticmethod(numpy_gau_alpha)

    def test_num_attention_heads_is_one_or_refused(self, loaded, tmp_path):
        """GAU-α's unit has one head (the released config says 1, the Hugging Face and Paddle
        ports leave the key out): another value is refused by name, not ignored, also from a
        checkpoint's config, and ``num_attention_heads=1`` loads that checkpoint; with an
        attention swap the value sets that attention's heads."""
        arrays, builders = loaded
        assert builders["encoder"].heads == 1  # the key is absent from CONFIG
        with pytest.raises(ValueError, match=r"`num_attention_heads` must be 1 .* received 2"):
            build_transformer_model(model="gau_alpha", **CONFIG, num_attention_heads=2)
        google_directory(tmp_path, arrays, {**CONFIG, "num_attention_heads": 12})
        with pytest.raises(ValueError, match=r"`num_attention_heads` must be 1 .* received 12"):
            load_pretrained(str(tmp_path), model="gau_alpha")
        again = load_pretrained(str(tmp_path), model="gau_alpha", num_attention_heads=1,
                                with_mlm="linear", return_keras_model=False)
        tokens, segments = segment_batch(2, 47)
        np.testing.assert_array_equal(np.asarray(again.model([tokens, segments])),
                                      np.asarray(builders["encoder"].model([tokens, segments])))
        swapped = build_transformer_model(model="gau_alpha", **CONFIG, num_attention_heads=4,
                                          attention="softmax", return_keras_model=False)
        assert swapped.blocks[0].attention.heads == 4
