"""Every builder through ``build_transformer_model``: saving, compiled training, mixed precision.

Models: ``bert``, ``roberta``, ``roformer``, ``roformer_v2``, ``gau_alpha`` (each as
``encoder`` → hidden states, ``lm`` → MLM probabilities, ``unilm`` with ``with_mlm="linear"``
→ logits) and ``t5``, ``t5.1.1``, ``mt5`` (``[encoder_ids, decoder_ids]`` → probabilities),
all tiny and random. The batch has right padding and one row that is entirely padding
(token id 0).

Checked for all 18: ``.keras`` round trip in safe mode and ``.weights.h5`` round trip give
the same outputs (1e-6); under ``mixed_bfloat16`` and ``mixed_float16`` with the float32
weights copied in, outputs are finite and close to float32; the fully padded row is finite
under float32 and both mixed policies. Training, which compiles a train step (XLA takes
~10 s per model on 2 CPU cores, so not all 18 × 3), runs on each distinct graph once
(RoBERTa builds BERT's and mT5 T5.1.1's), with the applications rotated: ``fit`` with
``jit_compile=True`` must lower the loss and its compiled ``predict`` must equal the eager
call; ``fit`` under both mixed policies (compiled as Keras compiles by default, with its
``LossScaleOptimizer`` for float16) must give finite losses.
"""

import contextlib
import functools

import keras
import numpy as np
import pytest

from keraformer.models import build_transformer_model
from tests.references import (ENCODERS, SEQ2SEQ, assert_builder_no_leak,
                              assert_builder_padding_invariant, config_for, tiny_configs)

ENCODER_CONFIG, T5_CONFIG = tiny_configs(50, type_vocab_size=2, attention_key_size=8)
APPLICATIONS = ("encoder", "lm", "unilm")
SPECS = [(m, a) for m in ENCODERS for a in APPLICATIONS] + [(m, None) for m in SEQ2SEQ]
# One application per distinct graph (RoBERTa and mT5 differ from BERT and T5.1.1 only in
# checkpoint names), rotated so that every application is trained.
TRAINED = [("bert", "unilm"), ("roformer", "encoder"), ("roformer_v2", "lm"),
           ("gau_alpha", "unilm"), ("t5", None), ("t5.1.1", None)]
MIXED = ("mixed_bfloat16", "mixed_float16")
STD = 0.5  # of the reference weights
# Largest |mixed - float32| allowed, relative to the float32 output scale max|y| (outputs
# compared as log-probabilities where the model gives probabilities). bfloat16 keeps 8
# significant bits (4e-3 per rounding; measured up to 3.7e-2 after two layers), float16 11
# bits (measured up to 5e-3).
MIXED_TOLERANCE = {"mixed_bfloat16": 6e-2, "mixed_float16": 1e-2}
JIT_TOLERANCE = 1e-5  # XLA fuses and reorders float32 reductions


def spec_id(spec):
    return "-".join(part for part in spec if part)


parametrize_specs = pytest.mark.parametrize("spec", SPECS, ids=spec_id)
parametrize_trained = pytest.mark.parametrize("spec", TRAINED, ids=spec_id)


@contextlib.contextmanager
def global_policy(name):
    """Build under dtype policy ``name``; always back to ``float32`` afterwards."""
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(autouse=True)
def float32_policy():
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


def build(spec, policy="float32"):
    """A fresh model of ``spec`` with random weights, built under dtype policy ``policy``."""
    model, application = spec
    with global_policy(policy):
        if application is None:
            return build_transformer_model(model=model, **T5_CONFIG)
        head = {"with_mlm": "linear"} if application == "unilm" else {}
        return build_transformer_model(model=model, application=application, **head,
                                       **config_for(model, ENCODER_CONFIG))


@functools.cache
def reference(spec):
    """The float32 model of ``spec`` (shared; never trained), its weights ~ N(0, STD²): the
    builders' initial std of 0.02 gives near-uniform probabilities that hide errors."""
    model = build(spec)
    rng = np.random.default_rng(0)
    model.set_weights([STD * rng.standard_normal(w.shape) for w in model.get_weights()])
    return model


