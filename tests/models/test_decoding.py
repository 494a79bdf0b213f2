"""Cached decoding of BERT, RoBERTa, RoFormer and RoFormerV2 ``lm``/``unilm`` builders.

Reference: the full Keras model run on each (unpadded) prompt plus the tokens so far
(unilm: generated tokens are segment 1). The cached steps, fed random tokens and random beam
parents, must give the full model's log-probabilities at every row's last position (atol
1e-4: float32, different summation order); greedy ``builder.generate`` must give the tokens of
step-by-step argmax decoding with the full model; the cached and uncached (whole model every
step) engines must give identical tokens for greedy and beam search. Prompts are right-padded
to one width with different lengths, so positions (absolute for BERT, rotary for RoFormer) and
padding masks are exercised. Weights are random N(0, 0.2²) with unit-norm token embeddings
(random tiny models otherwise repeat one high-norm token).
"""

import keras
import numpy as np
import pytest

from keraformer.models import build_transformer_model
from keraformer.models.decoding import language_model_decoder

VOCAB, END, MAX_LENGTH = 40, 3, 6
CONFIG = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=24, max_position_embeddings=16, type_vocab_size=2,
              hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
FAMILIES = {"bert": {}, "roberta": {}, "roformer": {"embedding_size": 12}, "roformer_v2": {}}
CASES = [(model, application) for model in FAMILIES for application in ("lm", "unilm")]


def random_weights(builder, seed=0):
    rng = np.random.default_rng(seed)
    for variable in builder.model.weights:
        value = rng.normal(0.0, 0.2, variable.shape)
        if "gamma" in variable.path:
            value += 1.0
        if variable is builder.token_embedding.embeddings:
            value /= np.linalg.norm(value, axis=1, keepdims=True)
        variable.assign(value.astype(variable.dtype))
    if hasattr(builder, "mlm_bias"):
        bias = np.zeros(VOCAB, "float32")
        bias[END] = 1.0  # some sequences end early
        builder.mlm_bias.bias.assign(bias)


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def builder(request):
    model, application = request.param
    builder = build_transformer_model(model=model, application=application,
                                      return_keras_model=False,
                                      **{**CONFIG, **FAMILIES[model]})
    random_weights(builder)
    return builder


