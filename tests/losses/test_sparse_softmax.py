"""Sparse softmax cross-entropy against NumPy written from its formula (float64 reference,
float32 code, max abs error 1e-5): ``log Σ_{i ∈ top-k} e^{s_i} − s_y``. With ``k`` equal to
the number of classes it is Keras' sparse categorical cross-entropy; its gradient is zero
outside the top-``k`` and the target; token-level (seq2seq) logits and the Keras loss class
with sample weights; the activation is the softmax of the top-``k``; bad ``k`` and labels
are refused by name."""

import keras
import numpy as np
import pytest

from keraformer.losses import (SparseSoftmax, SparseSoftmaxCrossentropy, sparse_softmax,
                               sparse_softmax_crossentropy)
from tests.conftest import backend_gradients


def numpy_sparse_softmax_loss(labels, logits, k):
    logits = np.asarray(logits, "float64")
    top = np.sort(logits, axis=-1)[..., ::-1][..., :k]
    peak = top.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(top - peak).sum(axis=-1)) + peak[..., 0]
    return lse - np.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]


def logits_and_labels(shape, seed=0):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(shape) * 3).astype("float32")
    return logits, rng.integers(0, shape[-1], shape[:-1]).astype("int32")


@pytest.mark.parametrize("k", [1, 3, 7, 20])
def test_loss_matches_the_formula(k):
    logits, labels = logits_and_labels((6, 20))
    got = keras.ops.convert_to_numpy(sparse_softmax_crossentropy(labels, logits, k))
    np.testing.assert_allclose(got, numpy_sparse_softmax_loss(labels, logits, k), atol=1e-5)


def test_k_equal_to_the_classes_is_cross_entropy():
    logits, labels = logits_and_labels((5, 4, 9), seed=1)  # token level: (batch, length, vocab)
    got = sparse_softmax_crossentropy(labels, logits, 9)
    expected = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got),
                               keras.ops.convert_to_numpy(expected), atol=1e-5)


def test_gradient_is_zero_outside_the_top_k_and_the_target():
    k = 3
    logits, labels = logits_and_labels((8, 12), seed=2)
    labels[:4] = np.argsort(logits[:4], axis=-1)[:, 0]  # targets far below the top-k
    (gradient,) = backend_gradients(
        lambda s: keras.ops.sum(sparse_softmax_crossentropy(labels, s + 0.0, k)), logits)
    top = np.argsort(-logits, axis=-1)[:, :k]
    involved = np.zeros(logits.shape, bool)
    np.put_along_axis(involved, top, True, axis=-1)
    involved[np.arange(8), labels] = True
    assert np.all(gradient[~involved] == 0)
    assert np.all(np.abs(gradient[involved]) > 0)
    # and inside: softmax over the top-k minus the one-hot target
    expected = np.zeros(logits.shape)
    top_logits = np.take_along_axis(logits.astype("float64"), top, axis=-1)
    probs = np.exp(top_logits - top_logits.max(-1, keepdims=True))
    np.put_along_axis(expected, top, probs / probs.sum(-1, keepdims=True), axis=-1)
    expected[np.arange(8), labels] -= 1
    np.testing.assert_allclose(gradient, expected, atol=1e-5)


def test_activation_is_the_softmax_of_the_top_k():
    logits, _ = logits_and_labels((4, 10), seed=3)
    probs = keras.ops.convert_to_numpy(SparseSoftmax(4)(logits))
    top = np.argsort(-logits, axis=-1)[:, :4]
    expected = np.zeros(logits.shape)
    top_logits = np.take_along_axis(logits.astype("float64"), top, axis=-1)
    e = np.exp(top_logits - top_logits.max(-1, keepdims=True))
    np.put_along_axis(expected, top, e / e.sum(-1, keepdims=True), axis=-1)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(sparse_softmax(logits, 10)),
                               keras.ops.convert_to_numpy(keras.ops.softmax(logits)), atol=1e-6)


def test_loss_class_weights_tokens_and_round_trips():
    logits, labels = logits_and_labels((3, 5, 11), seed=4)
    weights = (np.arange(15).reshape(3, 5) % 3 != 0).astype("float32")
    loss = SparseSoftmaxCrossentropy(4)
    got = float(keras.ops.convert_to_numpy(loss(labels, logits, sample_weight=weights)))
    per_token = numpy_sparse_softmax_loss(labels, logits, 4)
    np.testing.assert_allclose(got, (per_token * weights).sum() / weights.size, rtol=1e-5)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, SparseSoftmaxCrossentropy) and again.k == 4


def test_fit_with_the_loss_class():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(9)])
    model.compile("adam", SparseSoftmaxCrossentropy(3))
    x = np.random.default_rng(0).standard_normal((16, 6)).astype("float32")
    history = model.fit(x, np.arange(16) % 9, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))


@pytest.mark.parametrize("k,error", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                     (True, TypeError), (21, ValueError)])
def test_bad_k_is_refused_by_name(k, error):
    logits, labels = logits_and_labels((2, 20))
    with pytest.raises(error, match="`k`"):
        sparse_softmax_crossentropy(labels, logits, k)
    if k != 21:
        with pytest.raises(error, match="`k`"):
            SparseSoftmaxCrossentropy(k)


def test_labels_out_of_range_are_refused():
    logits, labels = logits_and_labels((2, 5))
    with pytest.raises(ValueError, match="y_true"):
        sparse_softmax_crossentropy(np.array([0, 5]), logits, 2)
    with pytest.raises(ValueError, match="y_true"):
        sparse_softmax_crossentropy(labels[:, None], logits, 2)
