"""Hostile generation arguments: each is refused where it enters, by a ValueError or TypeError
that names the argument, before anything is compiled; boundary values that are valid decode.

Engine-level cases drive ``keraformer.generation.generate`` with a two-line toy step; builder
cases use tiny T5 and BERT ``lm`` builders (their ids, segments, positions and config ids).
"""

import math

import numpy as np
import pytest
from keras import ops

from keraformer import generation
from keraformer.models import build_transformer_model
from tests.references import assert_refused, crf_path_scores, refusal_cases

VOCAB = 5
LOGITS = np.random.default_rng(0).normal(size=(VOCAB, VOCAB)).astype("float32")


def toy_step(token_ids, index, cache, parents):
    logits = ops.take(ops.convert_to_tensor(LOGITS), token_ids[:, 0], axis=0)
    return ops.log_softmax(logits, axis=-1), cache


def toy_generate(method="greedy", max_length=4, end_id=1, rows=2, **options):
    log_probs = ops.log_softmax(ops.convert_to_tensor(LOGITS[:rows]), axis=-1)
    return generation.generate(toy_step, {"unused": ops.zeros((rows, 1))}, log_probs, end_id,
                               max_length=max_length, method=method, vocab_size=VOCAB,
                               **options)


ENGINE_CASES = [
    # (arguments, error type, the argument the message must name)
    (dict(method="nucleus"), ValueError, "method"),
    (dict(method=None), ValueError, "method"),
    (dict(max_length=0), ValueError, "max_length"),
    (dict(max_length=2.5), TypeError, "max_length"),
    (dict(max_length=True), TypeError, "max_length"),
    (dict(min_length=-1), ValueError, "min_length"),
    (dict(min_length=5, max_length=4), ValueError, "min_length"),
    (dict(method="beam", beam_size=0), ValueError, "beam_size"),
    (dict(method="beam", beam_size=2.0), TypeError, "beam_size"),
    (dict(method="sample", top_k=0), ValueError, "top_k"),
    (dict(method="sample", top_k=VOCAB + 1), ValueError, "top_k"),
    (dict(method="sample", top_p=0.0), ValueError, "top_p"),
    (dict(method="sample", top_p=1.5), ValueError, "top_p"),
    (dict(method="sample", top_p=math.nan), ValueError, "top_p"),
    (dict(method="sample", top_p="0.9"), TypeError, "top_p"),
    (dict(method="sample", temperature=0.0), ValueError, "temperature"),
    (dict(method="sample", temperature=-1.0), ValueError, "temperature"),
    (dict(method="sample", temperature=math.nan), ValueError, "temperature"),
    (dict(method="sample", temperature=math.inf), ValueError, "temperature"),
    (dict(method="beam", length_penalty=math.nan), ValueError, "length_penalty"),
    (dict(method="beam", length_penalty=-math.inf), ValueError, "length_penalty"),
    (dict(method="beam", early_stopping="sometimes"), ValueError, "early_stopping"),
    (dict(method="beam", early_stopping=1), ValueError, "early_stopping"),
    (dict(end_id=VOCAB), ValueError, "end_id"),
    (dict(end_id=-1), ValueError, "end_id"),
    (dict(end_id=1.0), TypeError, "end_id"),
    (dict(pad_id=VOCAB), ValueError, "pad_id"),
    (dict(top_p=0.9), ValueError, "top_p"),  # would be ignored by greedy search
    (dict(method="sample", beam_size=4), ValueError, "beam_size"),
    (dict(method="beam", temperature=0.7), ValueError, "temperature"),
    (dict(topp=0.9), TypeError, "top_p"),  # misspelt: the message suggests the right name
    (dict(method="sample", seed=-1), ValueError, "seed"),
    (dict(method="sample", seed=1.5), TypeError, "seed"),
    (dict(loop="gpu"), ValueError, "loop"),
    (dict(loop="device", compile=False), ValueError, "loop"),
    (dict(compile="yes"), TypeError, "compile"),
]


@pytest.mark.parametrize("arguments,error,name", ENGINE_CASES,
                         ids=[f"{n}-{i}" for i, (_, _, n) in enumerate(ENGINE_CASES)])
def test_engine_refuses_bad_arguments(arguments, error, name):
    with pytest.raises(error, match=f"`{name}`"):
        toy_generate(**arguments)


