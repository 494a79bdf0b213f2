"""``keraformer.training.adversarial_training`` against hand-derived steps.

A tiny classifier (token embedding → mean over positions → softmax) has a loss whose every
gradient is written out in NumPy (float64) below, so one SGD step of each method is checked
against an independent computation: FGM perturbs the embedding matrix by ``ε·g/‖g‖``, takes
the gradient there and leaves the matrix unperturbed apart from the update (max abs error
1e-5 in float32); the gradient penalty's step is the gradient of ``L + ½·ε·‖∇_E L‖²`` by
central differences of that NumPy function (1e-4); VAT's perturbation has norm ``ε`` (1e-4).
Every method fits a small classifier eagerly, compiled (TensorFlow ``jit_compile``, JAX
``jit``) and under ``mixed_float16`` / ``mixed_bfloat16`` with LoRA adapters and folded gradient
accumulation (frozen weights, the embedding included, stay bitwise unchanged); FGM fits a
builder's BERT on its ``Embedding-Token``; bad arguments are refused by name. bert4keras 0.11.5
ships no adversarial training in its package (only its example scripts do, patching TF1's
graph-mode ``train_function``; not run here), so the NumPy steps are the reference.
"""

import keras
import numpy as np
import pytest

from keraformer.embedding import Embedding
from keraformer.models import build_transformer_model, enable_lora
from keraformer.optimizers import AdamW
from keraformer.training import adversarial_training, fgm_perturbation
from tests.conftest import central_differences

VOCAB, DIM, CLASSES, BATCH, LENGTH = 11, 4, 3, 5, 6


def tiny_classifier(seed=0):
    keras.utils.set_random_seed(seed)
    ids = keras.Input((None,), dtype="int32")
    h = Embedding(VOCAB, DIM, name="Embedding-Token",
                  embeddings_initializer=keras.initializers.RandomNormal(stddev=0.5))(ids)
    h = keras.layers.GlobalAveragePooling1D()(h)
    out = keras.layers.Dense(CLASSES, activation="softmax", name="head")(h)
    return keras.Model(ids, out)


def batch(seed=1):
    rng = np.random.default_rng(seed)
    return (rng.integers(1, VOCAB, (BATCH, LENGTH)).astype("int32"),
            rng.integers(0, CLASSES, BATCH).astype("int32"))


def numpy_loss_and_gradients(E, W, b, ids, labels):
    """Mean cross-entropy of the tiny classifier and its gradients ``(dE, dW, db)``."""
    h = E[ids].mean(axis=1)
    z = h @ W + b
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    loss = -np.log(p[np.arange(len(labels)), labels]).mean()
    dz = (p - np.eye(W.shape[1])[labels]) / len(labels)
    dh = dz @ W.T
    dE = np.zeros_like(E)
    np.add.at(dE, ids, np.repeat(dh[:, None, :] / ids.shape[1], ids.shape[1], axis=1))
    return loss, dE, h.T @ dz, dz.sum(axis=0)


def weights_of(model):
    return [np.asarray(keras.ops.convert_to_numpy(v), "float64") for v in model.weights]


def one_sgd_step(method, epsilon, lr, seed=0, **options):
    model = tiny_classifier(seed)
    model.compile(keras.optimizers.SGD(lr), "sparse_categorical_crossentropy")
    adversarial_training(model, epsilon=epsilon, method=method, **options)
    before = weights_of(model)
    x, y = batch()
    history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    return before, weights_of(model), history.history, x, y


def test_fgm_step_equals_the_hand_derived_step():
    epsilon, lr = 0.7, 0.5
    (E, W, b), after, history, ids, labels = one_sgd_step("fgm", epsilon, lr)
    _, g, _, _ = numpy_loss_and_gradients(E, W, b, ids, labels)
    r = epsilon * g / np.linalg.norm(g)
    loss, dE, dW, db = numpy_loss_and_gradients(E + r, W, b, ids, labels)
    expected = [E - lr * dE, W - lr * dW, b - lr * db]  # the perturbation is gone
    for got, want in zip(after, expected):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(dE, numpy_loss_and_gradients(E, W, b, ids, labels)[1], atol=1e-3)
    np.testing.assert_allclose(history["loss"][0], loss, rtol=1e-5)
    np.testing.assert_allclose(history["perturbation_norm"][0], epsilon, rtol=1e-5)


def test_gradient_penalty_step_is_the_gradient_of_its_formula():
    epsilon, lr = 3.0, 0.5
    (E, W, b), after, history, ids, labels = one_sgd_step("gradient_penalty", epsilon, lr)
    shapes = [E.shape, W.shape, b.shape]
    sizes = [int(np.prod(s)) for s in shapes]

    def objective(flat):
        parts = np.split(flat, np.cumsum(sizes)[:-1])
        E_, W_, b_ = (p.reshape(s) for p, s in zip(parts, shapes))
        loss, dE, _, _ = numpy_loss_and_gradients(E_, W_, b_, ids, labels)
        return loss + 0.5 * epsilon * np.sum(dE ** 2)

    flat = np.concatenate([E.ravel(), W.ravel(), b.ravel()])
    gradient = central_differences(objective, flat, eps=1e-6)
    step = (flat - np.concatenate([a.ravel() for a in after])) / lr
    np.testing.assert_allclose(step, gradient, atol=1e-4)
    penalty = objective(flat) - numpy_loss_and_gradients(E, W, b, ids, labels)[0]
    assert penalty > 1e-3  # the penalty takes part
    np.testing.assert_allclose(history["gradient_penalty"][0], penalty, rtol=1e-4)
    np.testing.assert_allclose(history["loss"][0], objective(flat), rtol=1e-5)


