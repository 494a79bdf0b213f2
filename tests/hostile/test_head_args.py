"""Hostile arguments of the task heads (GlobalPointer, EfficientGlobalPointer,
ConditionalRandomField): options, masks, labels and targets are refused where they enter, by
an error naming them; valid unusual inputs (labels at masked positions, labels as floats or
``(batch, length, 1)``) give the value of the plain input.

What compiled code does with a bad label value (NaN in its row) is checked in
``tests/hostile/test_ids.py``; here everything runs eagerly.
"""

import keras
import numpy as np
import pytest

from keraformer.models import ConditionalRandomField, EfficientGlobalPointer, GlobalPointer
from tests.references import assert_refused, refusal_cases

B, L, D, C = 2, 4, 6, 5  # batch, length, hidden size, CRF labels
RNG = np.random.default_rng(0)
X = RNG.normal(size=(B, L, D)).astype("float32")
EMISSIONS = RNG.normal(size=(B, L, C)).astype("float32")
MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
LABELS = np.array([[0, 3, 1, 4], [2, 2, 0, 0]])
ONE_HOT = np.eye(C, dtype="float32")[LABELS]

CRF = ConditionalRandomField()
SCORES = np.asarray(CRF(EMISSIONS, mask=MASK))  # -inf at the second row's padding


def global_pointer(mask=None, inputs=X, **options):
    return GlobalPointer(**{"heads": 2, "head_size": 4, **options})(inputs, mask=mask)


def efficient_global_pointer(mask=None, inputs=X, **options):
    return EfficientGlobalPointer(**{"heads": 2, "head_size": 4, **options})(inputs, mask=mask)


def conditional_random_field(mask=None, inputs=EMISSIONS):
    return ConditionalRandomField()(inputs, mask=mask)


def crf_loss(y_true, y_pred=SCORES, loss="sparse_loss"):
    return getattr(CRF, loss)(y_true, y_pred)


# masks must be (batch, length): no axis of length 1 standing for another, no extra positions
BAD_MASKS = [(dict(mask=np.ones(shape, bool)), ValueError, "mask", f"mask{shape}")
             for shape in [(B, 1), (1, L), (B, L + 1), (B, L - 1), (L,), (B, L, 1)]]

POINTER_BAD = BAD_MASKS + [
    (dict(heads=2.0), TypeError, "heads"),
    (dict(heads=0), ValueError, "heads"),
    (dict(head_size=True), TypeError, "head_size"),
    (dict(head_size=5), ValueError, "head_size"),  # odd: rotary pairs features
    (dict(RoPE=1), TypeError, "RoPE"),
    (dict(use_bias=None), TypeError, "use_bias"),
    (dict(tril_mask="no"), TypeError, "tril_mask"),
]


def label_at_real_position(value):
    """``LABELS`` with ``value`` at position 1, a real position of both rows."""
    return np.where(np.arange(L) == 1, value, LABELS)


CRF_LOSS_BAD = [
    (dict(y_true=label_at_real_position(value)), ValueError, "y_true", f"label {value}")
    for value in (C, -1, 1.5, np.nan)] + [
    (dict(y_true=LABELS.reshape(-1)), ValueError, "y_true", "labels flattened"),
    (dict(y_true=LABELS[:1]), ValueError, "y_true", "labels (1, length)"),
    (dict(y_true=LABELS[:, :1]), ValueError, "y_true", "labels (batch, 1)"),
    (dict(y_true=LABELS.T), ValueError, "y_true", "labels transposed"),
    (dict(y_true=ONE_HOT[..., :2]), ValueError, "y_true", "labels (batch, length, 2)"),
    (dict(y_true=LABELS, y_pred=np.concatenate([SCORES, SCORES[..., :1]], -1)), ValueError,
     "y_pred", "scores with one label more"),
    (dict(y_true=LABELS, y_pred=SCORES[0]), ValueError, "y_pred", "scores of one row"),
    (dict(y_true=label_at_real_position(C), loss="sparse_accuracy"), ValueError, "y_true",
     f"accuracy of label {C}"),
]

two_hot, zero_row = ONE_HOT.copy(), ONE_HOT.copy()
two_hot[0, 1, 0] = 1.0
zero_row[0, 2] = 0.0
BAD_ONE_HOT = {"two-hot": two_hot, "zero row": zero_row, "smoothed": ONE_HOT * 0.9 + 0.1 / C,
               "twice": ONE_HOT * 2, "negative": -ONE_HOT, "labels-1": ONE_HOT[..., :-1],
               "(1, length, labels)": ONE_HOT[:1], "(batch, 1, labels)": ONE_HOT[:, :1],
               "(batch, length, 1)": ONE_HOT[..., :1]}
