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


def check_attention_inputs(q, k, v):
    """Raise ``ValueError`` unless ``q``, ``k``, ``v`` are ``(batch, length, heads, head_dim)``
    with one batch size and head count, ``k``'s head_dim equal to ``q``'s and ``v``'s length
    equal to ``k``'s (sizes unknown in a traced graph are not compared)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if len(x.shape) != 4:
            raise ValueError(f"`{name}` must have shape (batch, length, heads, head_dim); "
                             f"received shape {tuple(x.shape)}")
    (batch, _, heads, dim), length = q.shape, k.shape[1]
    for name, x, axis, what, size in (("k", k, 0, "batch size of `q`", batch),
                                      ("v", v, 0, "batch size of `q`", batch),
                                      ("k", k, 2, "number of heads of `q`", heads),
                                      ("v", v, 2, "number of heads of `q`", heads),
                                      ("k", k, 3, "head_dim of `q`", dim),
                                      ("v", v, 1, "length of `k`", length)):
        if size is not None and x.shape[axis] is not None and x.shape[axis] != size:
            raise ValueError(f"`{name}` must have the {what}, {size}, on axis {axis}; "
                             f"received shape {tuple(x.shape)}")


def check_broadcastable(name, x, axes, exact=()):
    """Raise ``ValueError`` unless ``x`` has one axis per ``(axis_name, size)`` of ``axes``,
    each of length ``size`` or 1 (exactly ``size`` for the names in ``exact``).

    Masks and biases are checked with it so that a wrong length fails here instead of being
    broadcast silently (a key mask of length 1 would mask every key or none) or failing deep
    inside the backend. Sizes unknown in a traced graph (``None``) are not compared.
    """
    shape = tuple(x.shape if hasattr(x, "shape") else np.shape(x))
    ok = len(shape) == len(axes) and all(
        got is None or size is None or got == size or (got == 1 and axis not in exact)
        for got, (axis, size) in zip(shape, axes))
    if not ok:
        target = ", ".join(f"{axis}={size}" for axis, size in axes)
        rule = "each axis of that length or 1"
        if exact:
            rule += f" ({' and '.join(exact)} exactly)"
        raise ValueError(f"`{name}` must have shape ({target}), {rule}; received shape "
                         f"{shape}")


def check_sparse_labels(y_true, logits, ignore_index=None):
    """Raise ``ValueError`` unless ``y_true`` has the shape of ``logits`` without its last
    (class) axis and, where values are available (eager), every label other than
    ``ignore_index`` lies in ``[0, logits.shape[-1])``; an out-of-range label would otherwise
    gather garbage (GPU) or fail inside the backend."""
    labels, classes = tuple(y_true.shape), logits.shape[-1]
    expected = tuple(logits.shape[:-1])
    if len(labels) != len(expected) or any(
            a is not None and b is not None and a != b for a, b in zip(labels, expected)):
        raise ValueError(f"`y_true` must be sparse labels of shape logits.shape[:-1] = "
                         f"{expected}; received shape {labels}")
    if classes is None or not is_concrete(y_true):
        return
    values = ops.convert_to_numpy(y_true)
    if ignore_index is not None:
        values = values[values != ignore_index]
    if values.size and (values.min() < 0 or values.max() >= classes):
        ignored = "" if ignore_index is None else f" or ignore_index={ignore_index}"
        raise ValueError(f"`y_true` labels must lie in [0, {classes}) (logits.shape[-1])"
                         f"{ignored}; received labels from {values.min()} to {values.max()}")


def is_real(value):
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer,
                                                               np.floating))


def check_rates(**values):
    """Raise ``TypeError``/``ValueError`` unless every keyword value is a real number in
    ``[0, 1)`` (a dropout rate: 1 would drop everything)."""
    for name, value in values.items():
        if not is_real(value):
            raise TypeError(f"`{name}` must be a number in [0, 1); received {value!r} of type "
                            f"{type(value).__name__}")
        if not 0 <= value < 1:
            raise ValueError(f"`{name}` must lie in [0, 1); received {value}")


def check_positive_numbers(**values):
    """Raise ``TypeError``/``ValueError`` unless every keyword value is a finite real number
    ``> 0`` (an epsilon, an initializer scale)."""
    for name, value in values.items():
        if not is_real(value):
            raise TypeError(f"`{name}` must be a positive number; received {value!r} of type "
                            f"{type(value).__name__}")
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` must be finite and > 0; received {value}")


def check_ids_in_vocabulary(vocab_size, **ids):
    """Raise ``TypeError``/``ValueError`` unless every keyword value is an integer id in
    ``[0, vocab_size)`` (a special token id of a config)."""
    for name, value in ids.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"`{name}` must be an integer token id; received {value!r} of "
                            f"type {type(value).__name__}")
        if not 0 <= value < vocab_size:
            raise ValueError(f"`{name}` must lie in [0, {vocab_size}) (the vocabulary size); "
                             f"received {value}")


def check_bools(**values):
    """Raise ``TypeError`` unless every keyword value is ``True`` or ``False``."""
    for name, value in values.items():
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"`{name}` must be True or False; received {value!r} of type "
                            f"{type(value).__name__}")
