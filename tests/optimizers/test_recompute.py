"""``recompute_grad`` gives the gradients of plain execution, and really recomputes."""

import keras
import numpy as np
import pytest

from keraformer.attentions import MultiHeadAttention
from keraformer.feedforward import FeedForward
from keraformer.masks import AttentionMask
from keraformer.models import build_transformer_model
from keraformer.normalization import LayerNormalization
from keraformer.optimizers import recompute_grad

TOL = 1e-5
VOCAB, LENGTH, HIDDEN = 20, 6, 8


def gradients(model, inputs):
    """Gradients of Σ output·R (R fixed random) with respect to every trainable weight
    (training=True). Not Σ output²: after a final LayerNorm that is nearly constant, and its
    gradients would be rounding noise."""
    shape = keras.tree.flatten(inputs)[0].shape + (model.output.shape[-1],)  # (b, n, hidden)
    projection = np.random.RandomState(11).randn(*shape).astype("float32")
    if keras.backend.backend() == "jax":
        import jax
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss(weights):
            out, _ = model.stateless_call(weights, non_trainable, inputs, training=True)
            return keras.ops.sum(out * projection)
        return [np.asarray(g) for g in jax.grad(loss)(trainable)]
    import tensorflow as tf
    with tf.GradientTape() as tape:
        loss = keras.ops.sum(model(inputs, training=True) * projection)
    return [np.asarray(tf.convert_to_tensor(g))
            for g in tape.gradient(loss, model.trainable_variables)]


def transformer(recompute, dropout=0.0, layers=2):
    """Post-norm Transformer encoder from keraformer layers, blocks optionally recomputed."""
    keras.utils.set_random_seed(3)
    ids = keras.Input((LENGTH,), dtype="int32")
    mask = AttentionMask("padding")(ids)
    x = keras.layers.Embedding(VOCAB, HIDDEN)(ids)
    for _ in range(layers):
        attention = MultiHeadAttention(2, 4, dropout_rate=dropout)
        feed_forward = FeedForward(16, dropout_rate=dropout)
        norm_1, norm_2 = LayerNormalization(), LayerNormalization()

        def block(h, mask, attention=attention, feed_forward=feed_forward, norm_1=norm_1,
                  norm_2=norm_2):
            h = norm_1(keras.layers.Add()([h, attention(h, mask=mask)]))
            return norm_2(keras.layers.Add()([h, feed_forward(h)]))
        x = recompute_grad(block)(x, mask) if recompute else block(x, mask)
    return keras.Model(ids, x)


@pytest.fixture(scope="module")
def token_ids():
    ids = np.random.RandomState(0).randint(1, VOCAB, (3, LENGTH)).astype("int32")
    ids[1, 4:] = 0
    return ids


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_functional_blocks_give_the_same_gradients(token_ids, dropout):
    """Dropout included: the recomputation replays the forward pass's random numbers."""
    plain, recomputed = transformer(False, dropout), transformer(True, dropout)
    recomputed.set_weights(plain.get_weights())
    keras.utils.set_random_seed(5)
    want = gradients(plain, token_ids)
    keras.utils.set_random_seed(5)
    got = gradients(recomputed, token_ids)
    assert len(got) == len(want) == len(plain.trainable_variables)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=TOL)


def counting_call(layer, counter):
    original = layer.call

    def call(*args, **kwargs):
        counter.append(layer.name)
        return original(*args, **kwargs)
    layer.call = call


def test_block_layers_run_again_in_the_backward_pass(token_ids):
    if keras.backend.backend() != "tensorflow":  # jax traces once; the count means nothing
        return
    counts = {}
    for recompute in (False, True):
        model, calls = transformer(recompute, layers=1), []
        for layer in model.layers:
            if isinstance(layer, FeedForward):
                counting_call(layer.input_dense, calls)  # a sublayer: inside the checkpoint
        gradients(model, token_ids)
        counts[recompute] = len(calls)
    assert counts == {False: 1, True: 2}


