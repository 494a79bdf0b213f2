"""GlobalPointer, EfficientGlobalPointer, ConditionalRandomField, viterbi_decode and the
multi-label losses.

References: bert4keras 0.11.5's layers, ``multilabel_categorical_crossentropy`` and
``ViterbiDecoder`` run once in a subprocess (``TF_KERAS=1 TF_USE_LEGACY_KERAS=1``), whose
weights are loaded here with ``set_weights`` (float32; tolerance 1e-5 relative, 1e-5
absolute, and the ``-inf`` pattern exactly); a brute force over all label paths for the CRF
loss and Viterbi (float64 NumPy, 1e-4); the formula in NumPy for the loss.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keraformer.data import DataGenerator, sequence_padding
from keraformer.generation import viterbi_decode
from keraformer.losses import global_pointer_crossentropy, multilabel_categorical_crossentropy
from keraformer.models import (ConditionalRandomField, EfficientGlobalPointer, GlobalPointer,
                               build_transformer_model)
from tests.references import copy_layer, crf_path_scores as brute_force, run_bert4keras

RTOL = ATOL = 1e-5
BATCH, LENGTH, HIDDEN, HEADS, HEAD_SIZE, LABELS = 2, 5, 6, 3, 4, 4
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)

SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
from bert4keras.backend import K, multilabel_categorical_crossentropy
from bert4keras.layers import ConditionalRandomField, EfficientGlobalPointer, GlobalPointer
from bert4keras.snippets import ViterbiDecoder

inputs = json.load(open(sys.argv[1]))
x = np.array(inputs["x"], "float32")
mask = np.array(inputs["mask"], bool)
labels = np.array(inputs["labels"], "int32")
out, shapes = {}, {}
for name, layer in (("gp", GlobalPointer(3, 4)), ("gp_plain", GlobalPointer(3, 4, RoPE=False,
                    tril_mask=False, use_bias=False)), ("egp", EfficientGlobalPointer(3, 4))):
    out[name + "_masked"] = layer(x, mask=tf.constant(mask)).numpy()
    out[name] = layer(x).numpy()
    for i, w in enumerate(layer.get_weights()):
        out[f"{name}_w{i}"] = w
    shapes[name] = [list(w.shape) for w in layer.get_weights()]
    y_true = (np.random.RandomState(1).rand(*out[name].shape) < 0.2).astype("float32")
    out[name + "_ytrue"] = y_true
    scores = tf.constant(out[name + "_masked"])
    out[name + "_mcce"] = K.eval(multilabel_categorical_crossentropy(y_true, scores))
    # bert4keras' examples: the GlobalPointer loss flattens (batch * heads, length ** 2)
    bh = K.prod(K.shape(scores)[:2])
    out[name + "_gpce"] = K.eval(K.mean(multilabel_categorical_crossentropy(
        K.reshape(y_true, (bh, -1)), K.reshape(scores, (bh, -1)))))
soft = np.random.RandomState(2).rand(2, 7).astype("float32")
out["soft_pred"] = np.random.RandomState(3).randn(2, 7).astype("float32")
out["soft_true"] = soft
out["soft_mcce"] = K.eval(multilabel_categorical_crossentropy(soft, out["soft_pred"]))
emissions = x[..., :4]
for name, crf in (("crf", ConditionalRandomField()), ("crf_lr", ConditionalRandomField(
        lr_multiplier=3))):
    y_pred = crf(tf.constant(emissions), mask=tf.constant(mask))
    out[name + "_out"] = y_pred.numpy()
    out[name + "_w0"] = crf.get_weights()[0]
    shapes[name] = [list(w.shape) for w in crf.get_weights()]
    out[name + "_sparse"] = K.eval(crf.sparse_loss(tf.constant(labels), y_pred))
    out[name + "_dense"] = K.eval(crf.dense_loss(tf.one_hot(labels, 4), y_pred))
    out[name + "_acc"] = K.eval(crf.sparse_accuracy(tf.constant(labels), y_pred))
    trans = K.eval(crf.trans)
    out[name + "_trans"] = trans
    for row, length in enumerate(mask.sum(1)):
        out[f"{name}_viterbi{row}"] = ViterbiDecoder(trans).decode(emissions[row, :length].copy())
        out[f"{name}_viterbi_se{row}"] = ViterbiDecoder(trans, starts=[0, 1], ends=[2]).decode(
            emissions[row, :length].copy())
json.dump(shapes, open(sys.argv[2], "w"))
np.savez(sys.argv[3], **out)
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, LENGTH, HIDDEN)).astype("float32")
    labels = rng.integers(0, LABELS, size=(BATCH, LENGTH))
    shapes, arrays = run_bert4keras(SCRIPT, {"x": x.tolist(), "mask": MASK.tolist(),
                                         "labels": labels.tolist()},
                                tmp_path_factory.mktemp("b4k_heads"))
    return x, labels, shapes, arrays


def assert_scores_equal(ours, theirs):
    ours = np.asarray(ours)
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs))
    finite = ~np.isneginf(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["gp", "gp_plain", "egp"])
def test_pointers_equal_bert4keras_with_its_weights(reference, name):
    x, _, shapes, arrays = reference
    layer = {"gp": lambda: GlobalPointer(HEADS, HEAD_SIZE),
             "gp_plain": lambda: GlobalPointer(HEADS, HEAD_SIZE, RoPE=False, tril_mask=False,
                                               use_bias=False),
             "egp": lambda: EfficientGlobalPointer(HEADS, HEAD_SIZE)}[name]()
    layer.build((None, None, HIDDEN))
    assert [list(w.shape) for w in layer.get_weights()] == shapes[name]
    layer.set_weights([arrays[f"{name}_w{i}"] for i in range(len(shapes[name]))])
    masked = layer(x, mask=MASK)
    assert_scores_equal(masked, arrays[name + "_masked"])
    assert_scores_equal(layer(x), arrays[name])
    y_true = arrays[name + "_ytrue"]
    np.testing.assert_allclose(multilabel_categorical_crossentropy(y_true, masked),
                               arrays[name + "_mcce"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.mean(global_pointer_crossentropy(y_true, masked)),
                               arrays[name + "_gpce"], rtol=RTOL, atol=ATOL)


def test_multilabel_crossentropy_soft_labels_equal_bert4keras_and_formula(reference):
    _, _, _, arrays = reference
    y_pred, y_true = arrays["soft_pred"], arrays["soft_true"]
    ours = np.asarray(multilabel_categorical_crossentropy(y_true, y_pred))
    np.testing.assert_allclose(ours, arrays["soft_mcce"], rtol=RTOL, atol=ATOL)
    p, t = y_pred.astype("float64"), y_true.astype("float64")
    formula = np.log1p(np.sum((1 - t) * np.exp(p), -1)) + np.log1p(np.sum(t * np.exp(-p), -1))
    np.testing.assert_allclose(ours, formula, rtol=1e-5)


@pytest.mark.parametrize("name,multiplier", [("crf", 1), ("crf_lr", 3)])
def test_crf_equals_bert4keras_with_its_weights(reference, name, multiplier):
    x, labels, shapes, arrays = reference
    emissions = x[..., :LABELS]
    crf = ConditionalRandomField(lr_multiplier=multiplier)
    crf.build((None, None, LABELS))
    assert [list(w.shape) for w in crf.get_weights()] == shapes[name]
    crf.set_weights([arrays[name + "_w0"]])
    np.testing.assert_allclose(crf.trans, arrays[name + "_trans"], rtol=RTOL, atol=ATOL)
    y_pred = crf(emissions, mask=MASK)
    assert_scores_equal(y_pred, arrays[name + "_out"])
    np.testing.assert_allclose(crf.sparse_loss(labels, y_pred), arrays[name + "_sparse"],
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(crf.dense_loss(np.eye(LABELS)[labels], y_pred),
                               arrays[name + "_dense"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(crf.sparse_accuracy(labels, y_pred), arrays[name + "_acc"],
                               rtol=RTOL)
    paths = viterbi_decode(y_pred, crf.trans)
    constrained = viterbi_decode(y_pred, crf.trans, starts=[0, 1], ends=[2])
    for row, length in enumerate(MASK.sum(1)):
        np.testing.assert_array_equal(paths[row, :length], arrays[f"{name}_viterbi{row}"])
        np.testing.assert_array_equal(constrained[row, :length],
                                      arrays[f"{name}_viterbi_se{row}"])
        assert (paths[row, length:] == -1).all()


def test_crf_loss_and_viterbi_equal_brute_force_over_all_paths():
    rng = np.random.default_rng(5)
    labels, length = 3, 5
    emissions = rng.normal(size=(3, length, labels)).astype("float32") * 2
    mask = np.array([[1] * 5, [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
    targets = rng.integers(0, labels, size=(3, length))
    crf = ConditionalRandomField()
    y_pred = np.asarray(crf(emissions, mask=mask))
    transitions = np.asarray(crf.trans, "float64")
    losses = np.asarray(crf.sparse_loss(targets, y_pred))
    paths = viterbi_decode(y_pred, transitions)
    for row in range(3):
        n = mask[row].sum()
        scores = brute_force(emissions[row, :n].astype("float64"), transitions)
        values = np.array(list(scores.values()))
        log_z = values.max() + np.log(np.exp(values - values.max()).sum())
        expected = log_z - scores[tuple(targets[row, :n])]
        np.testing.assert_allclose(losses[row], expected, rtol=1e-4, atol=1e-4)
        best = max(scores, key=scores.get)
        assert tuple(paths[row, :n]) == best and (paths[row, n:] == -1).all()
        constrained = brute_force(emissions[row, :n].astype("float64"), transitions,
                                  starts=[1, 2], ends=[0, 2])
        got = viterbi_decode(emissions[row, :n], transitions, starts=[1, 2], ends=[0, 2])
        assert tuple(got) == max(constrained, key=constrained.get)
    # an explicit mask decodes the same as -inf rows
    np.testing.assert_array_equal(viterbi_decode(emissions, transitions, mask=mask), paths)


def tiny_bert():
    return build_transformer_model(
        model="bert", vocab_size=30, hidden_size=8, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=16, max_position_embeddings=16)


@pytest.mark.parametrize("mask_from", ["keras_mask", "explicit"])
def test_crf_on_a_builder_output_ignores_padding(mask_from):
    """The same sentence alone and padded in a longer batch: equal CRF loss, accuracy and
    Viterbi path. The mask is the builder output's Keras mask (carried through Dense), or
    passed explicitly from the token ids."""
    keras.utils.set_random_seed(0)
    bert = tiny_bert()
    token_ids, segment_ids = bert.inputs
    scores = keras.layers.Dense(LABELS)(bert.outputs[0])
    crf = ConditionalRandomField()
    if mask_from == "keras_mask":
        outputs = crf(scores)
    else:
        outputs = crf(scores, mask=ops.not_equal(token_ids, 0))
    model = keras.Model(bert.inputs, outputs)
    short = np.array([[2, 5, 7, 9, 3]])
    padded = np.array([[2, 5, 7, 9, 3, 0, 0, 0], [2, 4, 6, 8, 10, 12, 14, 3]])
    labels = np.array([[0, 1, 2, 3, 0, 1, 1, 1], [1, 2, 3, 0, 1, 2, 3, 0]])
    alone = model.predict([short, np.zeros_like(short)], verbose=0)
    batch = model.predict([padded, np.zeros_like(padded)], verbose=0)
    assert np.isneginf(batch[0, 5:]).all() and np.isfinite(batch[1]).all()
    np.testing.assert_allclose(crf.sparse_loss(labels[:1, :5], alone)[0],
                               crf.sparse_loss(labels, batch)[0], rtol=1e-5)
    np.testing.assert_allclose(crf.sparse_accuracy(labels[:1, :5], alone),
                               crf.sparse_accuracy(labels[:1], batch[:1]), rtol=1e-6)
    np.testing.assert_array_equal(viterbi_decode(alone, crf.trans)[0],
                                  viterbi_decode(batch, crf.trans)[0, :5])


def test_pointer_padding_leaves_real_spans_unchanged():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 7, HIDDEN)).astype("float32")
    for layer in (GlobalPointer(HEADS, HEAD_SIZE), EfficientGlobalPointer(HEADS, HEAD_SIZE)):
        alone = np.asarray(layer(x[:, :4]))
        padded = np.asarray(layer(x, mask=np.arange(7)[None] < 4))
        assert_scores_equal(padded[:, :, :4, :4], alone)
        assert np.isneginf(padded[:, :, 4:]).all() and np.isneginf(padded[:, :, :, 4:]).all()
        assert np.isneginf(alone[0, :, 1, 0]).all() and np.isfinite(alone[0, :, 0, 1]).all()


def test_losses_and_gradients_finite_on_padded_rows(gradients):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, HIDDEN)).astype("float32")
    mask = np.array([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], bool)  # a fully padded row too
    pointer = GlobalPointer(HEADS, HEAD_SIZE)
    crf = ConditionalRandomField()
    pointer.build(x.shape)
    crf.build((2, 5, HIDDEN))
    y_true = (rng.random((2, HEADS, 5, 5)) < 0.3).astype("float32")
    labels = rng.integers(0, HIDDEN, size=(2, 5))

    def loss(inputs):
        return ops.sum(global_pointer_crossentropy(y_true, pointer(inputs, mask=mask))) \
            + ops.sum(crf.sparse_loss(labels, crf(inputs, mask=mask)))

    value = float(loss(x))
    (grad,) = gradients(loss, x)
    assert np.isfinite(value) and np.isfinite(grad).all()
    assert (grad[1] == 0).all() and (grad[0, 2:] == 0).all() and (grad[0, :2] != 0).any()


class TagBatches(DataGenerator):
    def __iter__(self, random=False):
        for is_end, rows in self.sample(random):
            ids = sequence_padding([r[0] for r in rows])
            yield ids, sequence_padding([r[1] for r in rows])


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_with_crf_loss_and_metric(jit_compile):
    """crf.sparse_loss / sparse_accuracy compile into model.fit fed by DataGenerator.forfit,
    whose batches each have their own length (so the recursion runs over an unknown length),
    with and without XLA (TF's unbounded scan did not compile its gradient under XLA), and
    the loss goes down on a learnable tagging task."""
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    batches = []
    for length in (6, 6, 9, 4) * 4:
        ids = rng.integers(1, 8, size=(8, length))
        ids[::2, length - 2:] = 0
        batches.append([(row, np.where(row == 0, 0, row % LABELS)) for row in ids])
    generator = TagBatches(batches, batch_size=1)
    inputs = keras.Input((None,), dtype="int32")
    hidden = keras.layers.Embedding(8, 8, mask_zero=True)(inputs)
    crf = ConditionalRandomField(lr_multiplier=2)
    outputs = crf(keras.layers.Dense(LABELS)(hidden))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.05), loss=crf.sparse_loss,
                  metrics=[crf.sparse_accuracy], jit_compile=jit_compile)
    history = model.fit(generator.forfit(), steps_per_epoch=len(generator), epochs=6,
                        verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert history.history["sparse_accuracy"][-1] > 0.9


def test_crf_step_under_xla_equals_uncompiled():
    """One SGD step on the CRF loss gives the same weights compiled with XLA as without
    (1e-5): the compiled gradient of the forward recursion is the same gradient."""
    rng = np.random.default_rng(4)
    ids = rng.integers(1, 8, size=(6, 7))
    ids[::2, 4:] = 0
    labels = np.where(ids == 0, 0, ids % LABELS)

    def stepped(jit_compile):
        keras.utils.set_random_seed(2)
        inputs = keras.Input((None,), dtype="int32")
        hidden = keras.layers.Embedding(8, 8, mask_zero=True)(inputs)
        crf = ConditionalRandomField()
        model = keras.Model(inputs, crf(keras.layers.Dense(LABELS)(hidden)))
        model.compile(keras.optimizers.SGD(0.5), loss=crf.sparse_loss, jit_compile=jit_compile)
        before = [w.copy() for w in model.get_weights()]
        model.train_on_batch(ids, labels)
        return before, model.get_weights()

    (start, plain), (start_xla, compiled) = stepped(False), stepped(True)
    for a, b, s0, s1 in zip(plain, compiled, start, start_xla):
        np.testing.assert_array_equal(s0, s1)
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert any(np.abs(a - s).max() > 1e-3 for a, s in zip(plain, start))


def test_heads_round_trip_through_keras_files(tmp_path):
    inputs = keras.Input((None, HIDDEN))
    outputs = [GlobalPointer(HEADS, HEAD_SIZE, tril_mask=False, name="gp")(inputs),
               EfficientGlobalPointer(HEADS, HEAD_SIZE, RoPE=False, name="egp")(inputs),
               ConditionalRandomField(lr_multiplier=4, name="crf")(
                   keras.layers.Dense(LABELS)(keras.layers.Masking()(inputs)))]
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(4).normal(size=(2, 5, HIDDEN)).astype("float32")
    x[1, 3:] = 0.0  # masked by Masking: the CRF reads the Keras mask
    path = tmp_path / "heads.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for ours, theirs in zip(model.predict(x, verbose=0), loaded.predict(x, verbose=0)):
        assert_scores_equal(theirs, ours)
    assert np.isneginf(model.predict(x, verbose=0)[2][1, 3:]).all()
    for name in ("gp", "egp", "crf"):
        config = model.get_layer(name).get_config()
        assert loaded.get_layer(name).get_config() == config
    assert model.get_layer("gp").get_config()["tril_mask"] is False
    assert model.get_layer("crf").get_config()["lr_multiplier"] == 4


@pytest.mark.parametrize("dtype", ["mixed_bfloat16", "mixed_float16"])
def test_heads_under_mixed_precision(dtype):
    """Half-precision outputs keep the -inf pattern and stay within 5e-2 of the float32 scale;
    the losses are computed in float32 and stay finite."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 5, HIDDEN)).astype("float32")
    labels = rng.integers(0, HIDDEN, size=(2, 5))
    for layer in (GlobalPointer(HEADS, HEAD_SIZE), EfficientGlobalPointer(HEADS, HEAD_SIZE),
                  ConditionalRandomField()):
        layer.build(x.shape)
        half = copy_layer(layer, x, dtype=dtype)
        ours = np.asarray(ops.cast(half(x, mask=MASK), "float32"))
        reference = np.asarray(layer(x, mask=MASK))
        np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(reference))
        finite = np.isfinite(reference)
        np.testing.assert_allclose(ours[finite], reference[finite],
                                   atol=5e-2 * np.abs(reference[finite]).max())
        if isinstance(layer, ConditionalRandomField):
            loss = np.asarray(half.sparse_loss(labels, half(x, mask=MASK)))
            np.testing.assert_allclose(loss, layer.sparse_loss(labels, reference), rtol=5e-2)
        else:
            y_true = (rng.random(reference.shape) < 0.3).astype("float32")
            loss = np.asarray(global_pointer_crossentropy(y_true, half(x, mask=MASK)))
            assert loss.dtype == np.float32 and np.isfinite(loss).all()


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="head_size"):
        GlobalPointer(2, 5)
    with pytest.raises(ValueError, match="heads"):
        EfficientGlobalPointer(0, 4)
    with pytest.raises(ValueError, match="lr_multiplier"):
        ConditionalRandomField(lr_multiplier=0)
    with pytest.raises(ValueError, match="shape"):
        GlobalPointer(2, 4)(np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match=r"emission scores of shape \(batch, length, labels\).*"
                                         r"received shape \(2, 3\)"):
        ConditionalRandomField()(np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match="transitions"):
        viterbi_decode(np.zeros((3, 4)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="starts"):
        viterbi_decode(np.zeros((3, 4)), np.zeros((4, 4)), starts=[4])
    with pytest.raises(ValueError, match="mask"):
        viterbi_decode(np.zeros((2, 3, 4)), np.zeros((4, 4)), mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match="ends"):  # no one-label path starts with 1, ends 0
        viterbi_decode(np.zeros((1, 4)), np.zeros((4, 4)), starts=[1], ends=[0])
    with pytest.raises(ValueError, match="y_pred"):
        global_pointer_crossentropy(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)))
    crf = ConditionalRandomField()
    crf.build((None, None, 3))
    with pytest.raises(ValueError, match="y_pred"):
        crf.sparse_loss(np.zeros((2, 5)), np.zeros((2, 5, 4), "float32"))
