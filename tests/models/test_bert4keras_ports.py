"""A bert4keras script ported to keraformer trains and decodes as it did: the loss it reports,
bert4keras' ``Loss`` layer, conditional LayerNorm and bert4keras' beam search.

Reference: bert4keras 0.11.5 itself, run once in a subprocess (``run_bert4keras``) on a tiny
random UniLM BERT saved as a Google checkpoint, with its own example code: the title
generator's ``CrossEntropy(Loss)`` (``test_on_batch``), ``AutoRegressiveDecoder.beam_search``
(on the UniLM model and on a table of next-token distributions), and
``LayerNormalization(conditional=True)`` with weights set here. Losses and norm outputs
agree to 1e-5 (float32); decoded ids exactly.
"""

import json

import keras
import numpy as np
import pytest
from keras import ops

from keraformer import generation
from keraformer.data import DataGenerator, as_batch
from keraformer.losses import LossLayer
from keraformer.models import build_transformer_model
from keraformer.normalization import LayerNormalization
from tests.references import run_bert4keras

CONFIG = {"vocab_size": 24, "hidden_size": 16, "num_hidden_layers": 2,
          "num_attention_heads": 2, "intermediate_size": 24, "hidden_act": "gelu",
          "max_position_embeddings": 64, "type_vocab_size": 2, "hidden_dropout_prob": 0.0,
          "attention_probs_dropout_prob": 0.0}
END = 3  # the UniLM model's [SEP]
# source [CLS] ... [SEP] (segment 0), target ... [SEP] (segment 1), right padding
TOKENS = np.array([[2, 7, 9, 11, 3, 5, 6, 8, 3, 0, 0, 0],
                   [2, 12, 13, 3, 14, 15, 3, 0, 0, 0, 0, 0],
                   [2, 5, 5, 6, 7, 3, 9, 10, 11, 12, 13, 3]], "int32")
