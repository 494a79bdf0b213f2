"""Momentum-folded accumulation against Keras' optimizers and a NumPy model of the rule."""

import keras
import numpy as np
import pytest

from keraformer.optimizers import SGD, AdamW

SHAPES = [(3, 4), (4,)]


def gradients(steps, seed=0):
    rng = np.random.RandomState(seed)
    return [[rng.randn(*s).astype("float32") for s in SHAPES] for _ in range(steps)]


def run(optimizer, grads, start):
    variables = [keras.Variable(w) for w in start]
    history = []
    for step in grads:
        optimizer.apply(step, variables)
        history.append([np.asarray(v.numpy()) for v in variables])
    return history


@pytest.fixture
def start():
    rng = np.random.RandomState(42)
    return [rng.randn(*s).astype("float32") for s in SHAPES]


def test_adamw_one_step_equals_keras(start):
    grads = gradients(20)
    ours = run(AdamW(1e-2, weight_decay=0.1, accumulation_steps=1), grads, start)
    theirs = run(keras.optimizers.AdamW(1e-2, weight_decay=0.1), grads, start)
    for a, b in zip(ours, theirs):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, atol=1e-6)


def test_sgd_folded_equals_keras_accumulation(start):
    grads = gradients(12, seed=1)
    ours = run(SGD(0.1, momentum=0.9, accumulation_steps=4), grads, start)
    theirs = run(keras.optimizers.SGD(0.1, momentum=0.9, gradient_accumulation_steps=4),
                 grads, start)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, atol=1e-6)
        if step % 4 != 3:  # weights do not move inside a cycle
            previous = start if step == 0 else ours[step - 1]
            for x, p in zip(a, previous):
                np.testing.assert_array_equal(x, p)


def numpy_folded_adamw(start, grads, k, lr, wd, b1=0.9, b2=0.999, eps=1e-7):
    """The folded rule written out in NumPy, one micro-step at a time."""
    w = [x.astype("float64") for x in start]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    history = []
    for t, step in enumerate(grads):
        cycle = t // k + 1
        for i, g in enumerate(step):
            if t % k == 0:
                m[i] *= b1
                v[i] *= b2
            m[i] += (1 - b1) * g / k
            v[i] += (1 - b2) * g * g / k
            if (t + 1) % k == 0:
                w[i] = w[i] - w[i] * wd * lr
                alpha = lr * np.sqrt(1 - b2 ** cycle) / (1 - b1 ** cycle)
                w[i] = w[i] - m[i] * alpha / (np.sqrt(v[i]) + eps)
        history.append([x.copy() for x in w])
    return history


def test_adamw_folded_matches_numpy_rule(start):
    grads = gradients(12, seed=2)
    ours = run(AdamW(1e-2, weight_decay=0.05, accumulation_steps=3), grads, start)
    want = numpy_folded_adamw(start, grads, 3, 1e-2, 0.05)
    for a, b in zip(ours, want):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, atol=1e-6)


def test_same_variables_as_keras_adamw():
    variables = [keras.Variable(np.zeros(s, "float32")) for s in SHAPES]
    ours, theirs = AdamW(accumulation_steps=4), keras.optimizers.AdamW()
    ours.build(variables)
    theirs.build(variables)
    assert len(ours.variables) == len(theirs.variables)
    accumulating = keras.optimizers.AdamW(gradient_accumulation_steps=4)
    accumulating.build(variables)
    assert len(accumulating.variables) > len(ours.variables)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("make", [lambda: AdamW(0.05, accumulation_steps=2),
                                  lambda: SGD(0.05, momentum=0.9, accumulation_steps=2)])
def test_fit_with_and_without_jit(make, jit):
    rng = np.random.RandomState(0)
    x = rng.randn(64, 5).astype("float32")
    y = x @ rng.randn(5, 1).astype("float32")
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    model.compile(make(), "mse", jit_compile=jit)
    history = model.fit(x, y, batch_size=8, epochs=8, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]


def test_serialization_and_errors():
    optimizer = AdamW(3e-4, accumulation_steps=4)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(clone, AdamW) and clone.accumulation_steps == 4
    assert SGD.from_config(SGD(0.1, momentum=0.5, accumulation_steps=3).get_config()
                           ).accumulation_steps == 3
    with pytest.raises(ValueError, match="accumulation_steps"):
        AdamW(accumulation_steps=0)
    with pytest.raises(ValueError, match="momentum"):
        SGD(accumulation_steps=2)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        AdamW(gradient_accumulation_steps=2)


# -- sparse gradients: a gather's gradient lists a row once per use ---------------------------
SPARSE_IDS = np.array([[1, 1, 1, 1, 2], [3, 1, 2, 4, 4]], "int32")  # row 1 used 5 times


def keras_embedding_model(make, jit_compile):
    """Keras' own Embedding (on TensorFlow its gradient is a tf.IndexedSlices with repeated
    indices) under loss Σ outputs·[1, −0.5, 0.25]; weights start at START_TABLE."""
    ids = keras.Input((5,), dtype="int32")
    layer = keras.layers.Embedding(5, 3, embeddings_initializer=keras.initializers.Constant(
        START_TABLE))
    model = keras.Model(ids, layer(ids))
    model.compile(make(), jit_compile=jit_compile,
                  loss=lambda y, p: keras.ops.sum(p * np.array([1.0, -0.5, 0.25]), axis=(1, 2)))
    return model, layer


START_TABLE = (np.arange(15, dtype="float32").reshape(5, 3) - 7) / 4


def dense_table_gradient(ids):
    """d Σ table[ids]·c / d table (batch mean: ``fit``'s loss averages the 2 rows)."""
    grad = np.zeros((5, 3))
    np.add.at(grad, ids.reshape(-1), np.array([1.0, -0.5, 0.25]) / len(ids))
    return grad


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("jit", [False, True])
def test_adamw_sums_the_repeated_rows_of_a_sparse_gradient(steps, jit):
    """keraformer's AdamW on Keras' own Embedding equals the folded rule (NumPy) on the
    dense gradient, whose repeated rows are summed before the square (Keras' AdamW on
    TensorFlow squares each use of a row separately)."""
    model, layer = keras_embedding_model(
        lambda: AdamW(0.1, weight_decay=0.5, accumulation_steps=steps), jit)
    for _ in range(2):
        model.train_on_batch(SPARSE_IDS, np.zeros((2,), "float32"))
    grads = [[dense_table_gradient(SPARSE_IDS)]] * 2
    want = numpy_folded_adamw([START_TABLE], grads, steps, 0.1, 0.5)[-1][0]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.embeddings), want, atol=1e-5)


def test_sgd_on_a_sparse_gradient_is_the_textbook_update():
    """SGD with momentum (linear in the gradient) sums repeated rows as it is."""
    model, layer = keras_embedding_model(
        lambda: SGD(0.1, momentum=0.9, accumulation_steps=2), False)
    for _ in range(2):
        model.train_on_batch(SPARSE_IDS, np.zeros((2,), "float32"))
    # two micro-steps folded into one step of the mean gradient: w − lr·g
    want = START_TABLE - 0.1 * dense_table_gradient(SPARSE_IDS)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.embeddings), want, atol=1e-6)
