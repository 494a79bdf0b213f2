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
    if values.dtype.kind == "f" and not np.all(values == np.floor(values)):
        fractional = values[values != np.floor(values)]
        raise ValueError(f"`{name}` must be whole numbers (integer ids); received "
                         f"{fractional.size} fractional values such as {fractional.flat[0]}")
    if values.size and (values.max() >= vocab_size or values.min() < 0):
        raise ValueError(f"`{name}` must lie in [0, {vocab_size}) (the vocabulary size); "
                         f"received ids from {values.min()} to {values.max()}")


def guard_ids(ids, size, name="token_ids", ignore_index=None):
    """``(safe_ids, valid)``: ids (int32) that are safe to gather with and a boolean tensor,
    ``True`` where ``ids`` is an integer in ``[0, size)`` (or equals ``ignore_index``).

    Callers gather with ``safe_ids`` (invalid ids replaced by 0) and then set the invalid
    positions to NaN with ``valid``, so a bad id never yields a plausible value, whatever the
    backend's gather does with it (TensorFlow wraps negative ids and, under XLA, clamps;
    GPUs return zeros). Errors are raised where the backend can raise one: eagerly a
    ``ValueError`` naming ``name``; in a TensorFlow graph without XLA an assertion fails with
    ``InvalidArgumentError`` naming it (XLA ignores assertions; JAX has none in traced code).
    """
    ids = ops.convert_to_tensor(ids)
    check_token_ids(ids if ignore_index is None else ops.where(
        ops.equal(ids, ignore_index), 0, ids), size, name)
    valid = ops.logical_and(ops.greater_equal(ids, 0), ops.less(ids, size))
    if "float" in keras.backend.standardize_dtype(ids.dtype):
        valid = ops.logical_and(valid, ops.equal(ids, ops.floor(ids)))
    if ignore_index is not None:
        valid = ops.logical_or(valid, ops.equal(ids, ignore_index))
    allowed = "" if ignore_index is None else f" or ignore_index={ignore_index}"
    valid = graph_assert(valid, ids, f"`{name}` must be integers in [0, {size}){allowed}")
    safe = ops.where(valid, ops.cast(ids, "int32"), 0)
    if ignore_index is not None:
        safe = ops.where(ops.equal(ids, ignore_index), 0, safe)
    return safe, valid


def graph_assert(valid, values, message):
    """``valid`` (boolean, ``True`` where ``values`` are acceptable; it may lack trailing axes
    of ``values``), made to fail with ``message`` and the bad values in a TensorFlow graph
    without XLA (``InvalidArgumentError``). Elsewhere it is returned as is: eager callers have
    raised already, and compiled code (XLA, JAX ``jit``) cannot raise, so callers turn the
    outputs that depend on an invalid entry into NaN with ``valid``."""
    if keras.backend.backend() != "tensorflow" or is_concrete(valid):
        return valid
    import tensorflow as tf

    scalar = valid.shape.rank == 0  # boolean_mask takes no scalar mask
    bad = tf.boolean_mask(values[None] if scalar else values,
                          tf.logical_not(valid[None] if scalar else valid))
    check = tf.debugging.Assert(tf.reduce_all(valid), [
        f"{message}; received invalid values", bad], summarize=8)
    with tf.control_dependencies([check]):
        return tf.identity(valid)


def guard_values(values, valid, name, expected):
    """``valid`` after the checks the backend can run on it, for values that are not ids
    (targets in [0, 1], one-hot rows): like :func:`guard_ids`, eagerly a ``ValueError``
    "`name` must be expected" showing a bad entry, in a TensorFlow graph without XLA an
    assertion naming it, and in compiled code nothing: the caller makes the outputs that
    depend on an invalid entry NaN with the returned ``valid``."""
    if is_concrete(valid):
        ok = np.asarray(ops.convert_to_numpy(valid), bool)
        if not ok.all():
            bad = np.asarray(ops.convert_to_numpy(values))[~ok]
            raise ValueError(f"`{name}` must be {expected}; received {int((~ok).sum())} "
                             f"invalid entries such as {bad[0]}")
        return valid
    return graph_assert(valid, values, f"`{name}` must be {expected}")