def test_vat_perturbation_has_norm_epsilon_and_trains_without_labels():
    epsilon = 0.3
    _, after, history, ids, _ = one_sgd_step("vat", epsilon, 0.5)
    np.testing.assert_allclose(history["perturbation_norm"], epsilon, rtol=1e-4)
    model = tiny_classifier()
    model.compile(keras.optimizers.SGD(0.5))  # no loss: every batch is unlabelled
    adversarial_training(model, epsilon=epsilon, method="vat")
    before = weights_of(model)
    history = model.fit(ids, batch_size=BATCH, epochs=1, verbose=0)  # no labels at all
    assert history.history["loss"][0] > 0  # the KL term alone
    np.testing.assert_allclose(history.history["perturbation_norm"][0], epsilon, rtol=1e-4)
    assert any(not np.allclose(a, b) for a, b in zip(before, weights_of(model)))


def test_fgm_perturbation_is_zero_for_a_zero_or_overflowing_gradient():
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(
        fgm_perturbation(np.zeros((3, 2), "float32"), 1.0)), 0.0)
    g = np.array([[np.inf, 1.0]], "float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fgm_perturbation(g, 1.0)), 0.0)


def adapted_classifier(policy=None, lora=False):
    """Embedding → Dense "query" → mean → softmax head (float32), built under ``policy``;
    with ``lora`` the embedding and the query kernel are frozen and the query gets adapters."""
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(policy or "float32")
    try:
        ids = keras.Input((None,), dtype="int32")
        embedding = Embedding(VOCAB, DIM, name="Embedding-Token")
        query = keras.layers.Dense(DIM, name="query")
        h = keras.layers.GlobalAveragePooling1D()(query(embedding(ids)))
        out = keras.layers.Dense(CLASSES, activation="softmax", dtype="float32")(h)
        model = keras.Model(ids, out)
    finally:
        keras.config.set_dtype_policy("float32")
    if lora:
        enable_lora(model, rank=2, targets=("query",), backbone=[embedding, query])
    return model


def assert_trained(model, fit):
    """Run ``fit``; the loss is finite and only trainable weights moved."""
    frozen = {id(v) for v in model.non_trainable_weights}
    before = {id(v): np.array(keras.ops.convert_to_numpy(v)) for v in model.weights}
    history = fit().history
    assert np.all(np.isfinite(history["loss"]))
    moved = {id(v) for v in model.weights
             if not np.array_equal(before[id(v)], keras.ops.convert_to_numpy(v))}
    assert moved and not frozen & moved  # LoRA: the frozen embedding is left as it was
    return history


@pytest.mark.parametrize("method", ["fgm", "gradient_penalty", "vat"])
@pytest.mark.parametrize("setting", ["eager", "jit", "mixed_float16", "mixed_bfloat16"])
def test_fit_runs_with_each_method(method, setting):
    """Eagerly, compiled (TensorFlow XLA, JAX jit), and compiled under each mixed policy with
    LoRA adapters and two micro-batches folded into every AdamW step."""
    mixed = setting.startswith("mixed")
    model = adapted_classifier(policy=setting if mixed else None, lora=mixed)
    optimizer = AdamW(1e-2, accumulation_steps=2 if mixed else 1)
    if setting == "mixed_float16":  # a scale that leaves room in float16 from the start
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0 ** 4)
    model.compile(optimizer, "sparse_categorical_crossentropy",
                  run_eagerly=setting == "eager", jit_compile=setting != "eager")
    assert adversarial_training(model, method=method, epsilon=0.5) is model
    x, y = batch()
    history = assert_trained(model, lambda: model.fit(
        np.concatenate([x, x]), np.concatenate([y, y]), batch_size=BATCH, epochs=2,
        verbose=0))
    if method != "gradient_penalty":
        np.testing.assert_allclose(history["perturbation_norm"], 0.5, rtol=1e-3)


def test_fgm_fits_a_builder_model_on_its_token_embedding():
    keras.utils.set_random_seed(0)
    bert = build_transformer_model(
        vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=16)
    pooled = keras.layers.GlobalAveragePooling1D()(bert.output)
    model = keras.Model(bert.inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    model.compile(AdamW(1e-2), "sparse_categorical_crossentropy")
    adversarial_training(model)  # "Embedding-Token", not the segment or position embedding
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 40, (8, 7)).astype("int32")
    ids[1::2, -2:] = 0
    history = assert_trained(model, lambda: model.fit(
        (ids, np.zeros_like(ids)), rng.integers(0, 2, 8), batch_size=4, verbose=0))
    np.testing.assert_allclose(history["perturbation_norm"], 1.0, rtol=1e-3)


@pytest.mark.parametrize("kwargs,error,name", [
    ({"epsilon": 0.0}, ValueError, "epsilon"),
    ({"epsilon": -1.0}, ValueError, "epsilon"),
    ({"epsilon": "1"}, TypeError, "epsilon"),
    ({"method": "pgd"}, ValueError, "method"),
    ({"embedding_name": "Embedding-Position"}, ValueError, "embedding_name"),
    ({"embedding_name": 3}, TypeError, "embedding_name"),
    ({"xi": 0}, ValueError, "xi"),
])
def test_bad_arguments_are_refused_by_name(kwargs, error, name):
    model = tiny_classifier()
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    with pytest.raises(error, match=name):
        adversarial_training(model, **kwargs)


def test_an_uncompiled_model_is_refused():
    with pytest.raises(ValueError, match="compiled"):
        adversarial_training(tiny_classifier())
