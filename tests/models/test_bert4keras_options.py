"""Every bert4keras 0.11.5 ``build_transformer_model`` keyword either works or is refused by
name (the list is read from bert4keras' own ``models.py`` with ``ast``, so a keyword this
file does not know fails the coverage test), and the ones that work do what bert4keras does:
``keep_tokens``/``compound_tokens`` rows (NumPy from the checkpoint), ``with_pool`` with an
activation, ``segment_vocab_size``, ``attention_dropout_rate``, ``sequence_length``,
``hierarchical_position`` as an alpha, ``max_position``, T5's ``with_lm``, bert4keras' model
names.
"""

import ast
import importlib.util
import os

import keras
import numpy as np
import pytest

from keraformer.models import build_transformer_model
from keraformer.models.builders import FRONT_DOOR, MODELS, REFUSED, builder_class

CONFIG = dict(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=24)
T5_CONFIG = dict(vocab_size=30, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2)
# the bert4keras classes behind the models keraformer builds (and their bases)
CLASSES = ("Transformer", "BERT", "NEZHA", "RoFormer", "RoFormerV2", "T5_Base", "T5_Encoder",
           "T5_Decoder", "T5", "LM_Mask", "UniLM_Mask")
# bert4keras config keys its build_transformer_model derives from others
DERIVED = ("max_position", "dropout_rate", "attention_dropout_rate", "segment_vocab_size")


def bert4keras_keywords():
    """Parameters of ``build_transformer_model`` and of ``__init__``/``build`` of CLASSES."""
    path = os.path.join(os.path.dirname(importlib.util.find_spec("bert4keras").origin),
                        "models.py")
    tree = ast.parse(open(path, encoding="utf-8").read())
    names = set(DERIVED)
    for node in tree.body:
        functions = []
        if isinstance(node, ast.FunctionDef) and node.name == "build_transformer_model":
            functions = [node]
        elif isinstance(node, ast.ClassDef) and node.name in CLASSES:
            functions = [f for f in node.body if isinstance(f, ast.FunctionDef)
                         and f.name in ("__init__", "build")]
        for function in functions:
            names.update(a.arg for a in function.args.args + function.args.kwonlyargs)
    return sorted(names - {"self"})


KEYWORDS = bert4keras_keywords()


def test_the_keyword_list_is_bert4keras():
    assert len(KEYWORDS) > 30
    assert {"with_pool", "keep_tokens", "compound_tokens", "residual_attention_scores",
            "ignore_invalid_weights", "layers", "prefix", "segment_vocab_size",
            "with_lm"} <= set(KEYWORDS)


@pytest.mark.parametrize("keyword", KEYWORDS)
def test_every_keyword_is_taken_or_refused_by_name(keyword):
    taken = set(FRONT_DOOR)
    for model in MODELS:
        cls = builder_class(model)
        taken |= cls.option_names() | set(cls.CONFIG_KEYS)
    assert keyword in taken or keyword in REFUSED, keyword
    if keyword in REFUSED:
        with pytest.raises(ValueError, match=rf"`{keyword}` \(a bert4keras option\) is not "
                                             rf"supported: \w+"):
            build_transformer_model(**CONFIG, **{keyword: 1})


# -- the keywords that work, against NumPy --------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random BERT (MLM head) saved as a Google checkpoint, and its arrays."""
    path = str(tmp_path_factory.mktemp("b4k") / "bert_model.ckpt")
    builder = build_transformer_model(**CONFIG, with_pool=True, with_mlm=True,
                                      return_keras_model=False)
    rng = np.random.default_rng(0)
    builder.model.set_weights([rng.normal(0, 0.5, w.shape) for w in builder.model.get_weights()])
    builder.save_weights_as_checkpoint(path)
    return path, builder.checkpoint_arrays()


def test_keep_and_compound_tokens_rows(checkpoint):
    path, arrays = checkpoint
    keep = [0, 7, 3, 12, 29]
    compound = [[1, 2], ([3, 4], [1.0, 3.0])]  # ids index the kept rows
    builder = build_transformer_model(checkpoint_path=path, keep_tokens=keep,
                                      compound_tokens=compound, with_mlm=True,
                                      return_keras_model=False, **CONFIG)
    table = arrays["bert/embeddings/word_embeddings"][keep]
    expected = np.concatenate([table, [(table[1] + table[2]) / 2,
                                       (table[3] + 3 * table[4]) / 4]])
    np.testing.assert_allclose(builder.token_embedding.embeddings.numpy(), expected,
                               rtol=1e-6)
    bias = arrays["cls/predictions/output_bias"][keep]
    np.testing.assert_allclose(builder.mlm_bias.bias.numpy(),
                               np.concatenate([bias, [(bias[1] + bias[2]) / 2,
                                                      (bias[3] + 3 * bias[4]) / 4]]),
                               rtol=1e-6)


