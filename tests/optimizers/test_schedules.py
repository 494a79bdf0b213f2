"""PiecewiseLinearSchedule against bert4keras 0.11.5's ``piecewise_linear`` (subprocess) and
``np.interp``; the learning rate an optimizer actually uses; serialization. Float32 values,
tolerance 1e-6 relative."""

import json

import keras
import numpy as np
import pytest

from keraformer.optimizers import PiecewiseLinearSchedule, piecewise_linear
from tests.references import run_bert4keras

SCHEDULES = [({1000: 1, 2000: 0.1}, True), ({1000: 1, 2000: 0.1}, False),
             ({0: 0.5, 10: 2.0, 30: 1.0, 40: 0.0}, True), ({5: 3.0}, True), ({5: 3.0}, False)]
STEPS = [0, 1, 3, 5, 7, 10, 20, 35, 40, 41, 500, 999, 1000, 1500, 2000, 2001, 10 ** 6]

SCRIPT = r"""
import json, sys
from bert4keras.backend import K, piecewise_linear

inputs = json.load(open(sys.argv[1]))
out = []
for schedule, from_zero in inputs["schedules"]:
    schedule = {int(k): v for k, v in schedule.items()}
    out.append([float(K.eval(piecewise_linear(K.constant(t), schedule, from_zero)))
                for t in inputs["steps"]])
json.dump(out, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    results, _ = run_bert4keras(SCRIPT, {"schedules": SCHEDULES, "steps": STEPS},
                            tmp_path_factory.mktemp("b4k_schedule"))
    return results


def test_multipliers_equal_bert4keras_and_interpolation(reference):
    for (schedule, from_zero), theirs in zip(SCHEDULES, reference):
        ours = [float(piecewise_linear(t, schedule, from_zero)) for t in STEPS]
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
        points = sorted(schedule.items())
        if from_zero and points[0][0] != 0:
            points = [(0, 0.0)] + points
        xs, ys = zip(*points)
        np.testing.assert_allclose(ours, np.interp(STEPS, xs, ys), rtol=1e-6, atol=1e-7)


def test_optimizer_uses_the_scheduled_rate_at_each_iteration():
    """SGD without momentum moves w by lr(t)·g: the t-th update must use the rate at step t
    (0 for the first, as bert4keras' ``iterations``)."""
    schedule = PiecewiseLinearSchedule(0.5, {2: 1.0, 4: 0.25})
    optimizer = keras.optimizers.SGD(learning_rate=schedule)
    w = keras.Variable(np.zeros(1, "float32"))
    moves = []
    for _ in range(6):
        before = float(w.numpy()[0])
        optimizer.apply_gradients([(keras.ops.ones(1), w)])
        moves.append(before - float(w.numpy()[0]))
    np.testing.assert_allclose(moves, [0.0, 0.25, 0.5, 0.3125, 0.125, 0.125], rtol=1e-6)


def test_schedule_serializes_with_the_optimizer():
    schedule = PiecewiseLinearSchedule(2e-5, {1000: 1, 2000: 0.1}, from_zero=False)
    config = keras.optimizers.serialize(keras.optimizers.AdamW(learning_rate=schedule))
    json.dumps(config)  # JSON-safe: steps are not dict keys
    restored = keras.optimizers.deserialize(config)._learning_rate  # the schedule itself
    assert isinstance(restored, PiecewiseLinearSchedule)
    assert restored.get_config() == schedule.get_config()
    for t in (0, 500, 1500, 3000):
        np.testing.assert_allclose(float(restored(t)), float(schedule(t)), rtol=1e-6)


def test_bad_schedules_name_the_argument():
    with pytest.raises(ValueError, match="schedule"):
        PiecewiseLinearSchedule(1e-3, {})
    with pytest.raises(ValueError, match="schedule"):
        PiecewiseLinearSchedule(1e-3, {-1: 1.0})
    with pytest.raises(ValueError, match="schedule"):
        PiecewiseLinearSchedule(1e-3, {10: float("nan")})
    with pytest.raises(ValueError, match="repeat"):
        PiecewiseLinearSchedule(1e-3, [(10, 1.0), (10, 0.5)])
    with pytest.raises(TypeError, match="schedule"):
        PiecewiseLinearSchedule(1e-3, 5)
    with pytest.raises(ValueError, match="learning_rate"):
        PiecewiseLinearSchedule(-1.0, {10: 1.0})


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_follows_the_schedule_compiled_or_not(jit_compile):
    """In ``model.fit`` (a TensorFlow graph with or without XLA, JAX with or without ``jit``)
    the loss ``mean(x·w)`` with x = 1 has gradient 1, so SGD moves ``w`` by ``lr(t)`` at step
    t: after six steps by 0 + 0.25 + 0.5 + 0.3125 + 0.125 + 0.125 (np.interp, float32)."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(
        1, use_bias=False, kernel_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.SGD(PiecewiseLinearSchedule(0.5, {2: 1.0,
                                                                              4: 0.25})),
                  loss=lambda y_true, y_pred: keras.ops.mean(y_pred), jit_compile=jit_compile)
    model.fit(np.ones((6, 1), "float32"), np.zeros((6, 1), "float32"), batch_size=1,
              shuffle=False, verbose=0)
    rates = 0.5 * np.interp(np.arange(6), [0, 2, 4], [0.0, 1.0, 0.25])
    np.testing.assert_allclose(model.get_weights()[0], [[-rates.sum()]], rtol=1e-6)
