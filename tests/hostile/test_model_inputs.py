"""Hostile ids and shapes at the builders' models: what Keras would cast, broadcast or reach
with a backend message is refused where it enters, naming the argument.

Keras casts each input to its ``Input``'s int32 before a layer sees it, so a fractional id
(``7.9``) used to become ``7``, and a segment batch of 1 broadcast against a token batch of 2.
Eager calls and ``predict``/``fit``/``evaluate`` on arrays now refuse them by name, on both
backends; in traced code (a ``tf.data`` pipeline under XLA or JAX ``jit``) a fractional id
becomes NaN output in its row, like any id outside the vocabulary (``test_ids.py``).

The T5 decoder's two-input form, ``decoder.predict([encoder.predict(src), tgt])``, attended
to the padded source positions (the NumPy encoder output carries no mask): it is refused by
name, and the forms that know the padding give the masked result of ``builder.model``
(itself checked against ``transformers`` in ``tests/models/test_t5.py``).
"""

import keras
import numpy as np
import pytest

from keraformer.models import build_transformer_model
from tests.references import compiled

BACKEND = keras.backend.backend()
VOCAB, TYPES, POSITIONS = 20, 2, 8
TOKENS = np.array([[2, 5, 6, 3], [2, 7, 8, 3]], dtype="int32")
SEGMENTS = np.array([[0, 0, 1, 1], [0, 0, 0, 1]], dtype="int32")


def tiny_bert():
    return build_transformer_model(model="bert", vocab_size=VOCAB, type_vocab_size=TYPES,
                                   hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=16, max_position_embeddings=POSITIONS)


@pytest.fixture(scope="module")
def bert():
    """One model for every case: each input is refused before Keras runs anything (a JAX
    model is left unusable by an error inside its compiled step), and it still answers
    correctly afterwards (checked at the end of each case)."""
    model = tiny_bert()
    return model, np.asarray(model([TOKENS, SEGMENTS]))


def fractional_tokens():
    tokens = TOKENS.astype("float32")
    tokens[0, 1] = 7.9
    return tokens



# (description, token_ids, segment_ids, error, message): each case in an eager call and in
# predict
CASES = [
    ("fractional float token id", fractional_tokens(), SEGMENTS, ValueError,
     r"`token_ids` must be whole numbers .* such as 7\.9"),
    ("fractional float segment id", TOKENS, SEGMENTS + 0.5, ValueError,
     r"`segment_ids` must be whole numbers"),
    ("segment batch 1 for token batch 2", TOKENS, SEGMENTS[:1], ValueError,
     r"`segment_ids` must have the batch size of `token_ids`, 2; received shape \(1, 4\)"),
    ("token batch 1 for segment batch 2", TOKENS[:1], SEGMENTS, ValueError,
     r"`segment_ids` must have the batch size of `token_ids`, 1"),
    ("segment length 3 for token length 4", TOKENS, SEGMENTS[:, :3], ValueError,
     r"`token_ids` and `segment_ids` must have one length"),
    ("ragged token list", [[2, 5, 3], [2, 3]], SEGMENTS, ValueError,
     r"`token_ids` must be a rectangular \(batch, length\) array"),
    ("ragged segment list", TOKENS, [[0, 0, 0, 0], [0]], ValueError,
     r"`segment_ids` must be a rectangular"),
    ("string ids", np.array([["a", "b", "c", "d"]] * 2), SEGMENTS, TypeError,
     r"`token_ids` must hold integer ids; received dtype <U1"),
    ("boolean ids", TOKENS > 3, SEGMENTS, TypeError, r"`token_ids` must hold integer ids"),
    ("length 0", np.zeros((2, 0), "int32"), np.zeros((2, 0), "int32"), ValueError,
     r"`token_ids` must hold at least one sequence .* \(length 0\)"),
    ("batch 0", np.zeros((0, 4), "int32"), np.zeros((0, 4), "int32"), ValueError,
     r"`token_ids` must hold at least one sequence .* \(batch size 0\)"),
    ("one axis", TOKENS[0], SEGMENTS[0], ValueError,
     r"`token_ids` must have shape \(batch, length\); received shape \(4,\)"),
    ("length above max_position_embeddings", np.ones((1, POSITIONS + 3), "int32"),
     np.zeros((1, POSITIONS + 3), "int32"), ValueError,
     r"`token_ids` has length 11, above the model's limit of 8 positions"),
]
CASE_IDS = [case[0] for case in CASES]


def assert_still_right(bert):
    model, reference = bert
    np.testing.assert_allclose(np.asarray(model([TOKENS, SEGMENTS])), reference, atol=1e-6,
                               rtol=0)


@pytest.mark.parametrize("what, tokens, segments, error, message", CASES, ids=CASE_IDS)
def test_eager_call_refuses_by_name(bert, what, tokens, segments, error, message):
    with pytest.raises(error, match=message):
        bert[0]([tokens, segments])
    assert_still_right(bert)


@pytest.mark.parametrize("what, tokens, segments, error, message", CASES, ids=CASE_IDS)
def test_predict_refuses_by_name(bert, what, tokens, segments, error, message):
    with pytest.raises(error, match=message):
        bert[0].predict([tokens, segments], verbose=0)
    assert_still_right(bert)


def test_fit_and_evaluate_refuse_fractional_ids():
    model = tiny_bert()
    model.compile(optimizer="sgd", loss="mse")
    target = np.zeros((2, 4, 8), "float32")
    for run in (model.fit, model.evaluate):
        with pytest.raises(ValueError, match="`token_ids` must be whole numbers"):
            run([fractional_tokens(), SEGMENTS], target, verbose=0)