def test_recompute_grad_on_a_layer_with_dropout_matches_plain():
    """Eager tensors: the layer itself is wrapped (the block-builder use inside ``call``)."""
    if keras.backend.backend() != "tensorflow":  # the functional tests cover jax
        return
    import tensorflow as tf
    layer = FeedForward(16, dropout_rate=0.5)
    layer.build((2, 5, HIDDEN))
    x = tf.constant(np.random.RandomState(1).randn(2, 5, HIDDEN).astype("float32"))
    grads, seed_state = [], [v.numpy() for v in layer.non_trainable_variables]
    for fn in (layer, recompute_grad(layer)):
        for variable, value in zip(layer.non_trainable_variables, seed_state):
            variable.assign(value)  # both runs draw the same dropout mask
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = keras.ops.sum(fn(x, training=True) ** 2)
        grads.append([np.asarray(g) for g in tape.gradient(loss, [x] + layer.trainable_variables)])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=TOL)


@pytest.fixture(scope="module")
def plain_fit(token_ids):
    """Weights after two epochs of plain SGD training (no recompute, no XLA)."""
    targets = np.random.RandomState(2).randn(3, LENGTH, HIDDEN).astype("float32")
    model = transformer(False, layers=1)
    start = model.get_weights()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(token_ids, targets, batch_size=3, epochs=2, verbose=0)
    return start, targets, model.get_weights()


@pytest.mark.parametrize("jit", [False, True])
def test_fit_matches_plain_training(token_ids, plain_fit, jit):
    """Two epochs of fit move the weights as without recompute (no dropout)."""
    start, targets, want = plain_fit
    model = transformer(True, layers=1)
    model.set_weights(start)
    model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=jit)
    model.fit(token_ids, targets, batch_size=3, epochs=2, verbose=0)
    for a, b in zip(model.get_weights(), want):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=TOL)


def test_saved_model_loads_with_identical_outputs(token_ids, tmp_path):
    model = transformer(True)
    path = str(tmp_path / "recompute.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(token_ids, verbose=0),
                               model.predict(token_ids, verbose=0), atol=1e-6)


def test_bert_builder_recompute_gradients_equal():
    config = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=24, max_position_embeddings=16, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    plain = build_transformer_model(model="bert", **config)
    remat = build_transformer_model(model="bert", recompute=True, **config)
    remat.set_weights(plain.get_weights())
    ids = np.random.RandomState(0).randint(1, 60, (2, 9)).astype("int32")
    ids[1, 6:] = 0
    inputs = [ids, np.zeros_like(ids)]
    for a, b in zip(gradients(plain, inputs), gradients(remat, inputs)):
        np.testing.assert_allclose(a, b, atol=TOL)


def test_bert_builder_recompute_with_dropout_fits_as_plain():
    """``fit`` with ``recompute=True`` and dropout (under JAX a dropout seed advanced inside
    ``jax.checkpoint`` used to escape as an "unexpected tracer"): one SGD step equals the step
    of the same model without recompute, seeded alike (same dropout masks)."""
    config = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=24, max_position_embeddings=16, dropout_rate=0.3)

    def one_step(recompute, weights=None):
        keras.utils.set_random_seed(3)
        encoder = build_transformer_model(model="bert", with_pool=True, recompute=recompute,
                                          **config)
        model = keras.Model(encoder.inputs, keras.layers.Dense(2)(encoder.output))
        if weights is not None:
            model.set_weights(weights)
        start = model.get_weights()
        model.compile(keras.optimizers.SGD(0.5),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        ids = np.random.RandomState(0).randint(1, 60, (4, 9)).astype("int32")
        model.fit([ids, np.zeros_like(ids)], np.array([0, 1, 1, 0]), batch_size=4,
                  epochs=1, verbose=0, shuffle=False)
        return start, model.get_weights()

    start, plain = one_step(False)
    _, remat = one_step(True, start)
    moved = [np.abs(a - b).max() for a, b in zip(plain, start)]
    assert max(moved) > 1e-3  # the step did something
    for a, b in zip(plain, remat):
        np.testing.assert_allclose(a, b, atol=TOL)
