"""Gradient accumulation folded into the optimizer's momentum (Su 2021, "gradient accumulation
hidden in momentum"): ``k`` micro-batches act as one batch ``k`` times larger without any
accumulator variable.

With ``t`` micro-steps done so far, a cycle starts when ``t % k == 0`` and ends when
``(t + 1) % k == 0``. At a cycle start the first moment decays by ``beta_1`` (SGD: the
velocity by ``momentum``); every micro-step adds ``(1 − beta_1)·g/k`` (SGD: ``−lr·g/k``); the
weights move only at the cycle end. AdamW's second moment likewise decays at the start and
gains ``(1 − beta_2)·g²/k``. Bias correction, weight decay and learning-rate schedules count
cycles ``t // k``, not micro-steps. Gradient clipping, if any, applies to each micro-gradient.
With ``accumulation_steps=1`` both reduce exactly to ``keras.optimizers.AdamW`` / ``SGD``,
except on a sparse gradient (TensorFlow's ``tf.IndexedSlices`` from a gather, one slice per
use of a row): AdamW sums a row's slices before squaring them, the textbook update, where
Keras' optimizers square each slice. SGD is linear in the gradient and right either way.
"""

import keras
import numpy as np
from keras import ops

from keraformer.checks import is_concrete
from keraformer.embedding import dense_gradient


