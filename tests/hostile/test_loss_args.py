"""Hostile loss arguments (EMO and logit-adjusted): each is refused where it enters, with an
error naming it; valid unusual inputs give the value of the formula.

Reference values come from the formulas: with an orthonormal cost matrix (the identity) and
uniform logits over ``V`` classes, CE = log V and emo = 1 − 1/V, so EMO's combined loss
0.5·(CE + sg(CE/emo)·emo) equals log V and the pure EMO loss 1 − 1/V; the logit-adjusted
loss with uniform logits is −log π_y for normalised priors π.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keraformer.losses import (EMOLoss, LogitAdjustedLoss, adjust_logits, emo_loss,
                               global_pointer_crossentropy, logit_adjusted_loss,
                               multilabel_categorical_crossentropy)
from tests.references import assert_refused, refusal_cases

V = 4
COST = np.eye(V, dtype="float32")
LABELS = np.array([[0, 3, 1], [2, 2, 0]])
LOGITS = np.zeros((2, 3, V), "float32")
NAN, INF = float("nan"), float("inf")

EMO_CLASS_BAD = [
    (dict(cost_embeddings=np.ones(V)), ValueError, "cost_embeddings"),
    (dict(cost_embeddings=np.ones((1, V, 2))), ValueError, "cost_embeddings"),
    (dict(cost_embeddings=np.ones((0, 3))), ValueError, "cost_embeddings"),
    (dict(cost_embeddings=np.array([[1.0, NAN], [0.0, 1.0]])), ValueError, "cost_embeddings"),
    (dict(cost_embeddings=np.array([[1.0, INF], [0.0, 1.0]])), ValueError, "cost_embeddings"),
    (dict(cost_embeddings="embeddings"), TypeError, "cost_embeddings"),
    (dict(cost_embeddings=None), TypeError, "cost_embeddings"),
    (dict(cost_embeddings=[[1.0, 2.0], [3.0]]), TypeError, "cost_embeddings"),
    (dict(cost_embeddings=keras.KerasTensor((V, 2))), TypeError, "cost_embeddings"),
    (dict(mode="ce"), ValueError, "mode"),
    (dict(mode="EMO"), ValueError, "mode"),
    (dict(mode=None), ValueError, "mode"),
    (dict(mode=1), ValueError, "mode"),
    (dict(ignore_index=1.5), TypeError, "ignore_index"),
    (dict(ignore_index=-100.0), TypeError, "ignore_index"),
    (dict(ignore_index=True), TypeError, "ignore_index"),
    (dict(ignore_index="0"), TypeError, "ignore_index"),
    (dict(reduction="sum"), ValueError, "reduction"),
    (dict(reduction="none"), ValueError, "reduction"),
    (dict(reduction=None), ValueError, "reduction"),
    (dict(reduction="mean"), ValueError, "reduction"),
    (dict(reduction="bogus"), ValueError, "reduction"),
]


EMO_FUNCTION_BAD = [
    (dict(mode="kl"), ValueError, "mode"),
    (dict(ignore_index=0.5), TypeError, "ignore_index"),
    (dict(cost_embeddings=COST[:3]), ValueError, "cost_embeddings"),
    (dict(cost_embeddings=ops.ones((V,))), ValueError, "cost_embeddings"),
    (dict(cost_embeddings="cost"), TypeError, "cost_embeddings"),
    (dict(y_true=LABELS[:, :2]), ValueError, "y_true"),
    (dict(y_true=LABELS[0]), ValueError, "y_true"),
    (dict(y_true=LABELS + 0.5), ValueError, "y_true"),
    (dict(y_true=LABELS * 0 + V), ValueError, "y_true"),
    (dict(mask=np.ones((2, 4))), ValueError, "mask"),
    (dict(mask=np.ones((3, 3))), ValueError, "mask"),
    (dict(sample_weight=np.ones(3)), ValueError, "sample_weight"),
    (dict(sample_weight=np.ones((2, 4))), ValueError, "sample_weight"),
]


@pytest.mark.parametrize("mode, want", [("combined", np.log(V)), ("emo", 1 - 1 / V)])
@pytest.mark.parametrize("cost", [COST, COST.tolist(), ops.convert_to_tensor(COST)],
                         ids=["numpy", "list", "tensor"])
def test_emo_loss_equals_the_formula_for_any_cost_container(mode, want, cost):
    got = float(emo_loss(LABELS, LOGITS, cost, mode=mode))
    np.testing.assert_allclose(got, want, rtol=1e-6)  # float32 arithmetic


@pytest.mark.parametrize("dtype, rtol", [("float16", 1e-3), ("bfloat16", 1e-2)])
def test_emo_loss_object_returns_its_dtype(dtype, rtol):
    out = EMOLoss(COST, ignore_index=np.int64(-100), dtype=dtype)(LABELS, LOGITS)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    np.testing.assert_allclose(float(ops.cast(out, "float32")), np.log(V), rtol=rtol)


def test_emo_ignore_index_as_numpy_integer_is_an_integer():
    labels = np.where(LABELS == 2, -100, LABELS)
    loss = EMOLoss(COST, ignore_index=np.int32(-100))
    assert loss.ignore_index == -100 and type(loss.ignore_index) is int
    np.testing.assert_allclose(float(loss(labels, LOGITS)), np.log(V), rtol=1e-6)


PRIORS = [1.0, 2.0, 3.0, 4.0]

LOGIT_ADJUSTED_BAD = [
    (dict(class_priors=[0.0, 1.0, 1.0, 1.0]), ValueError, "class_priors"),
    (dict(class_priors=[-1.0, 1.0, 1.0, 1.0]), ValueError, "class_priors"),
    (dict(class_priors=[NAN, 1.0, 1.0, 1.0]), ValueError, "class_priors"),
    (dict(class_priors=[INF, 1.0, 1.0, 1.0]), ValueError, "class_priors"),
    (dict(class_priors=[[1.0, 2.0]]), ValueError, "class_priors"),
    (dict(class_priors=[1.0]), ValueError, "class_priors"),
    (dict(class_priors=keras.KerasTensor((V,))), TypeError, "class_priors"),
    (dict(tau=-1.0), ValueError, "tau"),
    (dict(tau=NAN), ValueError, "tau"),
    (dict(tau=INF), ValueError, "tau"),
    (dict(tau="1"), TypeError, "tau"),
    (dict(tau=True), TypeError, "tau"),
    (dict(tau=None), TypeError, "tau"),
    (dict(reduction="bogus"), ValueError, "reduction"),
]


LOGIT_ADJUSTED_FUNCTION_BAD = [
    (dict(class_priors=PRIORS[:3]), ValueError, "class_priors"),
    (dict(class_priors=PRIORS + [5.0]), ValueError, "class_priors"),
    (dict(tau=-0.5), ValueError, "tau"),
    (dict(tau="0.5"), TypeError, "tau"),
    (dict(y_true=LABELS[:, :2]), ValueError, "y_true"),
    (dict(y_true=LABELS - 1), ValueError, "y_true"),
    (dict(y_true=LABELS + 0.25), ValueError, "y_true"),
]

SCORES = np.random.default_rng(0).normal(size=(2, 3, 3, 3)).astype("float32")  # GlobalPointer's
TARGETS = (SCORES > 0).astype("float32")  # (batch, heads, length, length)


def targets_with(value, targets=TARGETS[:, 0, 0]):
    return np.where(np.arange(targets.shape[-1]) == 1, value, targets)


# multi-label targets: y_pred's shape exactly (no broadcasting), values in [0, 1]
MULTILABEL_BAD = [
    (dict(y_true=targets_with(value)), ValueError, "y_true", f"target {value}")
    for value in (2.0, -1.0, 1.5, np.nan, np.inf)] + [
    (dict(y_true=TARGETS[:1, 0, 0]), ValueError, "y_true", "targets (1, classes)"),
    (dict(y_true=TARGETS[:, 0, 0, :1]), ValueError, "y_true", "targets (batch, 1)"),
    (dict(y_true=TARGETS[:, 0]), ValueError, "y_true", "targets of another rank"),
]
GLOBAL_POINTER_BAD = [
    (dict(y_true=TARGETS[..., :2]), ValueError, "y_true", "targets (..., length - 1)"),
    (dict(y_true=TARGETS[:1]), ValueError, "y_true", "targets (1, heads, length, length)"),
    (dict(y_true=TARGETS[:, :1]), ValueError, "y_true", "targets (batch, 1, length, length)"),
    (dict(y_true=TARGETS.reshape(2, 3, 9)), ValueError, "y_true", "targets flattened"),
    (dict(y_true=TARGETS * 2), ValueError, "y_true", "targets 0 or 2"),
    (dict(y_pred=SCORES[0]), ValueError, "y_pred", "scores of one example"),
]

# each class and function with its valid arguments; adjust_logits takes no labels
REFUSALS = (
    refusal_cases(EMOLoss, EMO_CLASS_BAD, {"cost_embeddings": COST})
    + refusal_cases(emo_loss, EMO_FUNCTION_BAD,
                    {"y_true": LABELS, "logits": LOGITS, "cost_embeddings": COST})
    + refusal_cases(LogitAdjustedLoss, LOGIT_ADJUSTED_BAD, {"class_priors": PRIORS})
    + refusal_cases(logit_adjusted_loss, LOGIT_ADJUSTED_FUNCTION_BAD,
                    {"y_true": LABELS, "logits": LOGITS, "class_priors": PRIORS, "tau": 1.0})
    + refusal_cases(adjust_logits, [c for c in LOGIT_ADJUSTED_FUNCTION_BAD if c[2] != "y_true"],
                    {"logits": LOGITS, "class_priors": PRIORS, "tau": 1.0})
    + refusal_cases(multilabel_categorical_crossentropy, MULTILABEL_BAD,
                    {"y_true": TARGETS[:, 0, 0], "y_pred": SCORES[:, 0, 0]})
    + refusal_cases(global_pointer_crossentropy, GLOBAL_POINTER_BAD,
                    {"y_true": TARGETS, "y_pred": SCORES}))


@pytest.mark.parametrize("loss, kwargs, error, name", REFUSALS)
def test_bad_arguments_are_refused_by_name(loss, kwargs, error, name):
    assert_refused(loss, kwargs, error, name)


@pytest.mark.parametrize("tau", [0, 1, np.float32(2.0), np.int64(3)])
def test_logit_adjusted_loss_equals_the_formula_for_numeric_taus(tau):
    priors = np.array(PRIORS) / np.sum(PRIORS)
    got = ops.convert_to_numpy(logit_adjusted_loss(LABELS, LOGITS, PRIORS, tau=tau))
    # uniform logits: softmax(τ·log π)[y] = π_y^τ / Σ π^τ
    want = -np.log(priors[LABELS] ** float(tau) / np.sum(priors ** float(tau)))
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["bool", "int32", "float16"])
def test_multilabel_targets_of_any_numeric_dtype_equal_float32_targets(dtype):
    """0/1 targets as bools or integers, and soft targets in [0, 1], give the loss of the
    float32 targets (the formula; NumPy in float64, 1e-6)."""
    want = multilabel_categorical_crossentropy(TARGETS[:, 0, 0], SCORES[:, 0, 0])
    got = multilabel_categorical_crossentropy(TARGETS[:, 0, 0].astype(dtype), SCORES[:, 0, 0])
    np.testing.assert_allclose(ops.convert_to_numpy(got), ops.convert_to_numpy(want),
                               rtol=1e-6)
    soft = np.array([[0.0, 0.25, 1.0]]), np.array([[0.5, -1.0, 2.0]])
    formula = (np.log1p(np.sum((1 - soft[0]) * np.exp(soft[1])))
               + np.log1p(np.sum(soft[0] * np.exp(-soft[1]))))
    np.testing.assert_allclose(ops.convert_to_numpy(multilabel_categorical_crossentropy(
        *soft)), [formula], rtol=1e-6)