SEGMENTS = np.array([[0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
                     [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0],
                     [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]], "int32")
PROMPTS = [[2, 7, 9, 11, 3], [2, 12, 3], [2, 5, 5, 6, 7, 3]]
BEAM, MAX_LENGTH = 3, 8
# a table of next-token log-probabilities: table[case, n, last] after n generated tokens
TOY_CASES, TOY_STEPS, TOY_VOCAB, TOY_END = 12, 7, 6, 1
TOY_PAD = 99  # outside the table's tokens, which include 0


def toy_table():
    rng = np.random.default_rng(5)
    logits = rng.normal(0.0, 1.5, (TOY_CASES, TOY_STEPS, TOY_VOCAB, TOY_VOCAB))
    logits[:, :, :, TOY_END] += rng.normal(0.0, 1.5, (TOY_CASES, TOY_STEPS, 1))
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


CLN_X = np.random.default_rng(6).normal(size=(2, 4, 8))
CLN_CONDITIONS = {"hidden": np.random.default_rng(7).normal(size=(2, 3)),
                  "plain": np.random.default_rng(8).normal(size=(2, 3))}


def cln_weights(name):
    """gamma, beta, [hidden kernel], gamma and beta kernels, random (all non-zero)."""
    rng = np.random.default_rng(9 if name == "hidden" else 10)
    units = 5 if name == "hidden" else 3
    weights = {"gamma": rng.normal(1, 0.3, 8), "beta": rng.normal(0, 0.3, 8),
               "gamma_dense": rng.normal(0, 0.5, (units, 8)),
               "beta_dense": rng.normal(0, 0.5, (units, 8))}
    if name == "hidden":
        weights["hidden_dense"] = rng.normal(0, 0.5, (3, units))
    return weights


BERT4KERAS = """
import json, sys
import numpy as np
from bert4keras.backend import keras, K
from bert4keras.layers import Loss, LayerNormalization
from bert4keras.models import build_transformer_model
from bert4keras.snippets import AutoRegressiveDecoder

inputs = json.load(open(sys.argv[1]))
out = {}


class CrossEntropy(Loss):  # bert4keras' examples/task_seq2seq_autotitle.py
    def compute_loss(self, inputs, mask=None):
        y_true, y_mask, y_pred = inputs
        y_true = y_true[:, 1:]
        y_mask = y_mask[:, 1:]
        y_pred = y_pred[:, :-1]
        loss = K.sparse_categorical_crossentropy(y_true, y_pred)
        return K.sum(loss * y_mask) / K.sum(y_mask)


model = build_transformer_model(inputs["config"], inputs["checkpoint"], application="unilm")
trained = keras.models.Model(model.inputs, CrossEntropy(2)(model.inputs + model.outputs))
trained.compile(optimizer=keras.optimizers.Adam(1e-5))
out["loss"] = float(trained.test_on_batch([np.array(inputs["tokens"]),
                                           np.array(inputs["segments"])], None))


class AutoTitle(AutoRegressiveDecoder):
    @AutoRegressiveDecoder.wraps(default_rtype="probas")
    def predict(self, inputs, output_ids, states):
        token_ids, segment_ids = inputs
        token_ids = np.concatenate([token_ids, output_ids], 1)
        segment_ids = np.concatenate([segment_ids, np.ones_like(output_ids)], 1)
        return self.last_token(model).predict([token_ids, segment_ids], verbose=0)


title = AutoTitle(start_id=None, end_id=inputs["end"], maxlen=inputs["max_length"])
out["titles"] = [title.beam_search([p, [0] * len(p)], topk=inputs["beam"]).tolist()
                 for p in inputs["prompts"]]

table = np.array(inputs["table"])


class Toy(AutoRegressiveDecoder):
    @AutoRegressiveDecoder.wraps(default_rtype="logits")
    def predict(self, inputs, output_ids, states):
        case = inputs[0][:, 0]
        last = output_ids[:, -1] if output_ids.shape[1] else np.zeros(len(case), int)
        return table[case, output_ids.shape[1], last]


toy = Toy(start_id=None, end_id=inputs["toy_end"], maxlen=inputs["toy_steps"])
out["toy"] = [toy.beam_search([[case]], topk=inputs["beam"]).tolist()
              for case in range(len(table))]

cln = {}
for name, case in inputs["cln"].items():
    x = keras.layers.Input(np.array(inputs["cln_x"]).shape[1:])
    c = keras.layers.Input(np.array(case["condition"]).shape[1:])
    options = {"hidden_units": 5, "hidden_activation": "relu"} if name == "hidden" else {}
    layer = LayerNormalization(conditional=True, epsilon=1e-12, **options)
    norm = keras.models.Model([x, c], layer([x, c]))
    for attribute, value in case["weights"].items():
        variable = getattr(layer, attribute)
        K.set_value(variable if attribute in ("gamma", "beta") else variable.kernel,
                    np.array(value))
    cln[name] = norm.predict([np.array(inputs["cln_x"]), np.array(case["condition"])],
                             verbose=0)
json.dump(out, open(sys.argv[2], "w"))
np.savez(sys.argv[3], **cln)
"""


@pytest.fixture(scope="module")
def unilm(tmp_path_factory):
    """The config and Google checkpoint of a random UniLM BERT (weights ~ N(0, 0.5²))."""
    folder = tmp_path_factory.mktemp("ports")
    config = folder / "bert_config.json"
    config.write_text(json.dumps(CONFIG))
    source = build_transformer_model(str(config), application="unilm", with_mlm=True,
                                     return_keras_model=False)
    rng = np.random.default_rng(0)
    source.model.set_weights([rng.normal(0, 0.5, w.shape) for w in source.model.get_weights()])
    return str(config), source.save_weights_as_checkpoint(str(folder / "model.ckpt")), folder


@pytest.fixture(scope="module")
def bert4keras(unilm):
    config, checkpoint, folder = unilm
    cln = {name: {"condition": condition.tolist(),
                  "weights": {k: v.tolist() for k, v in cln_weights(name).items()}}
           for name, condition in CLN_CONDITIONS.items()}
    return run_bert4keras(BERT4KERAS, {
        "config": config, "checkpoint": checkpoint, "tokens": TOKENS.tolist(),
        "segments": SEGMENTS.tolist(), "prompts": PROMPTS, "end": END, "beam": BEAM,
        "max_length": MAX_LENGTH, "table": toy_table().tolist(), "toy_end": TOY_END,
        "toy_steps": TOY_STEPS, "cln_x": CLN_X.tolist(), "cln": cln}, folder)


def keraformer_unilm(unilm):
    config, checkpoint, _ = unilm
    return build_transformer_model(config, checkpoint, application="unilm", with_mlm=True,
                                   return_keras_model=False)


def shifted_targets():
    """The guide's recipe: position i predicts token i + 1, weighted by its segment id."""
    targets = np.pad(TOKENS[:, 1:], ((0, 0), (0, 1)))
    weights = np.pad(SEGMENTS[:, 1:], ((0, 0), (0, 1))).astype("float32")
    return targets, weights


# -- the loss a port reports ------------------------------------------------------------------
def test_the_guides_loss_recipe_reports_bert4keras_loss(unilm, bert4keras):
    """Targets and weights in ``fit``/``evaluate`` with
    ``reduction="mean_with_sample_weight"`` report bert4keras' ``Σ loss·w / Σ w``; Keras'
    default reduction divides by every real position instead (a smaller number)."""
    model = keraformer_unilm(unilm).model
    targets, weights = shifted_targets()
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(
        reduction="mean_with_sample_weight"))
    reported = model.evaluate([TOKENS, SEGMENTS], targets, sample_weight=weights, verbose=0)
    np.testing.assert_allclose(reported, bert4keras[0]["loss"], rtol=1e-5)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy())
    default = model.evaluate([TOKENS, SEGMENTS], targets, sample_weight=weights, verbose=0)
    assert default < 0.8 * bert4keras[0]["loss"]


