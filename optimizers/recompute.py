"""Recompute ("gradient checkpointing"; Chen et al. 2016, "Training Deep Nets with Sublinear
Memory Cost"): keep only a block's inputs in the forward pass and recompute its activations
during the backward pass, trading about one extra forward for activation memory.
"""

import keras


def recompute_grad(fn):
    """Wrap ``fn`` (e.g. a Transformer block's forward) so that its intermediate activations
    are recomputed in the backward pass; same signature and outputs as ``fn``.

    Built on ``keras.remat`` (``tf.recompute_grad`` on TensorFlow, ``jax.checkpoint`` on
    JAX). On symbolic ``KerasTensor`` inputs (functional model construction) ``fn`` is called
    as is; the layer that calls this at run time gets the rematerialised version.
    """

    def call(*args, **kwargs):
        if any(isinstance(a, keras.KerasTensor) for a in keras.tree.flatten((args, kwargs))):
            return fn(*args, **kwargs)
        # Only floating tensors pass through the rematerialised function: keyword arguments
        # (``training``) and masks are bound here, since TensorFlow's custom gradient takes
        # positional, differentiable tensors only inside a traced graph.
        positions = [i for i, a in enumerate(args) if is_floating(a)]

        def forward(*floats):
            full = list(args)
            for i, value in zip(positions, floats):
                full[i] = value
            return fn(*full, **kwargs)
        return keras.remat(forward)(*(args[i] for i in positions))

    return call


def is_floating(value):
    dtype = getattr(value, "dtype", None)
    return dtype is not None and "float" in keras.backend.standardize_dtype(dtype)