def prompts(seed=1):
    """Four prompts of 1-5 tokens (ids 4..VOCAB-1), right-padded with 0 to width 5."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, VOCAB, (4, 5)).astype("int32")
    for row, length in zip(ids, (5, 2, 4, 1)):
        row[length:] = 0
    return ids


def full_model_greedy(builder, ids, max_length, end_id):
    """Step-by-step greedy decoding with the whole model on each unpadded row."""
    unilm = builder.application == "unilm"
    results = []
    for row in ids:
        tokens = list(row[row != 0])
        segments = [0] * len(tokens)
        generated = []
        for _ in range(max_length):
            probs = builder.model([np.array([tokens], "int32"), np.array([segments], "int32")])
            token = int(np.argmax(np.asarray(probs)[0, -1]))
            generated.append(token)
            if token == end_id:
                break
            tokens.append(token)
            segments.append(1 if unilm else 0)
        results.append(generated + [0] * (max_length - len(generated)))
    return np.array(results)


def full_model_log_probs(builder, prompt, generated):
    """Log-probabilities of the full model after one unpadded prompt and generated tokens."""
    tokens = list(prompt[prompt != 0]) + list(generated)
    segments = [0] * (len(tokens) - len(generated)) + [
        1 if builder.application == "unilm" else 0] * len(generated)
    probs = builder.model([np.array([tokens], "int32"), np.array([segments], "int32")])
    return np.log(np.asarray(probs, "float64")[0, -1])


def test_cached_steps_follow_the_full_model(builder):
    """Random tokens and random beam parents (3 beams): each row's log-probabilities equal
    the full model's on that row's own history."""
    decoder = language_model_decoder(builder)
    ids, beams, steps = prompts(), 3, 4
    lengths = (ids != 0).sum(1).astype("int32")
    rng = np.random.default_rng(5)
    # room for steps + 1 generated tokens: the last one is never fed back
    log_probs, cache = decoder.prefill(ids, np.zeros_like(ids), lengths, steps + 1, beams)
    expected = [full_model_log_probs(builder, row, []) for row in ids]
    np.testing.assert_allclose(np.asarray(log_probs), expected, atol=1e-4, rtol=0)
    histories = [[] for _ in range(len(ids) * beams)]
    for index in range(steps):
        parents = (np.arange(len(ids))[:, None] * beams
                   + rng.integers(0, beams, (len(ids), beams))).reshape(-1).astype("int32")
        tokens = rng.integers(4, VOCAB, len(histories)).astype("int32")
        histories = [histories[p] + [int(t)] for p, t in zip(parents, tokens)]
        log_probs, cache = decoder.step(tokens[:, None], np.int32(index), cache, parents)
        expected = [full_model_log_probs(builder, ids[row // beams], history)
                    for row, history in enumerate(histories)]
        np.testing.assert_allclose(np.asarray(log_probs), expected, atol=1e-4, rtol=0)


def test_greedy_equals_full_model_decoding(builder):
    ids = prompts()
    expected = full_model_greedy(builder, ids, MAX_LENGTH, END)
    ours = builder.generate(ids, max_length=MAX_LENGTH, end_id=END)
    np.testing.assert_array_equal(ours, expected[:, :ours.shape[1]])
    assert (expected[:, ours.shape[1]:] == 0).all()


def test_cached_equals_uncached(builder):
    ids = prompts(seed=2)
    for method, options in (("greedy", {}), ("beam", {"beam_size": 3})):
        cached = builder.generate(ids, max_length=MAX_LENGTH, method=method, end_id=END,
                                  **options)
        full = builder.generate(ids, max_length=MAX_LENGTH, method=method, end_id=END,
                                use_cache=False, **options)
        np.testing.assert_array_equal(cached, full)


def test_unilm_segments_are_used():
    """A unilm prompt whose last tokens are segment 1 (a target already begun) decodes as
    the full model does with those segments, and differently from an all-segment-0 prompt."""
    builder = build_transformer_model(model="bert", application="unilm",
                                      return_keras_model=False, **CONFIG)
    random_weights(builder, seed=3)
    ids = np.array([[5, 9, 12, 7, 30]], "int32")
    segments = np.array([[0, 0, 0, 1, 1]], "int32")
    ours = builder.generate(ids, segments, max_length=4)
    tokens, segs, expected = list(ids[0]), list(segments[0]), []
    for _ in range(4):
        probs = np.asarray(builder.model([np.array([tokens]), np.array([segs])]))
        expected.append(int(np.argmax(probs[0, -1])))
        tokens.append(expected[-1])
        segs.append(1)
    assert ours[0].tolist() == expected
    assert not np.array_equal(builder.generate(ids, max_length=4), ours)


@pytest.mark.parametrize("application", ["lm", "unilm"])
def test_without_segment_embedding(application):
    """``segment_vocab_size=0``: ``lm`` takes token ids alone, ``unilm`` still takes segments
    for its mask; cached greedy decoding equals step-by-step argmax of the full model and
    the uncached engine."""
    builder = build_transformer_model(model="bert", application=application,
                                      segment_vocab_size=0, return_keras_model=False,
                                      **CONFIG)
    random_weights(builder, seed=4)
    ids = prompts()
    ours = builder.generate(ids, max_length=MAX_LENGTH, end_id=END)
    np.testing.assert_array_equal(
        ours, builder.generate(ids, max_length=MAX_LENGTH, end_id=END, use_cache=False))
    for row, generated in zip(ids, ours):
        tokens = list(row[row != 0])
        segments = [0] * len(tokens)
        for token in generated[generated != 0]:
            probs = builder.model(builder.model_inputs(np.array([tokens], "int32"),
                                                       np.array([segments], "int32")))
            assert int(np.argmax(np.asarray(probs)[0, -1])) == token
            tokens.append(int(token))
            segments.append(1 if application == "unilm" else 0)


@pytest.mark.parametrize("options", [dict(model="bert", application="encoder"),
                                     dict(model="bert", application="lm", with_mlm=False),
                                     dict(model="roformer", application="lm",
                                          attention="linear"),
                                     dict(model="roformer", application="lm",
                                          entropy_scaling=True)])
def test_builders_that_cannot_generate_say_why(options):
    builder = build_transformer_model(return_keras_model=False, **options, **CONFIG)
    with pytest.raises(ValueError, match="application|with_mlm|attention|entropy_scaling"):
        builder.generate(prompts(), max_length=3)


def test_the_compiled_loops_are_reused():
    builder = build_transformer_model(model="roformer_v2", application="lm",
                                      return_keras_model=False, **CONFIG)
    first = builder.generate(prompts(), max_length=4)
    decoder = builder.language_model_decoder
    compiled = dict(decoder.cached.compiled)
    np.testing.assert_array_equal(builder.generate(prompts(), max_length=4), first)
    assert decoder.cached.compiled == compiled and len(compiled) == 1
    assert keras.backend.backend() in ("tensorflow", "jax")


def test_unilm_model_generates_saves_and_round_trips(tmp_path):
    """``build_transformer_model(application="unilm")`` returns a ``keras.Model`` that
    generates the tokens of step-by-step greedy decoding with the full model, writes a
    directory ``transformers``' ``BertForMaskedLM`` loads to the same probabilities (all
    segment 0, where the UniLM mask is bidirectional: atol 1e-5), and survives a ``.keras``
    round trip in safe mode with its generate."""
    import torch
    import transformers

    model = build_transformer_model(model="bert", application="unilm", **CONFIG)
    assert isinstance(model, keras.Model)
    builder = model.builder
    random_weights(builder, seed=3)
    ids = prompts(seed=4)
    generated = model.generate(ids, max_length=MAX_LENGTH, end_id=END)
    expected = full_model_greedy(builder, ids, MAX_LENGTH, END)
    np.testing.assert_array_equal(generated, expected[:, :generated.shape[1]])
    model.save_pretrained(str(tmp_path / "hf"))
    hf = transformers.BertForMaskedLM.from_pretrained(str(tmp_path / "hf")).eval()
    segments = np.zeros_like(ids)
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(ids != 0, dtype=torch.long),
                    token_type_ids=torch.tensor(segments, dtype=torch.long)).logits.numpy()
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ours = np.asarray(model.predict([ids, segments], verbose=0))
    real = ids != 0
    np.testing.assert_allclose(ours[real], probs[real], atol=1e-5, rtol=0)
    model.save(str(tmp_path / "unilm.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "unilm.keras"))
    np.testing.assert_allclose(np.asarray(loaded.predict([ids, segments], verbose=0)), ours,
                               atol=1e-6)
    np.testing.assert_array_equal(loaded.generate(ids, max_length=MAX_LENGTH, end_id=END),
                                  generated)
