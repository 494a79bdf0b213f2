"""One Adam / AdamW step on a builder's model whose batch repeats tokens (and, as every batch
does, segment ids and T5's relative-position buckets) equals the textbook update.

Reference: ``tests.references.numpy_adam`` (NumPy, from the paper) applied to the model's
gradient taken with the backend's own differentiation and made dense, repeated rows summed
(``tests.references.dense_gradients``). Keras' TensorFlow optimizers squared each occurrence
of a row separately before keraformer's gather gave them a dense gradient. ``epsilon=1e-3``
keeps the update ``≈ lr·g/(|g|+ε)`` smooth in ``g``, so that float32 differences between the
fit step and the reference gradient (XLA reorders sums) stay below the tolerance, 1e-6 with
``lr=1e-2``; the error fixed here is of order ``lr``.
"""

import keras
import numpy as np
import pytest

from keraformer.models import build_transformer_model
from keraformer.optimizers import AdamW
from tests.references import dense_gradients, numpy_adam, tiny_configs

ENCODER_CONFIG, T5_CONFIG = tiny_configs(20, layers=1, type_vocab_size=2)
LR, EPSILON, WEIGHT_DECAY = 1e-2, 1e-3, 0.1


def bert_case():
    model = build_transformer_model(model="bert", **ENCODER_CONFIG)
    tokens = np.array([[2, 5, 5, 5, 5, 7, 3], [2, 9, 5, 5, 4, 4, 3]], "int32")
    segments = np.array([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1]], "int32")
    target = np.random.default_rng(0).standard_normal((2, 7, 16)).astype("float32")
    return model, [tokens, segments], target, keras.losses.MeanSquaredError()


def t5_case():
    model = build_transformer_model(model="t5", **T5_CONFIG)
    source = np.array([[4, 6, 6, 6, 6, 1], [6, 8, 8, 3, 3, 1]], "int32")
    labels = np.array([[7, 7, 7, 5, 1], [9, 7, 7, 2, 1]], "int32")
    decoder = np.concatenate([np.zeros((2, 1), "int32"), labels[:, :-1]], axis=1)
    return model, [source, decoder], labels, keras.losses.SparseCategoricalCrossentropy()


CASES = {"bert": bert_case, "t5": t5_case}
OPTIMIZERS = {
    "keras.Adam": (lambda: keras.optimizers.Adam(LR, epsilon=EPSILON), 0.0),
    "keraformer.AdamW": (lambda: AdamW(LR, weight_decay=WEIGHT_DECAY, epsilon=EPSILON),
                         WEIGHT_DECAY),
}


@pytest.mark.parametrize("case, optimizer, jit_compile", [
    ("bert", "keras.Adam", False), ("bert", "keraformer.AdamW", True),
    ("t5", "keras.Adam", True)])
def test_one_step_is_the_textbook_update(case, optimizer, jit_compile):
    model, inputs, targets, loss = CASES[case]()
    make, weight_decay = OPTIMIZERS[optimizer]
    # AdamW decays every weight here; Keras' default exclusions apply to both sides equally
    start = [np.asarray(keras.ops.convert_to_numpy(v)) for v in model.trainable_variables]
    grads = dense_gradients(model, inputs, targets, loss)
    model.compile(make(), loss=loss, jit_compile=jit_compile)
    model.train_on_batch(inputs, targets)
    checked = 0
    for variable, w, g in zip(model.trainable_variables, start, grads):
        expected = numpy_adam(w, [g], LR, epsilon=EPSILON, weight_decay=weight_decay)
        got = keras.ops.convert_to_numpy(variable)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=variable.path)
        checked += "embeddings" in variable.path
    assert checked >= 2  # token and segment embeddings, or T5's token table and its biases
