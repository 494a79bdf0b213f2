"""Hostile optimizer arguments: each is refused where it enters, with an error naming it;
valid edge values are accepted and mean what they say."""

import keras
import numpy as np
import pytest

from keraformer.optimizers import SGD, AdamW, PiecewiseLinearSchedule, piecewise_linear
from tests.references import assert_refused, compiled, refusal_cases

NAN, INF = float("nan"), float("inf")

# (keyword arguments, error type, the argument name the message must contain)
ADAMW_BAD = [
    (dict(learning_rate=-0.1), ValueError, "learning_rate"),
    (dict(learning_rate=-1e-12), ValueError, "learning_rate"),
    (dict(learning_rate=NAN), ValueError, "learning_rate"),
    (dict(learning_rate=INF), ValueError, "learning_rate"),
    (dict(learning_rate="0.1"), TypeError, "learning_rate"),
    (dict(learning_rate=None), TypeError, "learning_rate"),
    (dict(learning_rate=True), TypeError, "learning_rate"),
    (dict(learning_rate=[0.1]), TypeError, "learning_rate"),
    (dict(learning_rate=np.array([0.1, 0.2])), TypeError, "learning_rate"),
    (dict(beta_1=1.0), ValueError, "beta_1"),
    (dict(beta_1=1.5), ValueError, "beta_1"),
    (dict(beta_1=-0.1), ValueError, "beta_1"),
    (dict(beta_1=NAN), ValueError, "beta_1"),
    (dict(beta_1="0.9"), TypeError, "beta_1"),
    (dict(beta_1=lambda: 0.9), TypeError, "beta_1"),
    (dict(beta_2=1.0), ValueError, "beta_2"),
    (dict(beta_2=-0.5), ValueError, "beta_2"),
    (dict(beta_2=INF), ValueError, "beta_2"),
    (dict(beta_2=None), TypeError, "beta_2"),
    (dict(epsilon=0), ValueError, "epsilon"),
    (dict(epsilon=-1e-7), ValueError, "epsilon"),
    (dict(epsilon=NAN), ValueError, "epsilon"),
    (dict(epsilon=INF), ValueError, "epsilon"),
    (dict(epsilon="1e-7"), TypeError, "epsilon"),
    (dict(weight_decay=-0.01), ValueError, "weight_decay"),
    (dict(weight_decay=NAN), ValueError, "weight_decay"),
    (dict(weight_decay=None), TypeError, "weight_decay"),
    (dict(weight_decay="0"), TypeError, "weight_decay"),
    (dict(accumulation_steps=0), ValueError, "accumulation_steps"),
    (dict(accumulation_steps=-2), ValueError, "accumulation_steps"),
    (dict(accumulation_steps=2.0), TypeError, "accumulation_steps"),
    (dict(accumulation_steps=True), TypeError, "accumulation_steps"),
    (dict(accumulation_steps="2"), TypeError, "accumulation_steps"),
    (dict(accumulation_steps=None), TypeError, "accumulation_steps"),
    (dict(amsgrad=True), ValueError, "amsgrad"),
    (dict(amsgrad="no"), TypeError, "amsgrad"),
    (dict(gradient_accumulation_steps=2), ValueError, "gradient_accumulation_steps"),
    (dict(clipnorm=0.0), ValueError, "clipnorm"),
    (dict(clipnorm=-1.0), ValueError, "clipnorm"),
    (dict(clipvalue=-0.5), ValueError, "clipvalue"),
    (dict(global_clipnorm=INF), ValueError, "global_clipnorm"),
    (dict(clipnorm=1.0, clipvalue=1.0), ValueError, "clipnorm"),
    (dict(loss_scale_factor=0.0), ValueError, "loss_scale_factor"),
    (dict(use_ema="yes"), TypeError, "use_ema"),
    (dict(use_ema=True, ema_momentum=1.5), ValueError, "ema_momentum"),
    (dict(use_ema=True, ema_momentum=-0.1), ValueError, "ema_momentum"),
    (dict(ema_momentum=0.5), ValueError, "use_ema"),
    (dict(use_ema=True, ema_overwrite_frequency=0), ValueError, "ema_overwrite_frequency"),
    (dict(use_ema=True, ema_overwrite_frequency=2.5), TypeError, "ema_overwrite_frequency"),
    (dict(ema_overwrite_frequency=5), ValueError, "use_ema"),
    (dict(decay=1e-4), ValueError, "decay"),
    (dict(lr=0.1), ValueError, "lr"),
    (dict(name=3), TypeError, "name"),
]

