"""The embedding's gradient: repeated ids summed into one dense row, so that Adam, whose update
squares the gradient, makes the textbook update on every backend.

References: the gradient of ``Σ table[ids]·c`` written with ``np.add.at`` (each occurrence of
an id adds its ``c`` to the id's row), and Adam / AdamW written in NumPy from the paper
(``tests.references.numpy_adam``). On TensorFlow, Keras' own gather gives a
``tf.IndexedSlices`` with one slice per occurrence, which Keras' optimizers square one by one:
a row used 4 times moved −0.2 instead of −0.1 with ``Adam(0.1)``. The weights and gradients
below are multiples of 1/4, exact in float16 and bfloat16, so mixed precision is held to the
same tolerance: 1e-5, float32's rounding of ``1 − β₂ᵗ`` (0.002 at step 2: a relative error of
~3e-5 on updates of 0.1); the error of the report is 0.1.
"""

import contextlib

import keras
import numpy as np
import pytest
from keras import ops

from keraformer.embedding import Embedding, dense_gradient, gather_rows
from keraformer.optimizers import AdamW
from tests.references import numpy_adam

VOCAB, DIM = 6, 3
# Two batches; id 1 occurs 4 times in the first (and again in the second), id 0 never.
BATCHES = [np.array([[1, 1, 1, 1, 2], [3, 1, 2, 5, 5]], "int32"),
           np.array([[4, 1, 3, 3, 2], [2, 2, 2, 2, 2]], "int32")]
SCALE = np.array([[1.0, -0.5, 0.25]], "float32")  # loss = Σ outputs · SCALE
START = (np.arange(VOCAB * DIM, dtype="float32").reshape(VOCAB, DIM) - 8) / 4


def numpy_table_gradient(ids):
    """d Σ table[ids]·SCALE / d table: each occurrence of an id adds SCALE to its row."""
    grad = np.zeros((VOCAB, DIM))
    np.add.at(grad, ids.reshape(-1), np.broadcast_to(SCALE, (ids.size, DIM)))
    return grad


def scaled_sum(y_true, y_pred):
    return ops.sum(ops.cast(y_pred, "float32") * SCALE, axis=(1, 2))


@contextlib.contextmanager
def global_policy(name):
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_gather_rows_gradient_is_dense_with_repeated_ids_summed(gradients):
    ids = BATCHES[0]
    [grad] = gradients(lambda table: ops.sum(gather_rows(table, ids) * SCALE), START)
    np.testing.assert_array_equal(grad, numpy_table_gradient(ids))
    np.testing.assert_array_equal(ops.convert_to_numpy(gather_rows(START, ids)), START[ids])


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="only TensorFlow has a sparse gather gradient")
def test_gather_rows_gives_tensorflow_a_dense_tensor():
    import tensorflow as tf
    table = tf.Variable(START)
    with tf.GradientTape() as tape:
        plain = tf.reduce_sum(tf.gather(table, BATCHES[0]) * SCALE)
    assert isinstance(tape.gradient(plain, table), tf.IndexedSlices)  # what Keras optimizers get
    with tf.GradientTape() as tape:
        ours = ops.sum(gather_rows(table, BATCHES[0]) * SCALE)
    grad = tape.gradient(ours, table)
    assert isinstance(grad, tf.Tensor) and not isinstance(grad, tf.IndexedSlices)
    np.testing.assert_array_equal(grad.numpy(), numpy_table_gradient(BATCHES[0]))


def test_dense_gradient_sums_repeated_slices():
    if keras.backend.backend() != "tensorflow":
        array = np.ones((2, 2), "float32")
        assert dense_gradient(array) is array
        return
    import tensorflow as tf
    slices = tf.IndexedSlices(tf.constant([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
                              tf.constant([1, 0, 1]), tf.constant([3, 2]))
    np.testing.assert_array_equal(ops.convert_to_numpy(dense_gradient(slices)),
                                  [[3.0, 4.0], [6.0, 8.0], [0.0, 0.0]])


OPTIMIZERS = {
    "keras.Adam": (lambda: keras.optimizers.Adam(0.1), 0.0),
    "keras.AdamW": (lambda: keras.optimizers.AdamW(0.1, weight_decay=0.5), 0.5),
    "keraformer.AdamW": (lambda: AdamW(0.1, weight_decay=0.5), 0.5),
}


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "jit"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_adam_on_repeated_ids_is_the_textbook_update(optimizer, jit_compile, policy):
    """Two fit steps on batches that repeat ids equal NumPy Adam (AdamW) on the dense
    gradient, for Keras' optimizers and keraformer's, compiled or not, in every precision
    policy (float16 fits through Keras' LossScaleOptimizer)."""
    make, weight_decay = OPTIMIZERS[optimizer]
    with global_policy(policy):
        layer = Embedding(VOCAB, DIM, embeddings_initializer=keras.initializers.Constant(START))
        ids = keras.Input((5,), dtype="int32")
        model = keras.Model(ids, layer(ids))
        model.compile(make(), loss=scaled_sum, jit_compile=jit_compile)
    for batch in BATCHES:
        model.train_on_batch(batch, np.zeros((2,), "float32"))
    expected = numpy_adam(START, [numpy_table_gradient(b) for b in BATCHES], 0.1,
                          weight_decay=weight_decay)
    table = ops.convert_to_numpy(layer.embeddings)
    np.testing.assert_allclose(table, expected, rtol=0, atol=1e-5)
    # the case of the report: the row used 4 times in the first batch moved by 0.1 per step
    first = numpy_adam(START, [numpy_table_gradient(BATCHES[0])], 0.1,
                       weight_decay=weight_decay)
    np.testing.assert_allclose(first[1] - START[1] * (1 - 0.1 * weight_decay),
                               [-0.1, 0.1, -0.1], atol=1e-6)
