"""Input validation shared by layers and builders: clear errors instead of silent gathers."""

import keras
import numpy as np
from keras import ops


def is_concrete(x):
    """True when ``x`` holds values now (eager execution), False inside a traced graph."""
    if isinstance(x, keras.KerasTensor):
        return False
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        return tf.executing_eagerly()
    if backend == "jax":
        import jax
        return not isinstance(x, jax.core.Tracer)
    return True


def check_token_ids(token_ids, vocab_size, name="token_ids"):
    """Raise ``ValueError`` if eager ``token_ids`` fall outside ``[0, vocab_size)``.

    On GPU an out-of-range gather silently returns zeros, so this is checked wherever values
    are available; traced graphs skip the check.
    """
    if not is_concrete(token_ids):
        return
    values = ops.convert_to_numpy(token_ids)
    if values.size and (values.max() >= vocab_size or values.min() < 0):
        raise ValueError(f"`{name}` must lie in [0, {vocab_size}) (the vocabulary size); "
                         f"received ids from {values.min()} to {values.max()}")


def check_choice(name, value, choices):
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {sorted(choices)}; received {value!r}")
    return value


def check_positive_ints(**values):
    """Raise ``TypeError``/``ValueError`` unless every keyword value is an integer >= 1."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"`{name}` must be an integer; received {value!r} of type "
                            f"{type(value).__name__}")
        if value < 1:
            raise ValueError(f"`{name}` must be >= 1; received {value}")