@keras.saving.register_keras_serializable(package="keraformer_tests")
class CrossEntropy(LossLayer):
    """bert4keras' example loss, ported: ``K`` becomes ``keras.ops``."""

    def compute_loss(self, inputs, mask=None):
        y_true, y_mask, y_pred = inputs
        y_true, y_pred = y_true[:, 1:], y_pred[:, :-1]
        y_mask = ops.cast(y_mask[:, 1:], y_pred.dtype)
        loss = ops.sparse_categorical_crossentropy(y_true, y_pred)
        return ops.sum(loss * y_mask) / ops.sum(y_mask)


class Batches(DataGenerator):
    def __iter__(self, random=False):
        for _ in self.sample(random):
            pass
        yield [TOKENS, SEGMENTS], None  # bert4keras' form: the loss needs no targets


def test_loss_layer_and_inputs_only_batches_equal_bert4keras(unilm, bert4keras):
    """``LossLayer`` subclassed as in bert4keras: ``evaluate`` on inputs alone and ``fit``
    on a ``DataGenerator`` yielding ``inputs, None`` report bert4keras' loss."""
    model = keraformer_unilm(unilm).model
    output = CrossEntropy(2)(model.inputs + model.outputs)
    trained = keras.Model(model.inputs, output)
    assert trained.output is output and len(trained.outputs) == 1
    trained.compile(optimizer=keras.optimizers.SGD(0.0))
    expected = bert4keras[0]["loss"]
    np.testing.assert_allclose(trained.evaluate([TOKENS, SEGMENTS], verbose=0), expected,
                               rtol=1e-5)
    batches = Batches([0], batch_size=1)
    history = trained.fit(batches.forfit(), steps_per_epoch=len(batches), verbose=0)
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)
    restored = keras.saving.load_model(save(trained, unilm[2] / "port.keras"))
    np.testing.assert_allclose(restored.evaluate([TOKENS, SEGMENTS], verbose=0), expected,
                               rtol=1e-5)


def save(model, path):
    model.save(str(path))
    return str(path)


def test_loss_layer_refusals():
    with pytest.raises(TypeError, match="output_axis"):
        LossLayer(output_axis="2")
    layer = LossLayer(1)
    with pytest.raises(NotImplementedError, match="compute_loss"):
        layer([np.zeros((1, 2)), np.zeros((1, 2))])
    with pytest.raises(ValueError, match="None"):
        as_batch(([np.zeros(2)], None, np.ones(2)))


# -- conditional LayerNorm ----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CLN_CONDITIONS))
def test_conditional_layer_norm_equals_bert4keras(name, bert4keras, tmp_path):
    """Same outputs as bert4keras' conditional norm with the same weights (a condition
    mapped by a hidden ReLU layer, and one used directly); a ``.keras`` round trip keeps
    them; the condition moves the output away from the plain norm's."""
    options = {"hidden_units": 5, "hidden_activation": "relu"} if name == "hidden" else {}
    layer = LayerNormalization(conditional=True, **options)
    x = keras.Input(CLN_X.shape[1:])
    condition = keras.Input(CLN_CONDITIONS[name].shape[1:])
    model = keras.Model([x, condition], layer([x, condition]))
    for attribute, value in cln_weights(name).items():
        variable = getattr(layer, attribute)
        (variable if attribute in ("gamma", "beta") else variable.kernel).assign(value)
    got = ops.convert_to_numpy(model([CLN_X, CLN_CONDITIONS[name]]))
    np.testing.assert_allclose(got, bert4keras[1][name], rtol=1e-5, atol=1e-5)
    restored = keras.saving.load_model(save(model, tmp_path / "norm.keras"))
    np.testing.assert_allclose(ops.convert_to_numpy(restored([CLN_X, CLN_CONDITIONS[name]])),
                               got, rtol=1e-6, atol=1e-6)
    assert np.abs(got - ops.convert_to_numpy(LayerNormalization()(CLN_X))).max() > 0.1


def test_conditional_layer_norm_refusals():
    with pytest.raises(ValueError, match="hidden_units"):
        LayerNormalization(hidden_units=4)  # needs conditional=True
    with pytest.raises(ValueError, match="hidden_units"):
        LayerNormalization(conditional=True, hidden_units=0)
    with pytest.raises(TypeError, match="conditional"):
        LayerNormalization(conditional="yes")
    with pytest.raises(ValueError, match=r"\[x, condition\]"):
        LayerNormalization(conditional=True)(np.zeros((2, 3, 4)))