CRF_DENSE_BAD = [(dict(y_true=y_true, loss=loss), ValueError, "y_true", f"{loss} {name}")
                 for name, y_true in BAD_ONE_HOT.items()
                 for loss in ("dense_loss", "dense_accuracy")]

REFUSALS = (refusal_cases(global_pointer, POINTER_BAD)
            + refusal_cases(efficient_global_pointer, POINTER_BAD)
            + refusal_cases(conditional_random_field, BAD_MASKS)
            + refusal_cases(crf_loss, CRF_LOSS_BAD + CRF_DENSE_BAD))


@pytest.mark.parametrize("target, kwargs, error, name", REFUSALS)
def test_bad_arguments_are_refused_by_name(target, kwargs, error, name):
    assert_refused(target, kwargs, error, name)


def test_mask_error_shows_both_shapes():
    with pytest.raises(ValueError, match=r"`mask` must have shape \(batch=2, length=4\); "
                                         r"received shape \(2, 1\)"):
        global_pointer(mask=np.ones((B, 1), bool))


@pytest.mark.parametrize("layer", [GlobalPointer(2, 4), EfficientGlobalPointer(2, 4),
                                   ConditionalRandomField()], ids=lambda layer: layer.name)
def test_layers_refuse_a_new_feature_size_after_build(layer):
    size = X.shape[-1] if isinstance(layer, GlobalPointer) else C
    layer(X[..., :size])
    with pytest.raises(ValueError, match=f"expected axis -1 of input shape to have value "
                                         f"{size}"):
        layer(X[..., :size - 1])


def test_losses_of_an_unbuilt_crf_are_refused():
    with pytest.raises(ValueError, match="call the layer on emission scores"):
        ConditionalRandomField().sparse_loss(LABELS, SCORES)


def test_integer_numpy_sizes_are_accepted():
    layer = GlobalPointer(np.int64(2), np.int32(4))
    assert (layer.heads, layer.head_size) == (2, 4) and type(layer.heads) is int
    assert layer(X).shape == (B, 2, L, L)


@pytest.mark.parametrize("padding", [-100, C, 99, 2.5, np.nan])
def test_labels_at_masked_positions_are_ignored(padding):
    """Whatever a padded position holds (HF's -100, an out-of-range or fractional value),
    the loss and accuracy equal those with label 0 there and the dense loss of the one-hot
    labels; the same holds for float labels and labels of shape (batch, length, 1)."""
    padded = np.where(MASK, LABELS, padding)
    loss = np.asarray(CRF.sparse_loss(padded, SCORES))
    want = np.asarray(CRF.sparse_loss(np.where(MASK, LABELS, 0), SCORES))
    assert np.isfinite(loss).all()
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    np.testing.assert_allclose(CRF.dense_loss(ONE_HOT, SCORES), want, rtol=1e-6)
    np.testing.assert_allclose(CRF.sparse_loss(padded[..., None].astype("float32"), SCORES),
                               want, rtol=1e-6)
    np.testing.assert_allclose(CRF.sparse_accuracy(padded, SCORES),
                               CRF.dense_accuracy(ONE_HOT, SCORES), rtol=1e-6)
    dense_padding = np.where(MASK[..., None], ONE_HOT, 7.0)  # anything at padded positions
    np.testing.assert_allclose(CRF.dense_loss(dense_padding, SCORES), want, rtol=1e-6)


def test_one_hot_labels_as_integers_or_bools_equal_floats():
    want = np.asarray(CRF.dense_loss(ONE_HOT, SCORES))
    for labels in (ONE_HOT.astype("int32"), ONE_HOT.astype(bool)):
        np.testing.assert_allclose(CRF.dense_loss(labels, SCORES), want, rtol=1e-6)


def test_keras_masks_have_the_right_shape_by_construction():
    """The mask a Keras layer hands on ((batch, length)) passes the check."""
    inputs = keras.Input((L,), dtype="int32")
    hidden = keras.layers.Embedding(8, D, mask_zero=True)(inputs)
    model = keras.Model(inputs, [GlobalPointer(2, 4)(hidden), ConditionalRandomField()(
        keras.layers.Dense(C)(hidden))])
    spans, scores = model(np.array([[1, 2, 0, 0], [3, 4, 5, 6]]))
    assert np.isneginf(np.asarray(scores)[0, 2:]).all()
    assert np.isneginf(np.asarray(spans)[0, :, 2:]).all()