def integer_id(value, name="token_id"):
    """``value`` as a Python int, or ``TypeError`` naming ``name``: integers, NumPy integers
    and 0-d integer arrays or tensors are ids; bools, floats (even whole ones) and strings are
    not, so no id is silently truncated."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be an integer id; received the bool {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, str):
        try:
            array = np.asarray(ops.convert_to_numpy(value))
        except (TypeError, ValueError):
            array = None
        if array is not None and array.ndim == 0 and array.dtype.kind in "iu":
            return int(array)
    raise TypeError(f"`{name}` must be an integer id; received {value!r} of type "
                    f"{type(value).__name__}")


def integer_ids(ids, vocab_size=None, name="token_ids"):
    """``ids`` (a list, tuple, 1-D array or tensor of integer ids) as a list of Python ints.

    ``TypeError`` for a string, a non-sequence or non-integer ids (floats, bools), naming the
    first bad entry as ``name[i]``; ``ValueError`` for more than one axis and, when
    ``vocab_size`` is given, for an id outside ``[0, vocab_size)``.
    """
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__") and not hasattr(
            ids, "shape"):
        raise TypeError(f"`{name}` must be a sequence of integer ids; received "
                        f"{type(ids).__name__}")
    if hasattr(ids, "shape") and hasattr(ids, "dtype"):
        array = np.asarray(ops.convert_to_numpy(ids))
        if array.ndim != 1:
            raise ValueError(f"`{name}` must be one sequence of ids (1-D); received shape "
                             f"{array.shape}")
        if array.size and array.dtype.kind not in "iu":
            raise TypeError(f"`{name}` must be integer ids; received dtype {array.dtype}")
        values = array.astype("int64").tolist()
    else:
        values = [integer_id(value, f"{name}[{i}]") for i, value in enumerate(ids)]
    if vocab_size is not None:
        for i, value in enumerate(values):
            if not 0 <= value < vocab_size:
                raise ValueError(f"`{name}[{i}]` must lie in [0, {vocab_size}) (the vocabulary "
                                 f"size); received {value}")
    return values


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
        loose = [axis for axis, _ in axes if axis not in exact]
        rule = ", each axis of that length or 1" if loose else ""
        if exact and loose:
            rule += f" ({' and '.join(exact)} exactly)"
        raise ValueError(f"`{name}` must have shape ({target}){rule}; received shape "
                         f"{shape}")


def check_shape(name, x, axes):
    """Raise ``ValueError`` unless ``x`` has exactly the shape of ``axes`` (``(axis_name,
    size)`` pairs; no axis of length 1 stands for another length): a mask or target that
    would broadcast is refused. Sizes unknown in a traced graph (``None``) are not compared."""
    check_broadcastable(name, x, axes, exact=tuple(axis for axis, _ in axes))


def check_sparse_labels(y_true, logits, ignore_index=None, scores="logits", counted=None):
    """Raise ``ValueError`` unless ``y_true`` has the shape of ``logits`` without its last
    (class) axis and, where values are available (eager), every label other than
    ``ignore_index`` (and, given a boolean ``counted`` of ``y_true``'s shape, every label where
    it is ``True``) lies in ``[0, logits.shape[-1])``; an out-of-range label would otherwise
    gather garbage (GPU) or fail inside the backend. ``scores`` names ``logits`` in messages."""
    labels, classes = tuple(y_true.shape), logits.shape[-1]
    expected = tuple(logits.shape[:-1])
    if len(labels) != len(expected) or any(
            a is not None and b is not None and a != b for a, b in zip(labels, expected)):
        raise ValueError(f"`y_true` must be sparse labels of shape {scores}.shape[:-1] = "
                         f"{expected}; received shape {labels}")
    if classes is None or not is_concrete(y_true):
        return
    values = ops.convert_to_numpy(y_true)
    if counted is not None:
        values = values[np.asarray(ops.convert_to_numpy(counted), bool)]
    if ignore_index is not None:
        values = values[values != ignore_index]
    if values.size and (values.min() < 0 or values.max() >= classes):
        ignored = "" if ignore_index is None else f" or ignore_index={ignore_index}"
        raise ValueError(f"`y_true` labels must lie in [0, {classes}) ({scores}.shape[-1])"
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


def check_non_negative_number(value, name, where=""):
    """Raise ``TypeError``/``ValueError`` unless ``value`` is a finite real number ``>= 0``
    (a learning rate, a schedule's multiplier). ``name`` is the message's subject, ``where``
    is appended to it (e.g. ``" at step 10"``)."""
    if not is_real(value):
        raise TypeError(f"{name} must be a finite number >= 0; received {value!r} of type "
                        f"{type(value).__name__}{where}")
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0; received {value!r}{where}")


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


def id_array(value, name):
    """``value`` (nested lists, a NumPy array or a concrete tensor) as a NumPy array of ids
    ``(batch, length)`` with ``batch, length >= 1``, or an error naming ``name``: a ragged
    list, strings, booleans, objects and fractional floats are refused (a whole float such
    as ``7.0`` is an id; ``7.9`` is never cut to ``7``)."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"`{name}` must be a (batch, length) array of integer ids; received "
                        f"the {type(value).__name__} {value!r:.40}")
    try:
        array = np.asarray(ops.convert_to_numpy(value) if hasattr(value, "shape") and
                           hasattr(value, "dtype") else value)
    except ValueError:  # NumPy refuses an inhomogeneous nesting
        raise ValueError(f"`{name}` must be a rectangular (batch, length) array of integer "
                         f"ids; received a ragged nested list (rows of different lengths): "
                         f"pad the rows to one length, e.g. with "
                         f"keraformer.data.sequence_padding") from None
    if array.dtype.kind not in "iuf":
        raise TypeError(f"`{name}` must hold integer ids; received dtype {array.dtype}"
                        + (" (strings: encode the text with a tokenizer first)"
                           if array.dtype.kind in "USO" else ""))
    if array.ndim != 2:
        raise ValueError(f"`{name}` must have shape (batch, length); received shape "
                         f"{array.shape}")
    if 0 in array.shape:
        axis = "batch size" if array.shape[0] == 0 else "length"
        raise ValueError(f"`{name}` must hold at least one sequence of at least one id; "
                         f"received shape {array.shape} ({axis} 0)")
    if array.dtype.kind == "f":
        fractional = array[array != np.floor(array)]
        if fractional.size:
            raise ValueError(f"`{name}` must be whole numbers (integer ids); received "
                             f"{fractional.size} fractional values such as "
                             f"{fractional.flat[0]}")
    return array


