"""Recompute ("gradient checkpointing"; Chen et al. 2016, "Training Deep Nets with Sublinear
Memory Cost"): keep only a block's inputs in the forward pass and recompute its activations
during the backward pass, trading about one extra forward for activation memory.

Built on ``keras.remat`` (``tf.recompute_grad`` on TensorFlow, ``jax.checkpoint`` on JAX).
Random ops (dropout) draw the same numbers in the recomputation as in the forward pass: the
non-trainable state of the layers involved (seed-generator states) is saved before the forward
pass and restored before the recomputation, so gradients are exactly those without recompute.
"""

import functools

import keras


def recompute_grad(fn):
    """Wrap ``fn`` so that its intermediate activations are recomputed in the backward pass.

    ``fn`` is a layer, a layer's bound method, or a function of tensors; the wrapper has its
    signature and outputs. Called on tensors (eager, or inside a layer's ``call`` during
    ``fit``), it runs ``fn`` under ``keras.remat``: only floating positional arguments are
    differentiated inputs, other arguments (masks, flags, ``training``) are bound as
    constants. Called on symbolic ``KerasTensor`` inputs (building a functional model), it
    calls ``fn`` and makes every weighted layer that ``fn`` applied between those inputs and
    its outputs recompute its own call when the model runs (a per-layer checkpoint).

    Example:

        >>> import keras, numpy as np
        >>> from keraformer.optimizers import recompute_grad
        >>> dense = keras.layers.Dense(4, activation="gelu")
        >>> inputs = keras.Input((8,))
        >>> outputs = recompute_grad(dense)(inputs)       # recomputed in the backward pass
        >>> model = keras.Model(inputs, outputs)
        >>> tuple(model(np.ones((2, 8), "float32")).shape)
        (2, 4)
    """

    @functools.wraps(fn)
    def call(*args, **kwargs):
        inputs = [x for x in keras.tree.flatten((args, kwargs)) if is_symbolic(x)]
        if inputs:
            outputs = fn(*args, **kwargs)
            for layer in layers_between(inputs, outputs):
                recompute_layer_call(layer)
            return outputs
        return rematerialized_call(fn, owner_layers(fn), args, kwargs)

    return call


def is_symbolic(value):
    return isinstance(value, keras.KerasTensor)


def is_floating(value):
    dtype = getattr(value, "dtype", None)
    return dtype is not None and "float" in keras.backend.standardize_dtype(dtype)


def owner_layers(fn):
    """Layers whose random state ``fn`` may advance: ``fn`` itself or its bound instance."""
    owner = fn if isinstance(fn, keras.layers.Layer) else getattr(fn, "__self__", None)
    return [owner] if isinstance(owner, keras.layers.Layer) else []


def rematerialized_call(fn, layers, args, kwargs):
    """``fn(*args, **kwargs)`` under ``keras.remat``, replaying the layers' random state
    (their non-trainable variables, e.g. dropout seeds) in the recomputation."""
    positions = [i for i, a in enumerate(args) if is_floating(a)]
    state = [v for layer in layers for v in layer.non_trainable_variables]

    def with_floats(floats):
        full = list(args)
        for i, value in zip(positions, floats):
            full[i] = value
        return fn(*full, **kwargs)

    if keras.backend.backend() == "jax":
        return state_passing_remat(with_floats, state, [args[i] for i in positions])
    saved = []

    def forward(*floats):
        if not saved:  # the forward pass: remember the state the random ops start from
            saved.extend(keras.ops.copy(v.value) for v in state)
        else:  # TensorFlow's recomputation: start the random ops from the same state
            for variable, value in zip(state, saved):
                variable.assign(value)
        return with_floats(floats)

    return keras.remat(forward)(*(args[i] for i in positions))


def state_passing_remat(function, state, floats):
    """``function(floats)`` under ``jax.checkpoint`` with the random state passed in and
    returned as values: JAX replays the traced function with the same inputs, so the
    recomputation draws the same random numbers, and no value traced inside the checkpoint
    is left in a variable (which JAX refuses as an "unexpected tracer", e.g. a dropout seed
    under ``fit``)."""

    def forward(floats, start):
        for variable, value in zip(state, start):
            variable.assign(value)
        return function(floats), [v.value for v in state]

    outputs, end = keras.remat(forward)(floats, [v.value for v in state])
    for variable, value in zip(state, end):
        variable.assign(value)
    return outputs


def layers_between(inputs, outputs):
    """Layers with weights applied on the path from ``inputs`` to ``outputs`` (KerasTensors).

    The walk goes back from the outputs and stops at the inputs and at anything they were
    computed from, so only the operations ``fn`` added are returned, outermost first.
    """
    stop = {id(node) for node in ancestor_nodes(inputs)}
    stop_tensors = {id(x) for x in inputs}
    found, seen = [], set()
    pending = [x for x in keras.tree.flatten(outputs) if is_symbolic(x)]
    while pending:
        tensor = pending.pop()
        if id(tensor) in stop_tensors:
            continue
        node = producing_node(tensor)
        if node is None or id(node) in seen or id(node) in stop:
            continue
        seen.add(id(node))
        layer = node.operation
        if isinstance(layer, keras.layers.Layer) and layer.weights and layer not in found:
            found.append(layer)
        pending.extend(node.arguments.keras_tensors)
    return found


def producing_node(tensor):
    history = getattr(tensor, "_keras_history", None)
    if history is None or history.operation is None:
        return None
    return history.operation._inbound_nodes[history.node_index]


def ancestor_nodes(tensors):
    """Every node that the given KerasTensors were computed from (including their own)."""
    nodes, pending, seen = [], list(tensors), set()
    while pending:
        node = producing_node(pending.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        pending.extend(node.arguments.keras_tensors)
    return nodes


def recompute_layer_call(layer):
    """Make ``layer`` recompute its ``call`` in the backward pass (idempotent)."""
    if getattr(layer.call, "_keraformer_recompute", False):
        return
    original = layer.call

    @functools.wraps(original)
    def call(*args, **kwargs):
        if any(is_symbolic(x) for x in keras.tree.flatten((args, kwargs))):
            return original(*args, **kwargs)
        return rematerialized_call(original, [layer], args, kwargs)

    call._keraformer_recompute = True
    layer.call = call