# -- bert4keras' beam search ---------------------------------------------------------------------
def strip(row, end_id, pad_id=0):
    """Ids up to and including the first ``end_id``."""
    row = list(row)
    return row[:row.index(end_id) + 1] if end_id in row else [t for t in row if t != pad_id]


def toy_generate(beam_style):
    table = ops.convert_to_tensor(toy_table().astype("float32"))
    rows = np.repeat(np.arange(TOY_CASES), BEAM)

    def step(token_ids, index, cache, parents):
        """table[case of the row, index + 1, the row's token]: (rows, vocab)."""
        at_step = ops.take(ops.take(table, rows, axis=0), index + 1, axis=1)
        picked = ops.take_along_axis(at_step, ops.cast(token_ids, "int32")[..., None], axis=1)
        return picked[:, 0], cache

    first = table[:, 0, 0]
    return generation.generate(step, {"unused": ops.zeros((1,))}, first, end_id=TOY_END,
                               max_length=TOY_STEPS, method="beam", beam_size=BEAM,
                               beam_style=beam_style, pad_id=TOY_PAD)


def test_bert4keras_beam_style_equals_bert4keras_on_a_table(bert4keras):
    """Twelve tables of next-token distributions: every output equals bert4keras' own
    ``beam_search``; the default (Hugging Face's) search differs on some of them."""
    ours = [strip(row, TOY_END, TOY_PAD) for row in toy_generate("bert4keras").tolist()]
    assert ours == bert4keras[0]["toy"]
    default = [strip(row, TOY_END, TOY_PAD) for row in toy_generate("huggingface").tolist()]
    assert default != bert4keras[0]["toy"]


def test_bert4keras_beam_style_gives_bert4keras_titles(unilm, bert4keras):
    builder = keraformer_unilm(unilm)
    for prompt, expected in zip(PROMPTS, bert4keras[0]["titles"]):
        ids = np.array([prompt], "int32")
        got = builder.generate(ids, np.zeros_like(ids), max_length=MAX_LENGTH, method="beam",
                               beam_size=BEAM, beam_style="bert4keras", end_id=END)
        assert strip(np.asarray(got)[0].tolist(), END) == expected


def test_bert4keras_beam_style_refuses_the_other_searchs_options():
    step = lambda t, i, c, p: (ops.zeros((len(t), 4)), c)  # noqa: E731
    for name, value in (("length_penalty", 2.0), ("early_stopping", False),
                        ("min_length", 2)):
        with pytest.raises(ValueError, match=name):
            generation.generate(step, {}, np.zeros((1, 4), "float32"), end_id=1,
                                max_length=4, method="beam", beam_style="bert4keras",
                                **{name: value})
    with pytest.raises(ValueError, match="beam_style"):
        generation.generate(step, {}, np.zeros((1, 4), "float32"), method="beam",
                            beam_style="b4k")


# -- masks on inner layers ---------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["bert", "roformer_v2"])
def test_a_crf_on_an_inner_block_equals_the_crf_on_the_output(model_name):
    """bert4keras' NER scripts put the CRF on ``model.get_layer(...).output``: every block's
    output carries the padding mask, so the CRF there scores the real tokens only and gives
    the loss and scores of the same CRF on ``model.output`` (the last block's output); before,
    it scored padding too (loss off by up to 4.49 per example)."""
    from keraformer.models import ConditionalRandomField
    config = {k: CONFIG[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                     "num_attention_heads", "intermediate_size")}
    model = build_transformer_model(model=model_name, dropout_rate=0.0, **config)
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(0, 0.5, w.shape) for w in model.get_weights()])
    last = model.get_layer(f"Transformer-{config['num_hidden_layers'] - 1}").output
    dense, crf = keras.layers.Dense(4), ConditionalRandomField()
    inner = keras.Model(model.inputs, crf(dense(last)))
    outer = keras.Model(model.inputs, crf(dense(model.output)))
    labels = rng.integers(0, 4, TOKENS.shape)
    scores_inner = ops.convert_to_numpy(inner([TOKENS, SEGMENTS]))
    scores_outer = ops.convert_to_numpy(outer([TOKENS, SEGMENTS]))
    np.testing.assert_array_equal(np.isinf(scores_inner), np.isinf(scores_outer))
    assert np.isinf(scores_inner[TOKENS == 0]).all()
    assert np.isfinite(scores_inner[TOKENS != 0]).all()
    losses = [ops.convert_to_numpy(crf.sparse_loss(labels, s)) for s in (scores_inner,
                                                                           scores_outer)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)
    first = keras.Model(model.inputs, model.get_layer("Transformer-0").output)
    mask = getattr(first([TOKENS, SEGMENTS]), "_keras_mask", None)
    np.testing.assert_array_equal(ops.convert_to_numpy(mask), TOKENS != 0)