def test_eager_tensors_are_checked_too(bert):
    with pytest.raises(ValueError, match="`token_ids` must be whole numbers"):
        bert[0]([keras.ops.convert_to_tensor(fractional_tokens()),
                 keras.ops.convert_to_tensor(SEGMENTS)])


def test_whole_float_ids_and_nested_lists_give_the_int_result(bert):
    model, reference = bert
    np.testing.assert_allclose(np.asarray(model([TOKENS.astype("float32"), SEGMENTS])),
                               reference, atol=1e-6, rtol=0)
    np.testing.assert_allclose(model.predict([TOKENS.tolist(), SEGMENTS.tolist()], verbose=0),
                               reference, atol=1e-6, rtol=0)


def test_compiled_fractional_id_gives_nan_in_its_row_only(bert):
    """Traced code cannot raise: the fractional id becomes -1 (not 7), which the embedding
    turns into NaN in that row; the other row equals the eager result."""
    model, reference = bert
    out = np.asarray(compiled(lambda t, s: model([t, s]))(fractional_tokens(),
                                                            SEGMENTS.astype("float32")))
    assert np.isnan(out[0]).all()
    np.testing.assert_allclose(out[1], reference[1], atol=1e-6, rtol=0)


def test_max_position_is_the_boundary(bert):
    model = bert[0]
    ok = model([np.ones((1, POSITIONS), "int32"), np.zeros((1, POSITIONS), "int32")])
    assert np.isfinite(np.asarray(ok)).all()


def test_hierarchical_positions_lift_the_limit():
    model = build_transformer_model(model="bert", vocab_size=VOCAB, type_vocab_size=TYPES,
                                    hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=16, max_position_embeddings=4,
                                    hierarchical_position=True)
    ids = np.ones((1, 16), "int32")
    assert np.asarray(model([ids, 0 * ids])).shape == (1, 16, 8)
    with pytest.raises(ValueError, match="`token_ids` has length 17, above the model's limit "
                                         "of 16 positions"):
        model([np.ones((1, 17), "int32"), np.zeros((1, 17), "int32")])


def test_reloaded_model_keeps_the_checks(bert, tmp_path):
    model, reference = bert
    path = str(tmp_path / "bert.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(reloaded([TOKENS, SEGMENTS])), reference, atol=1e-6,
                               rtol=0)
    with pytest.raises(ValueError, match="`segment_ids` must have the batch size"):
        reloaded.predict([TOKENS, SEGMENTS[:1]], verbose=0)


def test_t5_model_names_encoder_and_decoder_ids():
    model = build_transformer_model(model="t5.1.1", vocab_size=VOCAB, d_model=8, d_kv=4,
                                    d_ff=16, num_layers=1, num_heads=2)
    encoder = np.array([[5, 6, 1, 0]], "int32")
    with pytest.raises(ValueError, match="`decoder_token_ids` must have the batch size of "
                                         "`encoder_token_ids`, 1"):
        model([encoder, np.zeros((2, 3), "int32")])
    with pytest.raises(ValueError, match="`encoder_token_ids` must be whole numbers"):
        model.predict([encoder + 0.25, np.zeros((1, 3), "int32")], verbose=0)
    # the two T5 lengths differ legitimately
    assert np.asarray(model([encoder, np.zeros((1, 3), "int32")])).shape == (1, 3, VOCAB)


# -- the T5 decoder's two-input form ---------------------------------------------------------

@pytest.fixture(scope="module")
def t5():
    builder = build_transformer_model(model="t5.1.1", vocab_size=VOCAB, d_model=16, d_kv=4,
                                      d_ff=32, num_layers=1, num_heads=2,
                                      return_keras_model=False)
    source = np.array([[5, 6, 7, 1, 0, 0], [5, 6, 7, 8, 9, 1]], "int32")  # row 0 padded
    target = np.array([[0, 4, 5], [0, 6, 7]], "int32")
    return builder, source, target, builder.model.predict([source, target], verbose=0)


def test_decoder_predict_on_numpy_encoder_output_is_refused(t5):
    builder, source, target, _ = t5
    hidden = builder.encoder.predict(source, verbose=0)
    with pytest.raises(ValueError, match="`encoder_output` carries no padding mask"):
        builder.decoder.predict([hidden, target], verbose=0)
    with pytest.raises(ValueError, match="`encoder_output` carries no padding mask"):
        builder.decoder([hidden, target])


def test_unmasked_result_differs_from_the_masked_one(t5):
    """Why the refusal: with every source position attended to (the source ids given as all
    real), the padded row's result moves away from the masked one."""
    builder, source, target, want = t5
    hidden = builder.encoder.predict(source, verbose=0)
    unmasked = builder.decoder.predict([hidden, target, np.ones_like(source)], verbose=0)
    assert np.abs(unmasked[0] - want[0]).max() > 1e-4
    np.testing.assert_allclose(unmasked[1], want[1], atol=1e-5, rtol=0)  # no padding


def test_decoder_forms_that_know_the_padding_equal_the_full_model(t5):
    builder, source, target, want = t5
    hidden = builder.encoder.predict(source, verbose=0)
    got = builder.decoder.predict([hidden, target, source], verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    eager = np.asarray(builder.decoder([builder.encoder(source), target]))
    np.testing.assert_allclose(eager, want, atol=1e-5, rtol=0)
    src = keras.Input((None,), dtype="int32")
    tgt = keras.Input((None,), dtype="int32")
    composed = keras.Model([src, tgt], builder.decoder([builder.encoder(src), tgt]))
    np.testing.assert_allclose(composed.predict([source, target], verbose=0), want, atol=1e-5,
                               rtol=0)
