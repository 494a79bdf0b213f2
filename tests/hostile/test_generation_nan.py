"""Generation from NaN scores, and from a temperature too small for float32.

Greedy search took ``argmax`` of a NaN row (an ordinary-looking id: the last one on one
backend, 0 on another), and sampling inverted a NaN distribution (id 0): NaN scores at any
step now make ``generate`` raise a ``ValueError`` naming the generated position, in every
loop (device, host, uncompiled) and method. A temperature of ``1e-300`` is 0 in float32, so
the scaled scores were NaN and the draw arbitrary: temperatures below float32's smallest
normal number are refused by name, and any accepted one, however small, samples the top token
only (it equals greedy search, an independent path through ``argmax``).
"""

import numpy as np
import pytest
from keras import ops

from keraformer import generation
from keraformer.models import build_transformer_model

VOCAB, ROWS = 7, 3
LOGITS = np.random.default_rng(0).normal(size=(VOCAB, VOCAB)).astype("float32") * 3


def step_with_nan_at(position, row=None):
    """A toy step (the next token's scores depend on the last token) whose scores for
    generated token ``position`` are NaN (in ``row`` only, or in every row)."""
    def step(token_ids, index, cache, parents):
        log_probs = ops.log_softmax(ops.take(ops.convert_to_tensor(LOGITS), token_ids[:, 0],
                                             axis=0), axis=-1)
        rows = ops.arange(ops.shape(log_probs)[0])
        hit = ops.equal(index + 1, position)
        if row is not None:
            hit = ops.logical_and(hit, ops.equal(rows, row))
        return ops.where(hit[..., None] if row is not None else hit, np.nan, log_probs), cache
    return step


def first_scores(nan=False):
    log_probs = ops.log_softmax(ops.convert_to_tensor(LOGITS[:ROWS]), axis=-1)
    return ops.where(nan, np.nan, log_probs)


LOOPS = [dict(loop="device"), dict(loop="host"), dict(compile=False)]
GREEDY, SAMPLE, BEAM = (dict(method="greedy"), dict(method="sample", top_p=0.9, seed=3),
                        dict(method="beam", beam_size=2))
MODES = [(GREEDY, loop) for loop in LOOPS] + [(SAMPLE, LOOPS[0]), (SAMPLE, LOOPS[2]),
                                              (BEAM, LOOPS[0]), (BEAM, LOOPS[1])]
MODE_IDS = ["-".join(f"{k}={v}" for k, v in {**m, **l}.items()) for m, l in MODES]


GENERATORS = {}  # one per step: its compiled loops serve every seed


def run(step, log_probs, method, loop, max_length=6):
    cache = {"unused": ops.zeros((ROWS * method.get("beam_size", 1), 1))}
    generator = GENERATORS.setdefault(step, generation.Generator(step))
    return generator(cache, log_probs, None, max_length=max_length, vocab_size=VOCAB,
                     **method, **loop)


FINITE = step_with_nan_at(-1)


@pytest.mark.parametrize("method, loop", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("position, row", [(0, None), (3, None), (2, 1)],
                         ids=["first-token", "token-3", "token-2-row-1"])
def test_nan_scores_are_refused_naming_the_position(method, loop, position, row):
    if position == 0:
        step, log_probs = step_with_nan_at(-1), first_scores(nan=True)
    else:
        step, log_probs = step_with_nan_at(position, row), first_scores()
        if row is not None and method["method"] == "beam":
            step = step_with_nan_at(position, row * method["beam_size"])
    with pytest.raises(ValueError, match=f"`log_probs`\\) for generated token {position} "
                                         f"hold NaN"):
        run(step, log_probs, method, loop)


@pytest.mark.parametrize("temperature", [1e-300, 1e-45, 1e-39])
def test_temperature_below_float32_range_is_refused(temperature):
    with pytest.raises(ValueError, match="`temperature` must be at least 1.1754944e-38"):
        run(FINITE, first_scores(), dict(method="sample", temperature=temperature), {})


@pytest.mark.parametrize("loop", [LOOPS[0], LOOPS[2]], ids=["device", "uncompiled"])
@pytest.mark.parametrize("options", [{}, dict(top_p=0.5, top_k=4)], ids=["plain", "top_p+k"])
@pytest.mark.parametrize("temperature", [generation.SMALLEST_TEMPERATURE, 1e-30])
def test_tiny_temperature_samples_the_top_token(loop, options, temperature):
    """Seed 0 draws exactly 0.0 for the first token of row 0, which used to pick token 0
    whatever its probability."""
    greedy = run(FINITE, first_scores(), dict(method="greedy"), loop)
    for seed in range(8):
        method = dict(method="sample", temperature=temperature, seed=seed, **options)
        np.testing.assert_array_equal(run(FINITE, first_scores(), method, loop), greedy)


# -- builders whose weights give NaN --------------------------------------------------------

def poison(layer):
    values = [np.full_like(np.asarray(ops.convert_to_numpy(w)), np.nan) for w in layer.weights]
    layer.set_weights(values)


def test_t5_with_nan_weights_refuses_to_generate():
    builder = build_transformer_model(model="t5.1.1", vocab_size=VOCAB + 5, d_model=8, d_kv=4,
                                      d_ff=16, num_layers=1, num_heads=2,
                                      return_keras_model=False)
    poison(builder.model.get_layer("Decoder-Output-Norm"))
    with pytest.raises(ValueError, match="generated token 0 hold NaN"):
        builder.generate(np.array([[5, 6, 1]], "int32"), max_length=4, method="beam",
                         beam_size=2, compile=False)


def test_bert_lm_with_nan_weights_refuses_to_generate():
    builder = build_transformer_model(model="bert", application="lm", vocab_size=12,
                                      hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=16, return_keras_model=False)
    poison(builder.model.get_layer("MLM-Norm"))
    with pytest.raises(ValueError, match="generated token 0 hold NaN"):
        builder.generate(np.array([[2, 5, 6]], "int32"), max_length=3, method="sample",
                         seed=0, compile=False)