def check_accumulation_steps(steps):
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise TypeError(f"`accumulation_steps` must be an integer >= 1; received {steps!r} "
                        f"of type {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"`accumulation_steps` must be an integer >= 1; received {steps!r}")
    return int(steps)


def check_number(name, value, low, high=None, low_open=False, high_open=True):
    """``value`` as a Python float, or ``TypeError``/``ValueError`` naming ``name``.

    Numbers and 0-d arrays or tensors are accepted (not bools, strings or callables); the
    value must be finite and lie in the interval from ``low`` to ``high`` (``None``: no upper
    bound), each end open or closed as given.
    """
    if isinstance(value, (bool, str, bytes)) or callable(value) or value is None:
        raise TypeError(f"`{name}` must be a number; received {value!r} of type "
                        f"{type(value).__name__}")
    try:
        array = np.asarray(value if isinstance(value, (int, float, np.number, np.ndarray))
                           else ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        array = np.asarray(None)
    if array.ndim != 0 or array.dtype.kind not in "iuf":
        raise TypeError(f"`{name}` must be a number; received {value!r} of type "
                        f"{type(value).__name__}")
    number = float(array)
    above = number > low if low_open else number >= low
    below = high is None or (number < high if high_open else number <= high)
    if not (np.isfinite(number) and above and below):
        interval = (f"{'(' if low_open else '['}{low}, "
                    f"{'inf)' if high is None else str(high) + (')' if high_open else ']')}")
        raise ValueError(f"`{name}` must be a finite number in {interval}; received {value!r}")
    return number


def check_learning_rate(learning_rate):
    """A ``LearningRateSchedule`` or a callable as given; otherwise a finite float >= 0."""
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return learning_rate
    if callable(learning_rate) and not isinstance(learning_rate, keras.Variable):
        return learning_rate
    return check_number("learning_rate", learning_rate, 0.0)


def check_base_options(options):
    """The keyword arguments passed on to ``keras.optimizers.Optimizer``, checked: no
    ``decay`` (Keras would ignore it), clipping thresholds and ``loss_scale_factor`` finite and
    > 0, ``use_ema`` a bool, ``ema_momentum`` in [0, 1], ``ema_overwrite_frequency`` an
    integer >= 1, and the EMA options only with ``use_ema=True`` (Keras would ignore them)."""
    options = dict(options)
    if "decay" in options:  # Keras 3 would warn and ignore it
        raise ValueError(f"`decay` (Keras 2's learning-rate decay) is not supported; pass a "
                         f"keras.optimizers.schedules.LearningRateSchedule as `learning_rate`; "
                         f"received decay={options['decay']!r}")
    for name in ("clipnorm", "clipvalue", "global_clipnorm", "loss_scale_factor"):
        if options.get(name) is not None:
            options[name] = check_number(name, options[name], 0.0, low_open=True)
    use_ema = options.get("use_ema", False)
    if not isinstance(use_ema, (bool, np.bool_)):
        raise TypeError(f"`use_ema` must be a bool; received {use_ema!r}")
    if "ema_momentum" in options:
        options["ema_momentum"] = check_number("ema_momentum", options["ema_momentum"], 0.0,
                                               1.0, high_open=False)
    frequency = options.get("ema_overwrite_frequency")
    if frequency is not None:
        if isinstance(frequency, bool) or not isinstance(frequency, (int, np.integer)):
            raise TypeError(f"`ema_overwrite_frequency` must be None or an integer >= 1; "
                            f"received {frequency!r}")
        if frequency < 1:
            raise ValueError(f"`ema_overwrite_frequency` must be None or an integer >= 1; "
                             f"received {frequency!r}")
        options["ema_overwrite_frequency"] = int(frequency)
    ignored = [name for name, default in (("ema_momentum", 0.99),
                                          ("ema_overwrite_frequency", None))
               if options.get(name, default) != default]
    if ignored and not use_ema:
        raise ValueError(f"{ignored} only apply with `use_ema=True`; received "
                         f"use_ema={use_ema!r}")
    name = options.get("name")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"`name` must be a str; received {name!r}")
    return options


def check_weight_decay(weight_decay):
    return None if weight_decay is None else check_number("weight_decay", weight_decay, 0.0)


class FoldedAccumulation:
    """Cycle bookkeeping shared by the folded optimizers (``self.accumulation_steps``)."""

    def cycle_flags(self, dtype):
        """``(starts, ends, cycle)`` for this micro-step: whether it starts or ends a cycle,
        and the 1-based cycle number. Python values when executing eagerly (so an eager step
        runs only the branch it needs), tensors inside a traced function."""
        steps = self.accumulation_steps
        if is_concrete(self.iterations.value):
            t = int(ops.convert_to_numpy(self.iterations))
            return t % steps == 0, (t + 1) % steps == 0, float(t // steps + 1)
        t = ops.cast(self.iterations, "int32")
        return (ops.equal(t % steps, 0), ops.equal((t + 1) % steps, 0),
                ops.cast(t // steps + 1, dtype))

    @property
    def learning_rate(self):
        return self._get_current_learning_rate()

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        keras.optimizers.Optimizer.learning_rate.fset(self, check_learning_rate(learning_rate))

    def _get_current_learning_rate(self):
        schedule = self._learning_rate
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            return schedule(self._iterations // self.accumulation_steps)
        return super()._get_current_learning_rate()

    def _apply_weight_decay(self, variables):
        """Weight decay is applied in ``update_step``, once per cycle, at its end."""

    def decayed(self, variable, lr):
        """The variable after decoupled weight decay ``w − w·wd·lr`` (if it applies)."""
        if self.weight_decay is None or not self._use_weight_decay(variable):
            return ops.convert_to_tensor(variable)
        wd = ops.cast(self.weight_decay, variable.dtype)
        return ops.convert_to_tensor(variable) * (1 - wd * lr)

    def fold(self, moment, value, decay, gain, starts):
        """Assign ``moment·decay + gain·value`` at a cycle start, else add ``gain·value``.

        Inside a cycle this is one ``assign_add``. Eagerly the branch is chosen in Python;
        TensorFlow graphs assign inside the taken branch of a ``cond``; JAX needs pure
        branches, so there the decay factor is selected (1 inside a cycle).
        """
        increment = gain * value
        if isinstance(starts, bool):
            if starts:
                self.assign(moment, moment * decay + increment)
            else:
                self.assign_add(moment, increment)
        elif keras.backend.backend() == "tensorflow":
            ops.cond(starts, lambda: self.assign(moment, moment * decay + increment),
                     lambda: self.assign_add(moment, increment))
        else:
            self.assign(moment, moment * ops.where(starts, decay, ops.ones_like(decay))
                        + increment)

    def assign_at_cycle_end(self, variable, ends, updated):
        """Assign ``updated()`` to ``variable`` when the cycle ends; otherwise leave it
        untouched (branches taken as in :meth:`fold`; JAX's cond selects a value)."""
        if isinstance(ends, bool):
            if ends:
                self.assign(variable, updated())
        elif keras.backend.backend() == "tensorflow":
            ops.cond(ends, lambda: self.assign(variable, updated()), lambda: None)
        else:
            self.assign(variable, ops.cond(ends, updated,
                                           lambda: ops.convert_to_tensor(variable)))


@keras.saving.register_keras_serializable(package="keraformer")
class AdamW(FoldedAccumulation, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` with momentum-folded ``accumulation_steps`` (see module).

    Holds exactly the variables of ``keras.optimizers.AdamW``. ``amsgrad`` and Keras'
    own ``gradient_accumulation_steps`` are not supported. Arguments are checked here:
    ``learning_rate`` a finite number >= 0, a ``LearningRateSchedule`` or a callable;
    ``beta_1``, ``beta_2`` in [0, 1); ``epsilon`` > 0; ``weight_decay`` >= 0 (or None);
    ``accumulation_steps`` an integer >= 1; Keras' clipping and EMA options in range.

    Example:

        >>> import keras, numpy as np
        >>> from keraformer.optimizers import AdamW
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> model.compile(optimizer=AdamW(1e-3, accumulation_steps=4), loss="mse")
        >>> x = np.ones((16, 3), "float32")
        >>> history = model.fit(x, x[:, :1], batch_size=2, epochs=1, verbose=0)  # 8 micro-steps
        >>> int(model.optimizer.iterations)                # micro-steps; the weights moved twice
        8
    """

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, accumulation_steps=1, **kwargs):
        if not isinstance(amsgrad, (bool, np.bool_)):
            raise TypeError(f"`amsgrad` must be a bool; received {amsgrad!r}")
        if amsgrad:
            raise ValueError("`amsgrad=True` is not supported with folded accumulation")
        if kwargs.get("gradient_accumulation_steps"):
            raise ValueError("use `accumulation_steps` (folded into the moments), not "
                             "`gradient_accumulation_steps` (which adds accumulators)")
        kwargs.pop("gradient_accumulation_steps", None)
        accumulation_steps = check_accumulation_steps(accumulation_steps)
        super().__init__(learning_rate=check_learning_rate(learning_rate),
                         weight_decay=check_number("weight_decay", weight_decay, 0.0),
                         beta_1=check_number("beta_1", beta_1, 0.0, 1.0),
                         beta_2=check_number("beta_2", beta_2, 0.0, 1.0),
                         epsilon=check_number("epsilon", epsilon, 0.0, low_open=True),
                         **check_base_options(kwargs))
        self.accumulation_steps = accumulation_steps

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(dense_gradient(gradient), dtype)  # repeated rows summed before squaring
        k = self.accumulation_steps
        starts, ends, cycle = self.cycle_flags(dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.fold(m, g, beta_1, (1 - beta_1) / k, starts)
        self.fold(v, ops.square(g), beta_2, (1 - beta_2) / k, starts)

        def updated():
            alpha = lr * ops.sqrt(1 - ops.power(beta_2, cycle)) / (1 - ops.power(beta_1, cycle))
            return self.decayed(variable, lr) - m * alpha / (ops.sqrt(v) + self.epsilon)
        self.assign_at_cycle_end(variable, ends, updated)

    def get_config(self):
        config = super().get_config()
        config.pop("amsgrad", None)
        config.pop("gradient_accumulation_steps", None)
        return {**config, "accumulation_steps": self.accumulation_steps}


@keras.saving.register_keras_serializable(package="keraformer")
class SGD(FoldedAccumulation, keras.optimizers.SGD):
    """``keras.optimizers.SGD`` with momentum-folded ``accumulation_steps`` (see module).

    Needs ``momentum > 0`` when ``accumulation_steps > 1`` (the velocity is the accumulator);
    ``nesterov`` only with ``accumulation_steps=1``. Arguments are checked here:
    ``learning_rate`` a finite number >= 0, a ``LearningRateSchedule`` or a callable;
    ``momentum`` in [0, 1); ``nesterov`` a bool; ``weight_decay`` >= 0 (or None);
    ``accumulation_steps`` an integer >= 1; Keras' clipping and EMA options in range.

    Example:

        >>> import keras, numpy as np
        >>> from keraformer.optimizers import SGD
        >>> variable = keras.Variable(np.zeros(2, "float32"))
        >>> optimizer = SGD(learning_rate=0.1, momentum=0.9, accumulation_steps=2)
        >>> _ = optimizer.apply_gradients([(np.array([1.0, 1.0], "float32"), variable)])
        >>> np.asarray(variable).tolist()                  # mid-cycle: the weights wait
        [0.0, 0.0]
        >>> _ = optimizer.apply_gradients([(np.array([3.0, 3.0], "float32"), variable)])
        >>> [round(float(v), 4) for v in np.asarray(variable)]   # one step, mean gradient 2
        [-0.2, -0.2]
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, accumulation_steps=1,
                 **kwargs):
        if kwargs.get("gradient_accumulation_steps"):
            raise ValueError("use `accumulation_steps` (folded into the velocity), not "
                             "`gradient_accumulation_steps` (which adds accumulators)")
        kwargs.pop("gradient_accumulation_steps", None)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"`nesterov` must be a bool; received {nesterov!r}")
        momentum = check_number("momentum", momentum, 0.0, 1.0)
        accumulation_steps = check_accumulation_steps(accumulation_steps)
        kwargs = check_base_options(kwargs)
        kwargs["weight_decay"] = check_weight_decay(kwargs.get("weight_decay"))
        super().__init__(learning_rate=check_learning_rate(learning_rate), momentum=momentum,
                         nesterov=bool(nesterov), **kwargs)
        self.accumulation_steps = accumulation_steps
        if self.accumulation_steps > 1 and not momentum > 0:
            raise ValueError(f"`accumulation_steps` > 1 needs `momentum` > 0 to hold the "
                             f"accumulated gradient; received momentum={momentum!r}")
        if self.accumulation_steps > 1 and nesterov:
            raise ValueError("`nesterov=True` needs `accumulation_steps=1`")

    def update_step(self, gradient, variable, learning_rate):
        if self.accumulation_steps == 1:
            self.assign(variable, self.decayed(variable, ops.cast(learning_rate, variable.dtype)))
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        starts, ends, _ = self.cycle_flags(dtype)
        momentum = ops.cast(self.momentum, dtype)
        m = self.momentums[self._get_variable_index(variable)]
        self.fold(m, ops.cast(gradient, dtype), momentum, -lr / self.accumulation_steps, starts)
        self.assign_at_cycle_end(variable, ends, lambda: self.decayed(variable, lr) + m)

    def get_config(self):
        config = super().get_config()
        config.pop("gradient_accumulation_steps", None)
        return {**config, "accumulation_steps": self.accumulation_steps}
