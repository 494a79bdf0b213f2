"""Logit adjustment (Menon et al. 2021) against NumPy references of its formulas."""

import keras
import numpy as np
import pytest
from keras import ops

from keraformer.losses import LogitAdjustedLoss, adjust_logits, logit_adjusted_loss

TOL = 1e-6


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_adjusted_ce(y, logits, priors, tau):
    pi = np.asarray(priors, "float64") / np.sum(priors)
    log_probs = np_log_softmax(logits.astype("float64") + tau * np.log(pi))
    return -np.take_along_axis(log_probs, y[..., None], -1)[..., 0]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return dict(logits=rng.normal(size=(6, 4, 5)).astype("float32") * 3,
                y=rng.integers(0, 5, size=(6, 4)),
                counts=np.array([500, 120, 30, 7, 1]))


@pytest.mark.parametrize("tau", [0.0, 1.0, 1.7])
def test_loss_equals_formula_for_counts_and_probabilities(data, tau):
    want = np_adjusted_ce(data["y"], data["logits"], data["counts"], tau)
    for priors in (data["counts"], data["counts"] / data["counts"].sum()):
        got = logit_adjusted_loss(data["y"], data["logits"], priors, tau=tau)
        np.testing.assert_allclose(ops.convert_to_numpy(got), want, rtol=TOL, atol=TOL)


def test_uniform_priors_give_plain_sparse_cross_entropy(data):
    got = logit_adjusted_loss(data["y"], data["logits"], [3, 3, 3, 3, 3], tau=2.0)
    want = -np.take_along_axis(np_log_softmax(data["logits"].astype("float64")),
                               data["y"][..., None], -1)[..., 0]
    np.testing.assert_allclose(ops.convert_to_numpy(got), want, rtol=TOL, atol=TOL)


def test_adjust_logits_formula_and_uniform_priors_keep_predictions(data):
    got = ops.convert_to_numpy(adjust_logits(data["logits"], data["counts"], tau=0.5))
    pi = data["counts"] / data["counts"].sum()
    np.testing.assert_allclose(got, data["logits"] - 0.5 * np.log(pi), rtol=TOL, atol=1e-5)
    uniform = ops.convert_to_numpy(adjust_logits(data["logits"], np.full(5, 0.2), tau=1.0))
    np.testing.assert_array_equal(uniform.argmax(-1), data["logits"].argmax(-1))


def test_post_hoc_adjustment_favours_rare_classes(data):
    """With skewed priors, predictions move towards the rare classes, never the other way."""
    before = data["logits"].argmax(-1)
    after = ops.convert_to_numpy(adjust_logits(data["logits"], data["counts"])).argmax(-1)
    assert np.all(after >= before)  # classes are ordered from frequent to rare
    assert np.any(after > before)


@pytest.mark.parametrize("priors, message", [
    ([1.0, 0.0, 2.0, 1.0, 1.0], "strictly positive"),
    ([1.0, -3.0, 2.0, 1.0, 1.0], "strictly positive"),
    ([1.0, np.nan, 2.0, 1.0, 1.0], "finite"),
    ([[1.0, 2.0]], "vector"),
    ([1.0, 2.0, 3.0], "one entry per class"),
])
def test_bad_priors_raise_clear_errors(data, priors, message):
    with pytest.raises(ValueError, match="class_priors") as info:
        logit_adjusted_loss(data["y"], data["logits"], priors)
    assert message in str(info.value)
    with pytest.raises(ValueError, match="class_priors"):
        adjust_logits(data["logits"], priors)


def test_bad_tau_and_loss_object_priors_raise(data):
    with pytest.raises(ValueError, match="tau"):
        logit_adjusted_loss(data["y"], data["logits"], data["counts"], tau=-1.0)
    with pytest.raises(ValueError, match="class_priors"):
        LogitAdjustedLoss([0, 1])


def test_loss_object_compile_fit_evaluate_and_round_trip(data):
    loss = LogitAdjustedLoss(data["counts"], tau=1.5)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, LogitAdjustedLoss)
    assert restored.get_config() == loss.get_config()

    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.integers(0, 5, size=16)
    weights = rng.random(16).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5)])
    model.compile(optimizer="sgd", loss=restored)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    evaluated = model.evaluate(x, y, sample_weight=weights, batch_size=16, verbose=0)
    per_example = np_adjusted_ce(y, model.predict(x, verbose=0), data["counts"], 1.5)
    np.testing.assert_allclose(evaluated, (per_example * weights).mean(), rtol=1e-5)