def check_model_inputs(inputs, names, same_length=(), max_lengths=None):
    """The inputs of a model that takes id arrays, checked before Keras casts them to int32.

    ``names``: one argument name per model input (``token_ids``, ``segment_ids``); a list
    or tuple of inputs must have one entry per name (a single array when there is one).
    Values that are available (NumPy arrays, nested lists, eager tensors) go through
    :func:`id_array`; every input must have the same batch size, the inputs named in
    ``same_length`` the same length, and an input named in ``max_lengths`` (``{name:
    limit}``) at most ``limit`` ids. Traced tensors are checked on their static shapes, and
    fractional float ids in them become ``-1``, which the embedding refuses (a graph
    assertion, or NaN under XLA/JAX ``jit``) instead of the cast truncating them. Returns the
    inputs, with nested lists as NumPy arrays. Other structures (a dict) pass unchanged."""
    if isinstance(inputs, dict):
        return inputs
    single = not isinstance(inputs, (list, tuple))
    values = [inputs] if single else list(inputs)
    if single and len(names) > 1 or len(values) != len(names):
        raise ValueError(f"the model takes [{', '.join(names)}] ({len(names)} input"
                         f"{'s' if len(names) > 1 else ''}); received "
                         f"{'a single array' if single else f'{len(values)} inputs'}")
    shapes = []
    for i, (value, name) in enumerate(zip(values, names)):
        if isinstance(value, keras.KerasTensor):
            pass
        elif not hasattr(value, "shape") or is_concrete(value):
            value = id_array(value, name)
        elif "float" in keras.backend.standardize_dtype(value.dtype):
            value = ops.where(ops.equal(value, ops.floor(value)), value, -1.0)
        values[i] = value
        shapes.append(tuple(value.shape))
    for name, shape in zip(names, shapes):
        if len(shape) != 2:
            raise ValueError(f"`{name}` must have shape (batch, length); received shape "
                             f"{shape}")
        limit = (max_lengths or {}).get(name)
        if limit is not None and shape[1] is not None and shape[1] > limit:
            raise ValueError(f"`{name}` has length {shape[1]}, above the model's limit of "
                             f"{limit} positions (max_position_embeddings); cut the input "
                             f"to {limit} ids or build with hierarchical_position=True")
    first_name, first = names[0], shapes[0]
    for name, shape in zip(names[1:], shapes[1:]):
        if None not in (first[0], shape[0]) and shape[0] != first[0]:
            raise ValueError(f"`{name}` must have the batch size of `{first_name}`, "
                             f"{first[0]}; received shape {shape} (no broadcasting)")
    lengths = {name: shape[1] for name, shape in zip(names, shapes) if name in same_length}
    known = {name: length for name, length in lengths.items() if length is not None}
    if len(set(known.values())) > 1:
        raise ValueError(f"{' and '.join(f'`{n}`' for n in known)} must have one length; "
                         f"received lengths {known}")
    if single:
        return values[0]
    return list(values) if isinstance(inputs, list) else tuple(values)


