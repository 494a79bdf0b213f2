"""Piecewise-linear learning-rate schedule: bert4keras' ``extend_with_piecewise_linear_lr``
as a ``keras.optimizers.schedules.LearningRateSchedule`` that any Keras optimizer takes.

``schedule`` maps steps to multipliers of ``learning_rate``, e.g. ``{1000: 1, 2000: 0.1}``:
linear warm-up from 0 to the full rate over the first 1000 steps, linear decay to a tenth of
it by step 2000, then constant. Between two points the multiplier is interpolated linearly;
before the first point it is the first point's value (with ``from_zero=True``, the default, a
point ``(0, 0.0)`` is added when the schedule does not start at 0); after the last, the last
value. The step is the optimizer's ``iterations`` (0 for the first update), as in bert4keras.
Multipliers are finite and >= 0 (a negative one would ascend the gradient); a negative step
raises eagerly and gives a NaN rate in compiled code (``keraformer.checks.guard_values``).
"""

import numbers

import keras
from keras import ops

from keraformer.checks import check_bools, check_non_negative_number, guard_values


def schedule_points(schedule, from_zero=True):
    """Sorted ``[(step, multiplier), ...]`` of a dict or pairs, checked, ``(0, 0.0)`` added
    first when ``from_zero`` and the schedule does not start at step 0."""
    check_bools(from_zero=from_zero)
    items = list(schedule.items()) if isinstance(schedule, dict) else schedule
    try:
        points = [(step, value) for step, value in items]
    except (TypeError, ValueError):
        raise TypeError(f"`schedule` must be a dict {{step: multiplier}} or a list of (step, "
                        f"multiplier) pairs; received {schedule!r}") from None
    if not points:
        raise ValueError("`schedule` must hold at least one (step, multiplier) point")
    for step, value in points:
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"`schedule` steps must be integers >= 0; received {step!r} of "
                            f"type {type(step).__name__}")
        if step < 0:
            raise ValueError(f"`schedule` steps must be integers >= 0; received {step!r}")
        check_non_negative_number(value, "a `schedule` multiplier", f" at step {step}")
    steps = [int(step) for step, _ in points]
    if len(set(steps)) != len(steps):
        raise ValueError(f"`schedule` must not repeat a step; received steps {steps}")
    points = sorted((int(step), float(value)) for step, value in points)
    if from_zero and points[0][0] != 0:
        points = [(0, 0.0)] + points
    return points


def piecewise_linear(step, schedule, from_zero=True):
    """The multiplier of ``schedule`` at ``step`` (a scalar tensor or number), float32.

    Example:

        >>> from keraformer.optimizers import piecewise_linear
        >>> schedule = {1000: 1.0, 2000: 0.1}               # warm up to 1, decay to 0.1, then hold
        >>> [round(float(piecewise_linear(step, schedule)), 4) for step in (0, 500, 1500, 5000)]
        [0.0, 0.5, 0.55, 0.1]
    """
    points = schedule_points(schedule, from_zero)
    try:
        step = ops.convert_to_tensor(step)
    except (TypeError, ValueError):
        step = None
    dtype = keras.backend.standardize_dtype(step.dtype) if step is not None else "none"
    if "int" not in dtype and "float" not in dtype:
        raise TypeError(f"`step` must be a number or a numeric tensor (an optimizer's "
                        f"iterations); received dtype {dtype}")
    t = ops.cast(step, "float32")
    counted = guard_values(t, ops.greater_equal(t, 0.0), "step",
                           "a number >= 0 (an optimizer's iterations)")
    value = ops.cast(points[0][1], "float32") + 0.0 * t
    for i, (start, level) in enumerate(points):
        if i + 1 < len(points):
            end, following = points[i + 1]
            segment = level + (following - level) / (end - start) * (t - start)
        else:
            segment = level + 0.0 * t
        value = ops.where(ops.greater_equal(t, start), segment, value)
    return ops.where(counted, value, float("nan"))


@keras.saving.register_keras_serializable(package="keraformer")
class PiecewiseLinearSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``learning_rate × piecewise_linear(step, schedule)`` (see the module docstring).

    ``keras.optimizers.AdamW(learning_rate=PiecewiseLinearSchedule(2e-5, {1000: 1, 2000:
    0.1}))`` is bert4keras' ``extend_with_piecewise_linear_lr(AdamW)(learning_rate=2e-5,
    lr_schedule={1000: 1, 2000: 0.1})``.

    Example:

        >>> import keras
        >>> from keraformer.optimizers import PiecewiseLinearSchedule
        >>> schedule = PiecewiseLinearSchedule(2e-5, {1000: 1, 2000: 0.1})
        >>> optimizer = keras.optimizers.AdamW(learning_rate=schedule)
        >>> round(float(schedule(500)), 8)
        1e-05
    """

    def __init__(self, learning_rate, schedule, from_zero=True):
        check_non_negative_number(learning_rate, "`learning_rate`")
        self.learning_rate = float(learning_rate)
        check_bools(from_zero=from_zero)
        self.points = schedule_points(schedule, from_zero=False)
        self.from_zero = bool(from_zero)

    def __call__(self, step):
        return self.learning_rate * piecewise_linear(step, self.points, self.from_zero)

    def get_config(self):
        return {"learning_rate": self.learning_rate,
                "schedule": [[step, value] for step, value in self.points],
                "from_zero": self.from_zero}
