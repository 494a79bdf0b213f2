"""Optimizers with momentum-folded gradient accumulation, and recompute for activations."""

from keraformer.optimizers.accumulation import SGD, AdamW
from keraformer.optimizers.recompute import recompute_grad
from keraformer.optimizers.schedules import PiecewiseLinearSchedule, piecewise_linear
