"""keraformer.generation on a toy prefix-dependent model, against NumPy references.

The toy step's next-token logits depend on the last token and on the counts of all tokens so
far, which live in the cache, so beam search must reorder the cache correctly to be right.
References: a NumPy greedy loop, exhaustive search over every sequence (beam search with
enough beams must find the same best hypothesis), and sampling frequencies (tolerance 0.03).
"""

import itertools

import numpy as np
import pytest
from keras import ops

from keraformer import generation

VOCAB, END = 4, 1
RNG = np.random.default_rng(0)
TRANSITION = RNG.normal(size=(VOCAB, VOCAB)).astype("float32") * 1.5
MIX = RNG.normal(size=(VOCAB, VOCAB)).astype("float32")
SEEDS = RNG.normal(size=(3, VOCAB)).astype("float32")  # a per-input offset (the "source")


def toy_step(token_ids, index, cache):
    onehot = ops.one_hot(token_ids[:, 0], VOCAB)
    counts = cache["counts"] + onehot
    logits = (ops.matmul(onehot, TRANSITION) + 0.5 * ops.matmul(counts, MIX)
              + cache["source"])
    return ops.log_softmax(logits, axis=-1), {"counts": counts, "source": cache["source"]}


def toy_cache(batch=3):
    return {"counts": ops.zeros((batch, VOCAB)), "source": ops.convert_to_tensor(SEEDS[:batch])}


def reference_log_probs(row, prefix):
    """NumPy log-probabilities after ``prefix`` (start token 0 first) for input ``row``."""
    counts = np.bincount(prefix, minlength=VOCAB).astype("float64")
    logits = TRANSITION[prefix[-1]] + 0.5 * counts @ MIX + SEEDS[row]
    logits = logits - logits.max()
    return logits - np.log(np.exp(logits).sum())


def test_greedy_matches_numpy_loop():
    ours = generation.generate(toy_step, toy_cache(), 0, END, max_length=6, min_length=2)
    for row in range(3):
        prefix, expected = [0], []
        for i in range(6):
            lp = reference_log_probs(row, prefix)
            if i < 2:
                lp[END] = -np.inf
            token = int(lp.argmax())
            expected.append(token)
            prefix.append(token)
            if token == END:
                break
        got = list(ours[row])
        assert got[:len(expected)] == expected
        assert all(t == 0 for t in got[len(expected):])


def exhaustive_best(row, max_length, length_penalty, min_length=0):
    """The highest ``sum(log p) / length ** length_penalty`` over all finished sequences."""
    best, best_score = None, -np.inf
    for length in range(1, max_length + 1):
        for tokens in itertools.product(range(VOCAB), repeat=length):
            if END in tokens[:-1] or (tokens[-1] != END and length < max_length):
                continue
            if END in tokens and tokens.index(END) < min_length:
                continue
            prefix, total = [0], 0.0
            for token in tokens:
                total += reference_log_probs(row, prefix)[token]
                prefix.append(token)
            score = total / length ** length_penalty
            if score > best_score:
                best, best_score = list(tokens), score
    return best


@pytest.mark.parametrize("length_penalty,min_length", [(1.0, 0), (0.0, 2), (2.0, 1)])
def test_wide_beam_finds_the_exhaustive_best(length_penalty, min_length):
    max_length = 4
    ours = generation.generate(toy_step, toy_cache(), 0, END, max_length=max_length,
                               method="beam", beam_size=VOCAB ** (max_length - 1),
                               length_penalty=length_penalty, min_length=min_length,
                               early_stopping=False)
    for row in range(3):
        expected = exhaustive_best(row, max_length, length_penalty, min_length)
        got = list(ours[row][:len(expected)])
        assert got == expected
        assert all(t == 0 for t in ours[row][len(expected):])


def test_beam_of_one_is_greedy_and_compiled_step_agrees():
    greedy = generation.generate(toy_step, toy_cache(), 0, END, max_length=6)
    beam = generation.generate(toy_step, toy_cache(), 0, END, max_length=6, method="beam",
                               beam_size=1)
    compiled = generation.generate(generation.compile_step(toy_step), toy_cache(), 0, END,
                                   max_length=6, method="beam", beam_size=3)
    plain = generation.generate(toy_step, toy_cache(), 0, END, max_length=6, method="beam",
                                beam_size=3)
    np.testing.assert_array_equal(beam, greedy[:, :beam.shape[1]])
    np.testing.assert_array_equal(compiled, plain)


def reference_filter(log_probs, top_k, top_p):
    """Allowed tokens of one row: the top_k best, then the smallest nucleus reaching top_p."""
    order = sorted(range(len(log_probs)), key=lambda i: -log_probs[i])
    allowed = order[:top_k] if top_k else order
    probs = np.exp(log_probs[allowed])
    probs = probs / probs.sum()
    kept, mass = [], 0.0
    for token, p in zip(allowed, probs):
        if top_p is not None and mass >= top_p:
            break
        kept.append(token)
        mass += p
    return set(kept)


@pytest.mark.parametrize("top_k,top_p", [(2, None), (None, 0.5), (3, 0.7), (None, 0.01)])
def test_top_k_top_p_filter(top_k, top_p):
    log_probs = np.log(np.random.default_rng(1).dirichlet(np.ones(8), size=5)).astype("float32")
    filtered = generation.filter_top_k_top_p(log_probs, top_k, top_p)
    for row, original in zip(filtered, log_probs):
        assert set(np.flatnonzero(row > -1e8)) == reference_filter(original, top_k, top_p)


def test_sampling_frequencies_follow_the_distribution():
    batch = 4000
    cache = {"counts": ops.zeros((batch, VOCAB)),
             "source": ops.convert_to_tensor(np.repeat(SEEDS[:1], batch, axis=0))}
    draws = generation.generate(toy_step, cache, 0, None, max_length=1, method="sample",
                                temperature=2.0, seed=3)[:, 0]
    logits = reference_log_probs(0, [0]) / 2.0
    expected = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(np.bincount(draws, minlength=VOCAB) / batch, expected,
                               atol=0.03)
    top1 = generation.generate(toy_step, toy_cache(), 0, END, max_length=5, method="sample",
                               top_k=1, seed=0)
    greedy = generation.generate(toy_step, toy_cache(), 0, END, max_length=5)
    np.testing.assert_array_equal(top1, greedy)


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        generation.generate(toy_step, toy_cache(), 0, END, method="nucleus")
    with pytest.raises(ValueError, match="max_length"):
        generation.generate(toy_step, toy_cache(), 0, END, max_length=0)
    with pytest.raises(ValueError, match="beam_size"):
        generation.generate(toy_step, toy_cache(), 0, END, method="beam", beam_size=0)
    with pytest.raises(ValueError, match="temperature"):
        generation.generate(toy_step, toy_cache(), 0, END, method="sample", temperature=0)