def copy_of_reference(spec, policy="float32"):
    """A fresh model under ``policy`` carrying the float32 weights of ``reference(spec)``."""
    model = build(spec, policy)
    model.set_weights(reference(spec).get_weights())
    return model


@functools.cache
def mixed(spec, policy):
    """The shared (never trained) ``copy_of_reference`` under a mixed policy."""
    return copy_of_reference(spec, policy)


def batch(spec, length=8, seed=0):
    """Inputs and training targets (random hidden states for ``encoder``, next tokens
    otherwise): rows of 8, 5 and 2 real tokens, then a row of padding only."""
    rng = np.random.default_rng(seed)
    vocab = T5_CONFIG["vocab_size"]
    ids = rng.integers(2, vocab, (4, length)).astype("int32")
    for row, real in zip(ids, (length, 5, 2, 0)):
        row[real:] = 0
    if spec[1] is None:  # T5: decoder ids start at 0 (the start token), labels shifted left
        decoder = np.concatenate([np.zeros((4, 1), "int32"), ids[:, :-1]], axis=1)
        decoder[3] = 0
        return [ids, decoder], ids
    real = ids != 0
    segments = (real & (np.cumsum(real, axis=1) > real.sum(1, keepdims=True) // 2))
    if spec[1] == "encoder":
        target = rng.standard_normal((4, length, ENCODER_CONFIG["hidden_size"]))
        return [ids, segments.astype("int32")], target.astype("float32")
    next_ids = np.concatenate([ids[:, 1:], np.zeros((4, 1), "int32")], axis=1)
    return [ids, segments.astype("int32")], next_ids


def loss(spec):
    """MSE on hidden states; sparse cross-entropy on probabilities or (unilm) logits."""
    if spec[1] == "encoder":
        return keras.losses.MeanSquaredError()
    return keras.losses.SparseCategoricalCrossentropy(from_logits=spec[1] == "unilm")


def outputs(model, inputs):
    """Eager outputs as float32 NumPy."""
    return keras.ops.convert_to_numpy(keras.ops.cast(model(inputs), "float32"))


def fit_losses(model, spec, steps=2, **compile_options):
    """Losses of ``steps`` full-batch ``fit`` steps with SGD; all must be finite."""
    inputs, target = batch(spec)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss(spec), **compile_options)
    history = model.fit(inputs, target, epochs=steps, batch_size=4, verbose=0)
    losses = np.asarray(history.history["loss"])
    assert np.isfinite(losses).all(), losses
    return losses


# -- 1, 2: saving -------------------------------------------------------------------------
@parametrize_specs
def test_keras_file_round_trip_in_safe_mode(spec, tmp_path):
    model, (inputs, _) = reference(spec), batch(spec)
    path = str(tmp_path / "x.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode=True: no Lambda, no pickled code
    np.testing.assert_allclose(outputs(loaded, inputs), outputs(model, inputs), rtol=0,
                               atol=1e-6)


@parametrize_specs
def test_weights_file_round_trip(spec, tmp_path):
    model, (inputs, _) = reference(spec), batch(spec)
    path = str(tmp_path / "x.weights.h5")
    model.save_weights(path)
    fresh = build(spec)  # new random weights
    fresh.load_weights(path)
    np.testing.assert_allclose(outputs(fresh, inputs), outputs(model, inputs), rtol=0,
                               atol=1e-6)


# -- 3: XLA ---------------------------------------------------------------------------------
@parametrize_trained
def test_jit_compiled_fit_and_predict(spec):
    model, (inputs, _) = copy_of_reference(spec), batch(spec)
    eager = outputs(model, inputs)
    losses = fit_losses(model, spec, jit_compile=True)
    assert losses[-1] < losses[0], losses
    trained = outputs(model, inputs)
    assert np.abs(trained - eager).max() > 0  # the steps did update the weights
    predicted = model.predict(inputs, verbose=0)  # XLA-compiled, against the eager call
    np.testing.assert_allclose(predicted, trained, rtol=0, atol=JIT_TOLERANCE)


# -- 4: mixed precision -------------------------------------------------------------------
@pytest.mark.parametrize("policy", MIXED)
@parametrize_specs
def test_mixed_precision_is_close_to_float32(spec, policy):
    inputs, _ = batch(spec)
    want = outputs(reference(spec), inputs)
    got = outputs(mixed(spec, policy), inputs)
    assert np.isfinite(got).all()
    if spec[1] in ("lm", None):  # probabilities
        want, got = np.log(want), np.log(got)
    error = np.abs(got - want).max() / np.abs(want).max()
    assert error < MIXED_TOLERANCE[policy], error


@pytest.mark.parametrize("policy", MIXED)
@parametrize_trained
def test_mixed_precision_fit(spec, policy):
    model = copy_of_reference(spec, policy)
    fit_losses(model, spec)
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")  # Keras' default loss scaling for float16


# -- 5: fully masked rows -------------------------------------------------------------------
@pytest.mark.parametrize("policy", ("float32",) + MIXED)
@parametrize_specs
def test_fully_padded_row_is_finite(spec, policy):
    inputs, _ = batch(spec)
    assert not inputs[0][3].any()
    model = reference(spec) if policy == "float32" else mixed(spec, policy)
    assert np.isfinite(outputs(model, inputs)).all()


# -- 6: Keras masks on the outputs -----------------------------------------------------------
def real_positions(spec, inputs):
    """Which output positions are real: token id != 0 (for T5 the decoder ids, whose
    position 0, the start token, is real although its id is the padding id)."""
    if spec[1] is None:
        real = inputs[1] != 0
        real[:, 0] = True
        return real
    return inputs[0] != 0


@parametrize_specs
def test_mask_aware_pooling_after_the_output_ignores_padding(spec):
    """GlobalAveragePooling1D on the builder's output, with no mask passed by the user,
    averages over the real positions only (NumPy mean over them)."""
    model, (inputs, _) = reference(spec), batch(spec)
    pooled = keras.Model(model.inputs, keras.layers.GlobalAveragePooling1D()(model.output))
    got = keras.ops.convert_to_numpy(pooled(inputs))
    hidden, real = outputs(model, inputs), real_positions(spec, inputs)
    for row in range(3):  # row 3 is all padding: nothing to average
        np.testing.assert_allclose(got[row], hidden[row][real[row]].mean(0), rtol=1e-5,
                                   atol=1e-6)


def test_rnn_after_the_output_skips_padding():
    """An LSTM on BERT's output gives a right-padded row the state of its unpadded prefix."""
    spec = ("bert", "encoder")
    model, (inputs, _) = reference(spec), batch(spec)
    lstm = keras.layers.LSTM(3, seed=0)
    rnn = keras.Model(model.inputs, lstm(model.output))
    padded = keras.ops.convert_to_numpy(rnn(inputs))
    for row, real in ((1, 5), (2, 2)):
        ids, segments = inputs[0][row:row + 1, :real], inputs[1][row:row + 1, :real]
        short = keras.ops.convert_to_numpy(rnn([ids, segments]))
        np.testing.assert_allclose(padded[row], short[0], rtol=0, atol=1e-5)


# -- 7: padding and causality (BERT family) -------------------------------------------------
ENCODER_SPECS = [spec for spec in SPECS if spec[1] is not None]


@pytest.mark.parametrize("spec", ENCODER_SPECS, ids=spec_id)
def test_padding_does_not_change_real_positions(spec):
    (ids, segments), _ = batch(spec)
    assert_builder_padding_invariant(reference(spec), ids[:1], segments[:1], extra=5)


@pytest.mark.parametrize("spec", [s for s in ENCODER_SPECS if s[1] != "encoder"], ids=spec_id)
def test_no_leak_from_future_positions(spec):
    (ids, segments), _ = batch(spec)  # row 0: 8 real tokens, target segment from 4 on
    assert_builder_no_leak(reference(spec), ids[:1], segments[:1], split=6,
                           vocab=ENCODER_CONFIG["vocab_size"], moved=1e-6)  # saturated probs