def test_log_probs_must_be_batch_by_vocab():
    with pytest.raises(ValueError, match="`log_probs`"):
        generation.generate(toy_step, {}, np.zeros((VOCAB,), "float32"), None, max_length=2)
    with pytest.raises(ValueError, match="`log_probs`"):
        generation.generate(toy_step, {}, np.zeros((2, VOCAB + 1), "float32"), None,
                            max_length=2, vocab_size=VOCAB)


@pytest.mark.parametrize("arguments", [dict(method="sample", top_p=1.0, seed=0),
                                       dict(method="sample", top_k=VOCAB, seed=0),
                                       dict(min_length=4, max_length=4),
                                       dict(method="beam", beam_size=1, length_penalty=-2.0),
                                       dict(end_id=None, pad_id=VOCAB - 1)])
def test_boundary_values_decode(arguments):
    out = toy_generate(**arguments)
    assert out.dtype == np.int32 and out.shape[0] == 2 and 1 <= out.shape[1] <= 4
    assert ((out >= 0) & (out < VOCAB)).all()


T5_CONFIG = dict(vocab_size=12, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2,
                 relative_attention_num_buckets=8, relative_attention_max_distance=16,
                 dropout_rate=0.0)
BERT_CONFIG = dict(vocab_size=12, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=8, max_position_embeddings=8, type_vocab_size=2)


@pytest.fixture(scope="module")
def t5():
    return build_transformer_model(model="t5.1.1", application="seq2seq",
                                   return_keras_model=False, **T5_CONFIG)


@pytest.fixture(scope="module")
def lm():
    return build_transformer_model(model="bert", application="lm", return_keras_model=False,
                                   **BERT_CONFIG)


GOOD = np.array([[3, 4, 5], [6, 7, 0]], "int32")
T5_CASES = [
    (dict(token_ids=np.array([[3, 12]])), ValueError, "token_ids"),
    (dict(token_ids=np.array([[3, -1]])), ValueError, "token_ids"),
    (dict(token_ids=np.array([[3.0, 4.0]])), TypeError, "token_ids"),
    (dict(token_ids=np.array([3, 4])), ValueError, "token_ids"),
    (dict(end_id=12), ValueError, "end_id"),
    (dict(use_cache=False, compile=True), ValueError, "compile"),
    (dict(use_cache="no"), TypeError, "use_cache"),
]


@pytest.mark.parametrize("arguments,error,name", T5_CASES,
                         ids=[f"{n}-{i}" for i, (_, _, n) in enumerate(T5_CASES)])
def test_t5_generate_refuses(t5, arguments, error, name):
    arguments = {"token_ids": GOOD, **arguments}
    with pytest.raises(error, match=f"`{name}`"):
        t5.generate(max_length=3, **arguments)


def test_t5_start_id_from_the_config_must_be_in_the_vocabulary():
    # refused when the builder reads its config, before any generation
    with pytest.raises(ValueError, match="`decoder_start_token_id`"):
        build_transformer_model(model="t5.1.1", application="seq2seq",
                                return_keras_model=False, decoder_start_token_id=40,
                                **T5_CONFIG)


LM_CASES = [
    (dict(token_ids=np.array([[3, 0, 5]])), ValueError, "token_ids"),  # padding inside
    (dict(token_ids=np.array([[3, 4], [0, 0]])), ValueError, "token_ids"),  # empty prompt
    (dict(token_ids=np.array([[3, 12]])), ValueError, "token_ids"),
    (dict(token_ids=np.array([[]], "int32")), ValueError, "token_ids"),
    (dict(segment_ids=np.zeros((2, 2), "int32")), ValueError, "segment_ids"),
    (dict(segment_ids=np.full((2, 3), 2)), ValueError, "segment_ids"),
    (dict(segment_ids=np.zeros((2, 3), "float32")), TypeError, "segment_ids"),
    (dict(max_length=7), ValueError, "max_length"),  # 3 + 7 - 1 positions > 8
    (dict(end_id=12), ValueError, "end_id"),
    (dict(method="beam", beam_size=-2), ValueError, "beam_size"),
]


@pytest.mark.parametrize("arguments,error,name", LM_CASES,
                         ids=[f"{n}-{i}" for i, (_, _, n) in enumerate(LM_CASES)])
def test_lm_generate_refuses(lm, arguments, error, name):
    arguments = {"token_ids": GOOD, "max_length": 3, **arguments}
    with pytest.raises(error, match=f"`{name}`"):
        lm.generate(**arguments)


# -- viterbi_decode: (length, labels) scores, (labels, labels) transitions --------------------