def test_keep_tokens_equals_the_full_model_on_the_kept_ids(checkpoint):
    path, _ = checkpoint
    keep = np.array([0, 7, 3, 12, 29, 5])
    full = build_transformer_model(checkpoint_path=path, with_mlm="linear", **CONFIG)
    kept = build_transformer_model(checkpoint_path=path, with_mlm="linear", keep_tokens=keep,
                                   **CONFIG)
    new_ids = np.array([[1, 2, 3, 4, 5, 0]])
    segments = np.zeros_like(new_ids)
    np.testing.assert_allclose(np.asarray(kept([new_ids, segments])),
                               np.asarray(full([keep[new_ids], segments]))[..., keep],
                               rtol=1e-5, atol=1e-5)


def test_with_pool_takes_an_activation(checkpoint):
    path, arrays = checkpoint
    model = build_transformer_model(checkpoint_path=path, with_pool="linear", **CONFIG)
    hidden = build_transformer_model(checkpoint_path=path, **CONFIG)
    ids = np.array([[5, 6, 7]])
    first = np.asarray(hidden([ids, np.zeros_like(ids)]))[:, 0]
    expected = first @ arrays["bert/pooler/dense/kernel"] + arrays["bert/pooler/dense/bias"]
    np.testing.assert_allclose(np.asarray(model([ids, np.zeros_like(ids)])), expected,
                               rtol=1e-5, atol=1e-5)


def test_segment_vocab_size_zero_drops_the_segment_embedding():
    builder = build_transformer_model(**CONFIG, segment_vocab_size=0,
                                      return_keras_model=False)
    assert builder.segment_embedding is None
    assert "bert/embeddings/token_type_embeddings" not in builder.variable_mapping()
    ids = np.array([[5, 6, 7]])
    np.testing.assert_array_equal(np.asarray(builder.model([ids, np.zeros_like(ids)])),
                                  np.asarray(builder.model([ids, np.ones_like(ids)])))


def test_dropout_rates_sequence_length_alpha_and_max_position():
    builder = build_transformer_model(**CONFIG, dropout_rate=0.2, attention_dropout_rate=0.05,
                                      sequence_length=6, hierarchical_position=0.3,
                                      max_position=4, return_keras_model=False)
    assert builder.dropout_rate == 0.2 and builder.attention_dropout_rate == 0.05
    assert all(block.attention_dropout_rate == 0.05 for block in builder.blocks)
    assert tuple(builder.model.inputs[0].shape) == (None, 6)
    assert builder.position_embedding.embeddings.shape == (4, 16)
    assert builder.position_embedding.hierarchical and builder.position_embedding.alpha == 0.3


def test_attention_head_size_must_be_the_head_size():
    build_transformer_model(**CONFIG, attention_head_size=8)
    with pytest.raises(ValueError, match="attention_head_size"):
        build_transformer_model(**CONFIG, attention_head_size=4)


@pytest.mark.parametrize("name, cls", [("t5.1.0", "T5"), ("mt5.1.1", "MT5"),
                                       ("t5.1.1", "T5v11")])
def test_bert4keras_model_names(name, cls):
    builder = build_transformer_model(model=name, **T5_CONFIG, return_keras_model=False)
    assert type(builder).__name__ == cls


@pytest.mark.parametrize("name, match", [("t5.1.1_encoder", "builder.encoder"),
                                         ("mt5.1.1_decoder", "builder.decoder"),
                                         ("albert", "no ALBERT builder"),
                                         ("gpt2_ml", "no GPT2-ML builder")])
def test_bert4keras_models_keraformer_lacks(name, match):
    with pytest.raises(ValueError, match=match):
        build_transformer_model(model=name, **CONFIG)


def test_t5_with_lm():
    builder = build_transformer_model(model="t5.1.1", **T5_CONFIG, return_keras_model=False)
    enc, dec = np.array([[3, 4, 5, 0]]), np.array([[0, 6, 7]])
    probs = np.asarray(builder.model([enc, dec]))
    linear = build_transformer_model(model="t5.1.1", **T5_CONFIG, with_lm="linear",
                                     return_keras_model=False)
    hidden = build_transformer_model(model="t5.1.1", **T5_CONFIG, with_lm=False,
                                     return_keras_model=False)
    weights = builder.checkpoint_arrays()
    for other in (linear, hidden):
        for name, variable in other.variable_mapping().items():
            variable.assign(other.to_keras(name, weights[name]))
    assert "decoder/logits/kernel" not in hidden.variable_mapping()
    logits = np.asarray(linear.model([enc, dec]))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.softmax(logits)), probs,
                               rtol=1e-5, atol=1e-6)
    states = np.asarray(hidden.model([enc, dec]))
    np.testing.assert_allclose(states @ builder.output_dense.kernel.numpy(), logits,
                               rtol=1e-4, atol=1e-5)