SGD_BAD = [
    (dict(learning_rate=-0.01), ValueError, "learning_rate"),
    (dict(learning_rate=NAN), ValueError, "learning_rate"),
    (dict(momentum=1.0), ValueError, "momentum"),
    (dict(momentum=1.5), ValueError, "momentum"),
    (dict(momentum=-0.1), ValueError, "momentum"),
    (dict(momentum=NAN), ValueError, "momentum"),
    (dict(momentum="0.9"), TypeError, "momentum"),
    (dict(nesterov="yes"), TypeError, "nesterov"),
    (dict(momentum=0.9, nesterov=True, accumulation_steps=2), ValueError, "nesterov"),
    (dict(momentum=0.0, accumulation_steps=2), ValueError, "momentum"),
    (dict(momentum=0.9, accumulation_steps=0), ValueError, "accumulation_steps"),
    (dict(momentum=0.9, accumulation_steps=1.5), TypeError, "accumulation_steps"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay"),
    (dict(weight_decay=INF), ValueError, "weight_decay"),
    (dict(clipvalue=0.0), ValueError, "clipvalue"),
    (dict(decay=0.01), ValueError, "decay"),
]


SCHEDULE_BAD = [
    (dict(schedule={10: -0.5}), ValueError, "schedule"),  # a negative rate ascends
    (dict(schedule=[(10, 1.0), (20, -1e-9)]), ValueError, "schedule"),
    (dict(schedule={"10": 1.0}), TypeError, "schedule"),  # keys of a JSON object
    (dict(schedule={10.0: 1.0}), TypeError, "schedule"),
    (dict(schedule={10: "1"}), TypeError, "schedule"),
    (dict(schedule={10: None}), TypeError, "schedule"),
    (dict(learning_rate="0.1"), TypeError, "learning_rate"),
    (dict(learning_rate=None), TypeError, "learning_rate"),
    (dict(from_zero="no"), TypeError, "from_zero"),
    (dict(from_zero=None), TypeError, "from_zero"),
]
STEP_BAD = [
    (dict(step=-1), ValueError, "step"),
    (dict(step=np.array([3, -2])), ValueError, "step"),
    (dict(step=NAN), ValueError, "step"),
    (dict(step=True), TypeError, "step"),
    (dict(step="3"), TypeError, "step"),
    (dict(step=None), TypeError, "step"),
    (dict(from_zero=1), TypeError, "from_zero"),
]


@pytest.mark.parametrize("optimizer, kwargs, error, name",
                         refusal_cases(AdamW, ADAMW_BAD) + refusal_cases(SGD, SGD_BAD)
                         + refusal_cases(PiecewiseLinearSchedule, SCHEDULE_BAD,
                                         {"learning_rate": 0.1, "schedule": {10: 1.0}})
                         + refusal_cases(piecewise_linear, STEP_BAD,
                                         {"step": 5, "schedule": {10: 1.0}}))
def test_bad_arguments_are_refused_by_name(optimizer, kwargs, error, name):
    assert_refused(optimizer, kwargs, error, name)


@pytest.mark.parametrize("cls", [AdamW, SGD])
@pytest.mark.parametrize("value, error", [(-1.0, ValueError), (NAN, ValueError),
                                          ("fast", TypeError)])
def test_learning_rate_setter_is_checked(cls, value, error):
    optimizer = cls(learning_rate=0.1)
    with pytest.raises(error, match="`learning_rate`"):
        optimizer.learning_rate = value
    assert float(optimizer.learning_rate) == pytest.approx(0.1)  # unchanged


@pytest.mark.parametrize("value", [1, np.float32(0.25), np.array(0.5), np.int64(2), 0.0])
def test_numeric_learning_rates_are_kept_as_given(value):
    optimizer = AdamW(learning_rate=value)
    assert float(optimizer.learning_rate) == pytest.approx(float(value))


def test_a_schedule_and_a_callable_are_accepted():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    assert AdamW(learning_rate=schedule, accumulation_steps=2)._learning_rate is schedule
    assert float(SGD(learning_rate=lambda: 0.03).learning_rate) == pytest.approx(0.03)


@pytest.mark.parametrize("kwargs", [dict(beta_1=0.0), dict(beta_2=0.0), dict(weight_decay=0.0),
                                    dict(epsilon=1e-30), dict(beta_1=np.float32(0.5))])
def test_edge_values_inside_the_ranges_are_accepted(kwargs):
    config = AdamW(**kwargs).get_config()
    for key, value in kwargs.items():
        assert config[key] == pytest.approx(float(value))


def test_zero_learning_rate_leaves_weights_unchanged():
    variable = keras.Variable(np.array([1.0, -2.0], "float32"))
    optimizer = AdamW(learning_rate=0.0, weight_decay=0.1)
    optimizer.apply_gradients([(keras.ops.ones((2,)), variable)])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), [1.0, -2.0])


@pytest.mark.parametrize("optimizer", [
    lambda: AdamW(2e-3, beta_1=0.8, use_ema=True, ema_momentum=0.9, clipnorm=1.0,
                  accumulation_steps=3),
    lambda: SGD(0.1, momentum=0.5, weight_decay=0.01, accumulation_steps=2),
    lambda: AdamW(1e-3),
], ids=["adamw-ema", "sgd", "adamw-default"])
def test_configs_round_trip_through_the_checks(optimizer):
    original = optimizer()
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(original))
    assert type(restored) is type(original)
    assert restored.get_config() == original.get_config()


def test_compiled_schedule_at_a_negative_step_is_nan():
    """A step cannot raise inside compiled code: a negative one gives a NaN rate (which
    makes the update NaN), valid steps the eager value."""
    schedule = PiecewiseLinearSchedule(0.1, {10: 1.0, 20: 0.5})
    rates = keras.ops.convert_to_numpy(compiled(schedule)(np.array([-3, 0, 5, 15, 30])))
    assert np.isnan(rates[0])
    np.testing.assert_allclose(rates[1:], [0.0, 0.05, 0.075, 0.05], rtol=1e-6)


def test_schedule_pairs_in_any_order_mean_the_same_points():
    """Each pair says where one point is, so their order does not matter (as a dict's)."""
    ordered = PiecewiseLinearSchedule(0.1, {10: 1.0, 20: 0.5})
    shuffled = PiecewiseLinearSchedule(0.1, [(20, 0.5), (10, 1.0)])
    assert shuffled.get_config() == ordered.get_config()