class ReadOnlyTargetError(PermissionError, ValueError):
    """A save would replace a read-only file (a ``PermissionError`` and a ``ValueError``)."""


def check_save_path(path, name="directory"):
    """``path`` as a str, or ``TypeError``/``ValueError`` naming ``name``: a save target must
    be a non-empty path (``""`` would write into the working directory's parent, or fail
    with a bare ``FileNotFoundError: ''``)."""
    import os

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a path (str or os.PathLike); received {path!r} of "
                        f"type {type(path).__name__}")
    path = os.fspath(path)
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"`{name}` must be a non-empty path; received {path!r}")
    return path


def check_not_read_only(path):
    """Raise :class:`ReadOnlyTargetError` naming ``path`` when it is an existing regular file
    without any write permission bit: a save renames a new file over its target, which would
    silently replace a file its owner protected (and drop its mode). Mode bits are read, not
    ``os.access``, so the refusal holds for root too. Symlinks are replaced, never written
    through, and are not refused."""
    import os
    import stat

    if os.path.islink(path) or not os.path.isfile(path):
        return
    if not os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise ReadOnlyTargetError(f"cannot save over {path!r}: the file is read-only "
                                  f"(mode {stat.filemode(os.stat(path).st_mode)}); make it "
                                  f"writable (chmod u+w) or save somewhere else")


def check_mapping_keys(mapping, where, **types):
    """Raise ``ValueError`` naming ``where`` (a file) unless ``mapping`` is a dict holding
    every keyword key with a value of the given type (e.g. ``options=dict``)."""
    if not isinstance(mapping, dict):
        raise ValueError(f"{where!r} must hold a JSON object; it holds a "
                         f"{type(mapping).__name__}")
    for key, kind in types.items():
        if key not in mapping:
            raise ValueError(f"{where!r} lacks the key {key!r} (expected keys "
                             f"{sorted(types)}; it holds {sorted(mapping)})")
        if not isinstance(mapping[key], kind):
            raise ValueError(f"{where!r}: {key!r} must be a {kind.__name__}; received "
                             f"{type(mapping[key]).__name__} {mapping[key]!r:.60}")
