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
import json
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
    """A random BERT (pooler, NSP and MLM heads) saved as a Google checkpoint, and its
    arrays."""
    path = str(tmp_path_factory.mktemp("b4k") / "bert_model.ckpt")
    builder = build_transformer_model(**CONFIG, with_nsp=True, with_mlm=True,
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


def test_segment_vocab_size_zero_takes_token_ids_alone():
    """As bert4keras: no segment embedding and a single input; a config's
    ``type_vocab_size=0`` means the same."""
    for options in ({"segment_vocab_size": 0}, {"type_vocab_size": 0}):
        builder = build_transformer_model(**CONFIG, **options, return_keras_model=False)
        assert builder.segment_embedding is None
        assert "bert/embeddings/token_type_embeddings" not in builder.variable_mapping()
        assert [i.name for i in builder.model.inputs] == ["Input-Token"]
        ids = np.array([[5, 6, 7, 0]])
        assert np.asarray(builder.model(ids)).shape == (1, 4, CONFIG["hidden_size"])
        with pytest.raises(ValueError):
            builder.model([ids, np.zeros_like(ids)])  # a second input is not taken


def test_segment_vocab_size_zero_unilm_keeps_the_segment_input():
    """UniLM reads source and target from the segment ids (its mask), so it still takes
    ``[token_ids, segment_ids]``; only the embedding goes (bert4keras fails to build it).
    With the same weights, all-source segments give the encoder's output and segments
    ``[0, 1, 1, 1]`` (every token a target) the causal ``lm``'s."""
    models = {application: build_transformer_model(**CONFIG, segment_vocab_size=0,
                                                   application=application, with_mlm=False)
              for application in ("unilm", "encoder", "lm")}
    assert len(models["unilm"].inputs) == 2
    weights = models["unilm"].get_weights()
    for application in ("encoder", "lm"):
        models[application].set_weights(weights)
    ids = np.array([[5, 6, 7, 8]])
    unilm = lambda segments: np.asarray(models["unilm"]([ids, np.array([segments])]))  # noqa
    np.testing.assert_allclose(unilm([0, 0, 0, 0]), np.asarray(models["encoder"](ids)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(unilm([0, 1, 1, 1]), np.asarray(models["lm"](ids)),
                               rtol=1e-5, atol=1e-6)
    assert np.abs(unilm([0, 0, 0, 0]) - unilm([0, 1, 1, 1])).max() > 1e-3


def test_segment_vocab_size_zero_refuses_a_segment_table_unless_not_strict(checkpoint):
    """A checkpoint with ``token_type_embeddings`` loaded without a segment embedding is an
    unused tensor: an error naming it, a warning with ``strict=False`` (then every other
    weight is the checkpoint's)."""
    path, arrays = checkpoint
    name = "bert/embeddings/token_type_embeddings"
    with pytest.raises(ValueError, match=name):
        build_transformer_model(checkpoint_path=path, segment_vocab_size=0, **CONFIG)
    with pytest.warns(UserWarning, match=name):
        builder = build_transformer_model(checkpoint_path=path, segment_vocab_size=0,
                                          strict=False, return_keras_model=False, **CONFIG)
    for key, value in builder.checkpoint_arrays().items():
        np.testing.assert_array_equal(value, arrays[key])


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


# -- with_pool activations and segment_vocab_size=0 against bert4keras 0.11.5 itself ---------
BERT4KERAS_HEADS = """
import json, sys
import numpy as np
from bert4keras.models import build_transformer_model
inputs = json.load(open(sys.argv[1]))
ids = np.array(inputs["ids"])
segments = np.array(inputs["segments"])
out = {}
for name, options in (("pool_linear", {"with_pool": "linear"}),
                      ("pool_relu", {"with_pool": "relu"}),
                      ("nsp_linear", {"with_pool": "linear", "with_nsp": True})):
    model = build_transformer_model(inputs["config"], inputs["checkpoint"], **options)
    out[name] = model.predict([ids, segments], verbose=0)
model = build_transformer_model(inputs["config"], inputs["no_segments"], segment_vocab_size=0,
                                with_mlm="linear")
out["no_segments_inputs"] = np.array(len(model.inputs))
out["no_segments"] = model.predict(ids, verbose=0)
json.dump({}, open(sys.argv[2], "w"))
np.savez(sys.argv[3], **out)
"""


def test_pool_activation_and_segment_vocab_size_zero_equal_bert4keras(checkpoint, tmp_path):
    """bert4keras 0.11.5 (subprocess) on the same Google checkpoints: ``with_pool="linear"``
    / ``"relu"`` (alone and under the NSP head) and ``segment_vocab_size=0`` (one input,
    checkpoint without a segment table, MLM logits) give keraformer's outputs (1e-5)."""
    from tests.references import run_bert4keras
    path, _ = checkpoint
    config = {**CONFIG, "hidden_act": "gelu", "max_position_embeddings": 512,
              "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    config_path = tmp_path / "bert_config.json"
    config_path.write_text(json.dumps(config))
    source = build_transformer_model(str(config_path), segment_vocab_size=0, with_mlm=True,
                                     return_keras_model=False)
    rng = np.random.default_rng(4)
    source.model.set_weights([rng.normal(0, 0.5, w.shape) for w in source.model.get_weights()])
    no_segments = source.save_weights_as_checkpoint(str(tmp_path / "no_segments.ckpt"))
    ids = np.array([[2, 5, 6, 7, 3], [2, 9, 3, 0, 0]])
    segments = np.array([[0, 0, 0, 1, 1], [0, 1, 1, 0, 0]])
    _, theirs = run_bert4keras(BERT4KERAS_HEADS, {
        "config": str(config_path), "checkpoint": path, "no_segments": no_segments,
        "ids": ids.tolist(), "segments": segments.tolist()}, tmp_path)
    for name, options in (("pool_linear", {"with_pool": "linear"}),
                          ("pool_relu", {"with_pool": "relu"}),
                          ("nsp_linear", {"with_pool": "linear", "with_nsp": True})):
        ours = build_transformer_model(str(config_path), path, **options)
        np.testing.assert_allclose(np.asarray(ours([ids, segments])), theirs[name],
                                   rtol=1e-5, atol=1e-5, err_msg=name)
    assert (theirs["pool_linear"] < 0).any() and np.abs(theirs["pool_linear"]).max() > 1
    ours = build_transformer_model(str(config_path), no_segments, segment_vocab_size=0,
                                   with_mlm="linear")
    assert len(ours.inputs) == int(theirs["no_segments_inputs"]) == 1
    np.testing.assert_allclose(np.asarray(ours(ids)), theirs["no_segments"], rtol=1e-5,
                               atol=1e-5)
