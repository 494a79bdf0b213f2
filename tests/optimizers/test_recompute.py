"""``recompute_grad`` and ``recompute=True`` give the same gradients as plain execution."""

import keras
import numpy as np

from keraformer.models import build_transformer_model
from keraformer.optimizers import recompute_grad

CONFIG = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=24, max_position_embeddings=16, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0)


def gradients(model, inputs):
    """Gradients of sum(output²) with respect to every trainable weight."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        with tf.GradientTape() as tape:
            loss = keras.ops.sum(keras.ops.square(model(inputs, training=True)))
        return [np.asarray(tf.convert_to_tensor(g))
                for g in tape.gradient(loss, model.trainable_variables)]
    import jax
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss(weights):
        out, _ = model.stateless_call(weights, non_trainable, inputs, training=True)
        return keras.ops.sum(keras.ops.square(out))
    return [np.asarray(g) for g in jax.grad(loss)(trainable)]


def test_bert_recompute_gradients_equal():
    plain = build_transformer_model(model="bert", **CONFIG)
    remat = build_transformer_model(model="bert", recompute=True, **CONFIG)
    remat.set_weights(plain.get_weights())
    ids = np.random.RandomState(0).randint(1, 60, (2, 9)).astype("int32")
    ids[1, 6:] = 0
    inputs = [ids, np.zeros_like(ids)]
    for a, b in zip(gradients(plain, inputs), gradients(remat, inputs)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def input_gradient(f, x):
    """d f(x) / dx on the current backend."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = f(x)
        return np.asarray(tape.gradient(y, x))
    import jax
    return np.asarray(jax.grad(f)(x))


def test_recompute_grad_on_a_function():
    dense = keras.layers.Dense(4, activation="tanh")
    dense.build((None, 3))
    x = np.random.RandomState(1).randn(5, 3).astype("float32")
    f = lambda t: keras.ops.sum(dense(t) ** 2)
    np.testing.assert_allclose(input_gradient(recompute_grad(f), x), input_gradient(f, x),
                               atol=1e-6)
    assert np.abs(input_gradient(f, x)).max() > 1e-3


def test_recompute_model_fits_and_saves(tmp_path):
    model = build_transformer_model(model="bert", recompute=True, with_pool=True, **CONFIG)
    out = keras.layers.Dense(2, activation="softmax")(model.output)
    classifier = keras.Model(model.inputs, out)
    classifier.compile("adam", "sparse_categorical_crossentropy")
    ids = np.random.RandomState(2).randint(1, 60, (16, 8)).astype("int32")
    classifier.fit([ids, np.zeros_like(ids)], ids[:, 0] % 2, epochs=2, verbose=0)
    classifier.save(str(tmp_path / "remat.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "remat.keras"))
    np.testing.assert_allclose(loaded.predict([ids, np.zeros_like(ids)], verbose=0),
                               classifier.predict([ids, np.zeros_like(ids)], verbose=0),
                               atol=1e-6)