LABELS = 3
EMISSIONS = np.random.default_rng(1).normal(size=(4, LABELS))
TRANSITIONS = np.random.default_rng(2).normal(size=(LABELS, LABELS))


def with_entry(array, index, value):
    array = np.array(array, "float64")
    array[index] = value
    return array


VITERBI_BAD = [
    (dict(starts=[1.5]), TypeError, "starts"),
    (dict(starts=[2.0]), TypeError, "starts"),  # whole, but a float: no silent truncation
    (dict(starts=np.array([0.5, 1.0])), TypeError, "starts"),
    (dict(starts=[True]), TypeError, "starts"),
    (dict(starts=1), TypeError, "starts"),
    (dict(starts="1"), TypeError, "starts"),
    (dict(starts=[[0, 1]]), TypeError, "starts"),
    (dict(starts=[LABELS]), ValueError, "starts"),
    (dict(starts=[-1]), ValueError, "starts"),
    (dict(ends=[0.5]), TypeError, "ends"),
    (dict(ends=[]), ValueError, "ends"),
    (dict(scores=with_entry(EMISSIONS, (2, 1), np.nan)), ValueError, "scores", "scores NaN"),
    (dict(scores=with_entry(EMISSIONS, (0, 0), np.inf)), ValueError, "scores", "scores +inf"),
    (dict(scores=EMISSIONS > 0), TypeError, "scores", "scores bool"),
    (dict(scores=EMISSIONS.astype(str)), TypeError, "scores", "scores str"),
    (dict(scores=[[0.0, 1.0, 2.0], [1.0]]), TypeError, "scores", "scores ragged"),
    (dict(scores=EMISSIONS[0]), ValueError, "scores", "scores 1-D"),
    (dict(transitions=with_entry(TRANSITIONS, (1, 2), np.nan)), ValueError, "transitions",
     "transitions NaN"),
    (dict(transitions=with_entry(TRANSITIONS, (0, 0), np.inf)), ValueError, "transitions",
     "transitions +inf"),
    (dict(transitions=TRANSITIONS[:, :2]), ValueError, "transitions", "transitions (3, 2)"),
    (dict(transitions=TRANSITIONS[None]), ValueError, "transitions", "transitions 3-D"),
    (dict(mask=np.full(4, 0.5)), ValueError, "mask", "mask 0.5"),
    (dict(mask=np.full(4, 2)), ValueError, "mask", "mask 2"),
    (dict(mask=np.ones(5, bool)), ValueError, "mask", "mask too long"),
    (dict(mask=np.ones((1, 4), bool)), ValueError, "mask", "mask (1, length)"),
]


@pytest.mark.parametrize("target, kwargs, error, name", refusal_cases(
    generation.viterbi_decode, VITERBI_BAD, {"scores": EMISSIONS, "transitions": TRANSITIONS}))
def test_viterbi_decode_refuses_bad_arguments_by_name(target, kwargs, error, name):
    assert_refused(target, kwargs, error, name)


@pytest.mark.parametrize("starts", [[0, 2], np.array([0, 2], "int64"), (np.int32(0), 2),
                                    ops.convert_to_tensor([0, 2])],
                         ids=["list", "int64 array", "numpy ints", "tensor"])
def test_viterbi_decode_takes_integer_labels_in_any_container(starts):
    paths = crf_path_scores(EMISSIONS, TRANSITIONS, starts=[0, 2], ends=[1])
    got = generation.viterbi_decode(EMISSIONS, TRANSITIONS, starts=starts, ends=[1])
    assert tuple(got) == max(paths, key=paths.get)


def test_viterbi_decode_never_takes_a_transition_of_minus_infinity():
    """-inf rules a transition out (the path is the best of the others, brute force), as
    -inf rules a label out at one position; integer scores are scores."""
    forbidden = with_entry(TRANSITIONS, (slice(None), 0), -np.inf)  # nothing goes to label 0
    scores = with_entry(EMISSIONS, (1, 2), -np.inf)  # label 2 ruled out at position 1
    paths = {path: score for path, score in crf_path_scores(scores, forbidden).items()
             if np.isfinite(score)}
    got = generation.viterbi_decode(scores, forbidden)
    assert tuple(got) == max(paths, key=paths.get) and got[1] != 2 and 0 not in got[1:]
    whole = np.round(EMISSIONS * 10).astype("int64")
    paths = crf_path_scores(whole, TRANSITIONS)
    assert tuple(generation.viterbi_decode(whole, TRANSITIONS)) == max(paths, key=paths.get)
