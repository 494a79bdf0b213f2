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


def run_bert4keras(script, inputs, folder, timeout=600):
    """Run ``script`` with bert4keras 0.11.5 in a fresh Python and return what it wrote.

    bert4keras needs legacy tf-keras, which it swaps in process-wide (``TF_KERAS=1
    TF_USE_LEGACY_KERAS=1``), so it never runs inside the test process. The script finds
    ``inputs`` (JSON-able) with ``json.load(open(sys.argv[1]))`` and must write its results
    with ``json.dump(..., open(sys.argv[2], "w"))``; arrays may go to ``sys.argv[3]``
    (``np.savez``). Returns ``(json_results, {name: array})``.
    """
    import json
    import os
    import subprocess
    import sys

    folder = str(folder)
    paths = [os.path.join(folder, name) for name in ("in.json", "out.json", "out.npz")]
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump(inputs, f, ensure_ascii=False)
    env = dict(os.environ, TF_KERAS="1", TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0")
    env.pop("KERAS_BACKEND", None)
    done = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=folder)
    assert done.returncode == 0, f"bert4keras script failed:\n{done.stderr[-4000:]}"
    with open(paths[1], encoding="utf-8") as f:
        results = json.load(f)
    arrays = {}
    if os.path.exists(paths[2]):
        with np.load(paths[2]) as loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    return results, arrays


@pytest.fixture(scope="session")
def bert4keras():
    """:func:`run_bert4keras`, for module-scoped fixtures that compute reference results."""
    return run_bert4keras
