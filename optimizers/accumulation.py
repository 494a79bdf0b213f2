"""Gradient accumulation folded into the optimizer's momentum (Su 2021, "gradient accumulation
hidden in momentum"): ``k`` micro-batches act as one batch ``k`` times larger without any
accumulator variable.

With ``t`` micro-steps done so far, a cycle starts when ``t % k == 0`` and ends when
``(t + 1) % k == 0``. At a cycle start the first moment decays by ``beta_1`` (SGD: the
velocity by ``momentum``); every micro-step adds ``(1 − beta_1)·g/k`` (SGD: ``−lr·g/k``); the
weights move only at the cycle end. AdamW's second moment likewise decays at the start and
gains ``(1 − beta_2)·g²/k``. Bias correction, weight decay and learning-rate schedules count
cycles ``t // k``, not micro-steps. Gradient clipping, if any, applies to each micro-gradient.
With ``accumulation_steps=1`` both reduce exactly to ``keras.optimizers.AdamW`` / ``SGD``.
"""

import keras
from keras import ops


def check_accumulation_steps(steps):
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`accumulation_steps` must be an integer >= 1; received {steps!r}")
    return steps


class FoldedAccumulation:
    """Cycle bookkeeping shared by the folded optimizers (``self.accumulation_steps``)."""

    def cycle_flags(self, dtype):
        """``(starts, ends, cycle)``: 1.0/0.0 flags for this micro-step and the 1-based cycle."""
        steps = self.accumulation_steps
        t = ops.cast(self.iterations, "int32")
        starts = ops.cast(ops.equal(t % steps, 0), dtype)
        ends = ops.cast(ops.equal((t + 1) % steps, 0), dtype)
        cycle = ops.cast(t // steps + 1, dtype)
        return starts, ends, cycle

    def _get_current_learning_rate(self):
        schedule = self._learning_rate
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            return schedule(self._iterations // self.accumulation_steps)
        return super()._get_current_learning_rate()

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None:
            return
        for variable in variables:
            if self._use_weight_decay(variable):
                _, ends, _ = self.cycle_flags(variable.dtype)
                lr = ops.cast(self.learning_rate, variable.dtype)
                wd = ops.cast(self.weight_decay, variable.dtype)
                variable.assign(variable - variable * wd * lr * ends)


@keras.saving.register_keras_serializable(package="keraformer")
class AdamW(FoldedAccumulation, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` with momentum-folded ``accumulation_steps`` (see module).

    Holds exactly the variables of ``keras.optimizers.AdamW``. ``amsgrad`` and Keras'
    own ``gradient_accumulation_steps`` are not supported.
    """

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, accumulation_steps=1, **kwargs):
        if amsgrad:
            raise ValueError("`amsgrad=True` is not supported with folded accumulation")
        if kwargs.get("gradient_accumulation_steps"):
            raise ValueError("use `accumulation_steps` (folded into the moments), not "
                             "`gradient_accumulation_steps` (which adds accumulators)")
        kwargs.pop("gradient_accumulation_steps", None)
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay,
                         beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, **kwargs)
        self.accumulation_steps = check_accumulation_steps(accumulation_steps)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype) / self.accumulation_steps
        starts, ends, cycle = self.cycle_flags(dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        decay_1 = 1 - starts * (1 - beta_1)  # beta_1 at a cycle start, 1 inside the cycle
        decay_2 = 1 - starts * (1 - beta_2)
        self.assign(m, m * decay_1 + (1 - beta_1) * g)
        self.assign(v, v * decay_2 + (1 - beta_2) * ops.square(g) * self.accumulation_steps)
        alpha = lr * ops.sqrt(1 - ops.power(beta_2, cycle)) / (1 - ops.power(beta_1, cycle))
        self.assign_sub(variable, ends * m * alpha / (ops.sqrt(v) + self.epsilon))

    def get_config(self):
        config = super().get_config()
        config.pop("amsgrad", None)
        config.pop("gradient_accumulation_steps", None)
        return {**config, "accumulation_steps": self.accumulation_steps}


@keras.saving.register_keras_serializable(package="keraformer")
class SGD(FoldedAccumulation, keras.optimizers.SGD):
    """``keras.optimizers.SGD`` with momentum-folded ``accumulation_steps`` (see module).

    Needs ``momentum > 0`` when ``accumulation_steps > 1`` (the velocity is the accumulator);
    ``nesterov`` only with ``accumulation_steps=1``.
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, accumulation_steps=1,
                 **kwargs):
        if kwargs.get("gradient_accumulation_steps"):
            raise ValueError("use `accumulation_steps` (folded into the velocity), not "
                             "`gradient_accumulation_steps` (which adds accumulators)")
        kwargs.pop("gradient_accumulation_steps", None)
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                         **kwargs)
        self.accumulation_steps = check_accumulation_steps(accumulation_steps)
        if self.accumulation_steps > 1 and not momentum > 0:
            raise ValueError(f"`accumulation_steps` > 1 needs `momentum` > 0 to hold the "
                             f"accumulated gradient; received momentum={momentum!r}")
        if self.accumulation_steps > 1 and nesterov:
            raise ValueError("`nesterov=True` needs `accumulation_steps=1`")

    def update_step(self, gradient, variable, learning_rate):
        if self.accumulation_steps == 1:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype) / self.accumulation_steps
        starts, ends, _ = self.cycle_flags(dtype)
        momentum = ops.cast(self.momentum, dtype)
        m = self.momentums[self._get_variable_index(variable)]
        self.assign(m, m * (1 - starts * (1 - momentum)) - lr * g)
        self.assign_add(variable, ends * m)

    def get_config(self):
        config = super().get_config()
        config.pop("gradient_accumulation_steps", None)
        return {**config, "accumulation_steps": self.accumulation_steps}
