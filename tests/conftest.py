"""Shared fixtures: backend-agnostic gradients for the finite-difference checks."""

import keras
import numpy as np
import pytest


def backend_gradients(fn, *arrays):
    """``[d fn(*arrays) / d array for each array]`` as NumPy, with the active backend;
    ``fn`` maps tensors to a scalar."""
    if keras.backend.backend() == "jax":
        import jax
        return [np.asarray(g) for g in jax.grad(fn, argnums=tuple(range(len(arrays))))(
            *(jax.numpy.asarray(a) for a in arrays))]
    import tensorflow as tf
    variables = [tf.Variable(a) for a in arrays]
    with tf.GradientTape() as tape:
        value = fn(*variables)
    return [np.asarray(g) for g in tape.gradient(value, variables)]


@pytest.fixture
def gradients():
    return backend_gradients


def central_differences(fn, x, eps=1e-6):
    """``d fn(x) / dx`` of a NumPy scalar function by central differences (use float64)."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += eps
        down[index] -= eps
        grad[index] = (fn(up) - fn(down)) / (2 * eps)
    return grad


@pytest.fixture
def numeric_gradient():
    return central_differences
