"""Hostile ids and labels: an id outside the vocabulary (or a label outside the classes) never
gives a plausible result, eagerly or inside compiled graphs.

What each execution mode must do (see ``keraformer.checks.guard_ids``):
- eager (TF eager, a JAX call outside ``jit``): ``ValueError`` naming the ids;
- a TensorFlow graph without XLA (``jit_compile=False``): ``InvalidArgumentError`` naming them;
- XLA (TF ``jit_compile=True``, the Keras default) and JAX ``jit``: NaN where the bad id is,
  which reaches the outputs and the loss, while rows with valid ids stay finite and exact.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keraformer.embedding import Embedding
from keraformer.losses import (EMOLoss, LogitAdjustedLoss, emo_loss,
                               global_pointer_crossentropy, logit_adjusted_loss,
                               multilabel_categorical_crossentropy)
from keraformer.models import ConditionalRandomField, build_transformer_model
from tests.references import compiled, graph_error

BACKEND = keras.backend.backend()
VOCAB, TYPES = 20, 2
GOOD_TOKENS = np.array([[2, 5, 6, 3], [2, 7, 8, 3]], dtype="int32")
GOOD_SEGMENTS = np.array([[0, 0, 1, 1], [0, 0, 0, 1]], dtype="int32")

# (name of the bad ids, position in the first row, bad value)
BAD_IDS = [
    ("token_ids", 1, -1),
    ("token_ids", 2, -VOCAB),
    ("token_ids", 2, VOCAB),
    ("token_ids", 3, VOCAB + 1000),
    ("token_ids", 0, np.iinfo("int32").min),
    ("token_ids", 1, np.iinfo("int32").max),
    ("segment_ids", 2, TYPES),
    ("segment_ids", 1, -1),
]
BAD_IDS_IDS = [f"{name}={value}" for name, _, value in BAD_IDS]


def bad_inputs(name, position, value):
    tokens, segments = GOOD_TOKENS.copy(), GOOD_SEGMENTS.copy()
    (tokens if name == "token_ids" else segments)[0, position] = value
    return [tokens, segments]


def tiny_bert():
    return build_transformer_model(model="bert", vocab_size=VOCAB, type_vocab_size=TYPES,
                                   hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=16, with_mlm=True)


@pytest.fixture(scope="module")
def bert():
    """One tiny BERT, its weights and its eager output on valid ids, plus one compiled copy
    per mode (each Keras step function is traced once and reused by every case)."""
    model = tiny_bert()
    reference = ops.convert_to_numpy(model([GOOD_TOKENS, GOOD_SEGMENTS]))
    return model, model.get_weights(), reference


@pytest.fixture(scope="module")
def xla_bert(bert):
    model = tiny_bert()
    model.set_weights(bert[1])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy",
                  jit_compile=True)
    return model


@pytest.fixture(scope="module")
def graph_bert(bert):
    """TensorFlow: a graph without XLA. JAX: a fresh model per use (Keras' JAX trainer leaves
    a model unusable after an exception inside ``predict``/``fit``)."""
    if BACKEND != "tensorflow":
        return None
    model = tiny_bert()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", jit_compile=False)
    return model


def without_xla(graph_bert):
    """The model and the error expected when running it without XLA on this backend."""
    if BACKEND == "tensorflow":
        return graph_bert, graph_error(), "must be integers in"
    model = tiny_bert()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", jit_compile=False)
    return model, ValueError, "must lie in"  # JAX without jit runs on concrete arrays


@pytest.mark.parametrize("name, position, value", BAD_IDS, ids=BAD_IDS_IDS)
def test_eager_call_raises_naming_the_ids(bert, name, position, value):
    model = bert[0]
    with pytest.raises(ValueError, match=f"`{name}` must lie in"):
        model(bad_inputs(name, position, value))


@pytest.mark.parametrize("name, position, value", BAD_IDS, ids=BAD_IDS_IDS)
def test_compiled_predict_gives_nan_in_the_bad_row_only(bert, xla_bert, name, position,
                                                         value):
    out = xla_bert.predict(bad_inputs(name, position, value), verbose=0)
    assert np.isnan(out[0]).any(), "a bad id gave a finite, plausible output"
    # the valid row is untouched by the guard: the eager call's probabilities
    np.testing.assert_allclose(out[1], bert[2][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, position, value", BAD_IDS[:3] + BAD_IDS[6:],
                         ids=BAD_IDS_IDS[:3] + BAD_IDS_IDS[6:])
def test_predict_without_xla_raises_naming_the_ids(graph_bert, name, position, value):
    model, error, message = without_xla(graph_bert)
    with pytest.raises(error, match=f"`{name}` {message}"):
        model.predict(bad_inputs(name, position, value), verbose=0)


@pytest.mark.parametrize("name, position, value", [BAD_IDS[0], BAD_IDS[2], BAD_IDS[6]],
                         ids=[BAD_IDS_IDS[0], BAD_IDS_IDS[2], BAD_IDS_IDS[6]])
def test_compiled_fit_reports_a_nan_loss(bert, xla_bert, name, position, value):
    try:
        history = xla_bert.fit(bad_inputs(name, position, value), GOOD_TOKENS, verbose=0)
        assert np.isnan(history.history["loss"][0])
    finally:
        xla_bert.set_weights(bert[1])


def test_compiled_fit_with_valid_ids_has_a_finite_loss(bert, xla_bert):
    try:
        history = xla_bert.fit([GOOD_TOKENS, GOOD_SEGMENTS], GOOD_TOKENS, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    finally:
        xla_bert.set_weights(bert[1])


@pytest.mark.parametrize("name, position, value", [BAD_IDS[0], BAD_IDS[6]],
                         ids=[BAD_IDS_IDS[0], BAD_IDS_IDS[6]])
def test_fit_without_xla_raises_naming_the_ids(graph_bert, name, position, value):
    model, error, message = without_xla(graph_bert)
    with pytest.raises(error, match=f"`{name}` {message}"):
        model.fit(bad_inputs(name, position, value), GOOD_TOKENS, verbose=0)


# -- the Embedding layer alone, in each execution mode --------------------------------------

@pytest.fixture(scope="module")
def embedding():
    layer = Embedding(VOCAB, 4)
    layer.build((None, None))
    return layer, ops.convert_to_numpy(layer.embeddings)


IDS_CASES = [
    ([3, -1, 4], [1]),
    ([3, VOCAB, 4], [1]),
    ([-VOCAB - 1, 0, VOCAB - 1], [0]),
    ([0, 1, 99999], [2]),
    ([-5, VOCAB * 3, 2], [0, 1]),
]


@pytest.mark.parametrize("ids, bad", IDS_CASES, ids=[str(c[0]) for c in IDS_CASES])
def test_compiled_embedding_nan_exactly_at_bad_ids_and_rows_elsewhere(embedding, ids, bad):
    layer, table = embedding
    out = ops.convert_to_numpy(compiled(lambda x: layer(x))(np.array([ids], "int32")))[0]
    for i, token in enumerate(ids):
        if i in bad:
            assert np.isnan(out[i]).all(), f"id {token} gave {out[i]}"
        else:
            np.testing.assert_array_equal(out[i], table[token])


@pytest.mark.parametrize("ids", [c[0] for c in IDS_CASES], ids=[str(c[0]) for c in IDS_CASES])
def test_eager_embedding_raises_naming_token_ids(embedding, ids):
    with pytest.raises(ValueError, match=r"`token_ids` must lie in \[0, 20\)"):
        embedding[0](np.array([ids], "int32"))


def test_tf_graph_embedding_raises_naming_the_ids_name():
    layer = Embedding(TYPES, 4, ids_name="segment_ids")
    layer.build((None, None))
    if BACKEND == "tensorflow":
        import tensorflow as tf
        with pytest.raises(graph_error(), match=r"`segment_ids` must be integers in \[0, 2\)"):
            tf.function(lambda x: layer(x), jit_compile=False)(np.array([[0, 3]], "int32"))
    else:
        import jax
        out = np.asarray(jax.jit(lambda x: layer(x))(np.array([[0, 3]], "int32")))
        assert np.isnan(out[0, 1]).all() and np.isfinite(out[0, 0]).all()


@pytest.mark.parametrize("ids", [[1.5, 2.0], [0.0, -0.25]], ids=["1.5", "-0.25"])
def test_fractional_float_ids_are_refused_or_nan(embedding, ids):
    layer, table = embedding
    values = np.array([ids], "float32")
    with pytest.raises(ValueError, match="`token_ids` must be whole numbers"):
        layer(values)
    out = ops.convert_to_numpy(compiled(lambda x: layer(x))(values))[0]
    bad = [i for i, v in enumerate(ids) if v != int(v)]
    assert all(np.isnan(out[i]).all() for i in bad)
    good = [i for i, v in enumerate(ids) if v == int(v)]
    for i in good:
        np.testing.assert_array_equal(out[i], table[int(ids[i])])


def test_whole_float_ids_gather_their_rows(embedding):
    layer, table = embedding
    out = ops.convert_to_numpy(layer(np.array([[4.0, 0.0]], "float32")))
    np.testing.assert_array_equal(out[0], table[[4, 0]])


@pytest.mark.parametrize("dtype", ["mixed_bfloat16", "mixed_float16"])
def test_compiled_embedding_nan_in_mixed_precision(dtype):
    layer = Embedding(VOCAB, 4, dtype=dtype)
    layer.build((None, None))
    out = compiled(lambda x: layer(x))(np.array([[1, VOCAB]], "int32"))
    out = ops.convert_to_numpy(ops.cast(out, "float32"))
    assert np.isfinite(out[0, 0]).all() and np.isnan(out[0, 1]).all()


# -- labels of the losses ------------------------------------------------------------------

CLASSES = 5
LOSSES = {
    "emo": lambda: EMOLoss(np.random.default_rng(0).normal(size=(CLASSES, 3)),
                           ignore_index=-100),
    "logit_adjusted": lambda: LogitAdjustedLoss([1, 2, 3, 4, 5]),
}
BAD_LABELS = [-1, CLASSES, 1000]


def label_data(bad=None):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3, 2)).astype("float32")
    y = rng.integers(0, CLASSES, size=(4, 3))
    y[0, 0] = -100 if bad is None else y[0, 0]
    if bad is not None:
        y[1, 2] = bad
    return x, y


def label_model(loss, jit):
    model = keras.Sequential([keras.Input((3, 2)), keras.layers.Dense(CLASSES)])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss, jit_compile=jit)
    return model


@pytest.fixture(scope="module")
def xla_label_models():
    """One compiled model per loss, and its initial weights (a NaN step is undone)."""
    models = {name: label_model(make(), True) for name, make in LOSSES.items()}
    return {name: (model, model.get_weights()) for name, model in models.items()}


def labels_for(loss, bad=None):
    x, y = label_data(bad)
    return x, (np.where(y == -100, 0, y) if loss == "logit_adjusted" else y)


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("bad", BAD_LABELS)
def test_compiled_fit_with_a_bad_label_reports_nan(xla_label_models, loss, bad):
    model, weights = xla_label_models[loss]
    try:
        history = model.fit(*labels_for(loss, bad), verbose=0)
        assert np.isnan(history.history["loss"][0])
    finally:
        model.set_weights(weights)


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("bad", BAD_LABELS[:2])
def test_fit_without_xla_raises_naming_y_true(loss, bad):
    model = label_model(LOSSES[loss](), False)
    if BACKEND == "tensorflow":
        error, message = graph_error(), "`y_true` must be integers in"
    else:
        error, message = ValueError, "`y_true` labels must lie in"
    with pytest.raises(error, match=message):
        model.fit(*labels_for(loss, bad), verbose=0)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_compiled_fit_with_valid_labels_is_finite(xla_label_models, loss):
    model, weights = xla_label_models[loss]
    try:
        history = model.fit(*labels_for(loss), verbose=0)
        assert np.isfinite(history.history["loss"][0])
    finally:
        model.set_weights(weights)


def np_log_softmax(z):
    z = z.astype("float64") - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_compiled_logit_adjusted_loss_nan_only_at_bad_labels():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, CLASSES)).astype("float32")
    labels = np.array([0, 4, -1, 2, 5, 1], "int32")
    priors = np.arange(1, CLASSES + 1, dtype="float64")
    out = np.asarray(ops.convert_to_numpy(compiled(
        lambda y, z: logit_adjusted_loss(y, z, priors, tau=1.0))(labels, logits)))
    assert np.isnan(out[[2, 4]]).all()
    good = [0, 1, 3, 5]
    want = -np_log_softmax(logits + np.log(priors / priors.sum()))[good, labels[good]]
    np.testing.assert_allclose(out[good], want, rtol=1e-5)  # float32 vs float64 reference


@pytest.mark.parametrize("labels", [[0, 5], [-1, 0], [0, 2.5]], ids=["5", "-1", "2.5"])
def test_eager_losses_raise_naming_y_true(labels):
    logits = np.zeros((2, CLASSES), "float32")
    cost = np.eye(CLASSES, dtype="float32")
    with pytest.raises(ValueError, match="`y_true`"):
        emo_loss(np.array(labels), logits, cost)
    with pytest.raises(ValueError, match="`y_true`"):
        logit_adjusted_loss(np.array(labels), logits, np.ones(CLASSES))


def test_compiled_emo_loss_ignores_ignore_index_but_not_other_negatives():
    logits = np.zeros((2, 3, CLASSES), "float32")
    cost = np.eye(CLASSES, dtype="float32")
    fn = compiled(lambda y, z: emo_loss(y, z, cost, ignore_index=-100))
    ignored = np.array([[1, -100, 2], [0, 3, -100]], "int32")
    # uniform logits: CE = log(5), emo = 1 - 1/5 for orthonormal costs; combined = CE
    np.testing.assert_allclose(ops.convert_to_numpy(fn(ignored, logits)), np.log(CLASSES),
                               rtol=1e-6)
    assert np.isnan(ops.convert_to_numpy(fn(np.array([[1, -99, 2], [0, 3, 4]], "int32"),
                                            logits)))


# -- labels and targets of the task heads' losses -------------------------------------------

CRF = ConditionalRandomField()
HEAD_RNG = np.random.default_rng(3)
CRF_SCORES = np.asarray(CRF(HEAD_RNG.normal(size=(3, 4, CLASSES)).astype("float32"),
                            mask=np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], bool)))
CRF_LABELS = HEAD_RNG.integers(0, CLASSES, size=(3, 4)).astype("float32")
CRF_LABELS[2, 2:] = -100  # padding: ignored, not bad
CRF_ONE_HOT = np.eye(CLASSES)[np.maximum(CRF_LABELS, 0).astype(int)]
SPANS = HEAD_RNG.normal(size=(3, 2, 3, 3)).astype("float32")
SPANS[:, :, 1, 0] = -np.inf  # left out, as GlobalPointer's backward spans


def with_entry(array, index, value):
    array = np.array(array, "float32")
    array[index] = value
    return array


# name: (loss, valid y_true, y_pred, ((bad y_true, its row), ...)); each loss gives one value
# per row (example)
HEAD_LOSSES = {
    "crf.sparse_loss": (CRF.sparse_loss, CRF_LABELS, CRF_SCORES,
                        [(with_entry(CRF_LABELS, (1, 1), value), 1)
                         for value in (CLASSES, -1, 0.5)]),
    "crf.dense_loss": (CRF.dense_loss, CRF_ONE_HOT, CRF_SCORES,  # a second 1, a 0.5
                       [(with_entry(CRF_ONE_HOT, (0, 2, (CRF_ONE_HOT[0, 2].argmax() + 1)
                                                  % CLASSES), 1.0), 0),
                        (with_entry(CRF_ONE_HOT, (1, 0, CRF_ONE_HOT[1, 0].argmax()), 0.5), 1)]),
    "multilabel_categorical_crossentropy": (
        multilabel_categorical_crossentropy, (SPANS[:, 0, 0] > 0), SPANS[:, 0, 0],
        [(with_entry(SPANS[:, 0, 0] > 0, (2, 1), value), 2) for value in (2.0, -0.5, np.nan)]),
    "global_pointer_crossentropy": (
        global_pointer_crossentropy, (SPANS > 0), SPANS,
        [(with_entry(SPANS > 0, (1, 1, 0, 2), 3.0), 1)]),
}
HEAD_CASES = [(name, i) for name, case in HEAD_LOSSES.items() for i in range(len(case[3]))]


@pytest.mark.parametrize("name, case", HEAD_CASES, ids=[f"{n}-{i}" for n, i in HEAD_CASES])
def test_compiled_head_loss_is_nan_in_the_bad_row_only(name, case):
    loss, y_true, y_pred, bad = HEAD_LOSSES[name]
    bad_true, row = bad[case]
    want = np.asarray(loss(y_true, y_pred))
    assert want.shape == (len(y_pred),) and np.isfinite(want).all()
    out = np.asarray(ops.convert_to_numpy(compiled(loss)(bad_true, y_pred)))
    assert np.isnan(out[row]), f"a bad target gave the loss {out[row]}"
    others = np.arange(len(out)) != row
    np.testing.assert_allclose(out[others], want[others], rtol=1e-6)
    with pytest.raises(ValueError, match="`y_true`"):  # eagerly: a named error
        loss(bad_true, y_pred)


@pytest.mark.parametrize("name", sorted(HEAD_LOSSES))
def test_head_loss_without_xla_raises_naming_y_true(name):
    """TensorFlow graphs without XLA fail the assertion; JAX has no such mode (``jit`` gives
    NaN, above; without it, arrays are concrete and the check is the eager one)."""
    loss, _, y_pred, bad = HEAD_LOSSES[name]
    if BACKEND == "tensorflow":
        import tensorflow as tf
        with pytest.raises(graph_error(), match="`y_true` must be"):
            tf.function(loss, jit_compile=False)(bad[0][0], y_pred)
    else:
        import jax
        with jax.disable_jit(), pytest.raises(ValueError, match="`y_true`"):
            jax.jit(loss)(bad[0][0], y_pred)


def test_fit_without_xla_with_the_crf_loss_and_a_bad_label_raises_naming_y_true():
    """``model.fit`` with ``crf.sparse_loss`` (compiled, the loss is NaN: see above)."""
    crf = ConditionalRandomField()
    model = keras.Sequential([keras.Input((4, 2)), keras.layers.Dense(CLASSES), crf])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=crf.sparse_loss, jit_compile=False)
    x = np.random.default_rng(4).normal(size=(3, 4, 2)).astype("float32")
    assert np.isfinite(model.fit(x, np.zeros((3, 4)), verbose=0).history["loss"][0])
    error, message = ((graph_error(), "`y_true` must be integers in") if BACKEND == "tensorflow"
                      else (ValueError, "`y_true` labels must lie in"))
    with pytest.raises(error, match=message):
        model.fit(x, with_entry(np.zeros((3, 4)), (1, 2), CLASSES), verbose=0)
