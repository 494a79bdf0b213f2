"""keraformer.generation on a toy prefix-dependent model, against NumPy references.

The toy step's next-token logits depend on the last token, on the counts of all tokens so far
(per row, in the cache: beam search must make each row follow its parent) and on a per-input
offset (the "source", kept once per input and never repeated per beam, as encoder keys are).
References: a NumPy greedy loop, exhaustive search over every sequence (beam search with
enough beams must find the same best hypothesis), a NumPy top-k/top-p filter and sampling
frequencies (tolerance 0.03, ~5 standard errors at 4000 draws). Every loop (compiled on the
device, compiled per step from the host, eager) must give identical tokens.
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
LOOPS = [dict(loop="device"), dict(loop="host"), dict(compile=False)]


def toy_step(token_ids, index, cache, parents):
    counts = cache["counts"]
    if parents is not None:
        counts = ops.take(counts, parents, axis=0)
    onehot = ops.one_hot(token_ids[:, 0], VOCAB)
    counts = counts + onehot
    beams = counts.shape[0] // cache["source"].shape[0]
    source = ops.repeat(cache["source"], beams, axis=0)  # one source row serves its beams
    logits = ops.matmul(onehot, TRANSITION) + 0.5 * ops.matmul(counts, MIX) + source
    return ops.log_softmax(logits, axis=-1), {"counts": counts, "source": cache["source"]}


def toy_start(batch=3, beams=1, sources=None):
    """First log-probabilities (after start token 0) and the cache for ``beams`` per input."""
    source = ops.convert_to_tensor(SEEDS[:batch] if sources is None else sources)
    start = np.zeros((batch, 1), "int32")
    log_probs, _ = toy_step(start, 0, {"counts": ops.zeros((batch, VOCAB)), "source": source},
                            None)
    counts = np.zeros((batch * beams, VOCAB), "float32")
    counts[:, 0] = 1.0  # the start token
    return log_probs, {"counts": ops.convert_to_tensor(counts), "source": source}


def run(method="greedy", batch=3, max_length=6, beam_size=None, **options):
    beams = beam_size or 1
    log_probs, cache = toy_start(batch, beams)
    if beam_size is not None:
        options["beam_size"] = beam_size
    return generation.generate(toy_step, cache, log_probs, END, max_length=max_length,
                               method=method, vocab_size=VOCAB, **options)


def reference_log_probs(row, prefix):
    """NumPy log-probabilities after ``prefix`` (start token 0 first) for input ``row``."""
    counts = np.bincount(prefix, minlength=VOCAB).astype("float64")
    logits = TRANSITION[prefix[-1]] + 0.5 * counts @ MIX + SEEDS[row]
    logits = logits - logits.max()
    return logits - np.log(np.exp(logits).sum())


@pytest.mark.parametrize("loop", LOOPS, ids=["device", "host", "eager"])
def test_greedy_matches_numpy_loop(loop):
    ours = run(max_length=6, min_length=2, **loop)
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
    ours = run("beam", max_length=max_length, beam_size=VOCAB ** (max_length - 1),
               length_penalty=length_penalty, min_length=min_length, early_stopping=False)
    for row in range(3):
        expected = exhaustive_best(row, max_length, length_penalty, min_length)
        got = list(ours[row][:len(expected)])
        assert got == expected
        assert all(t == 0 for t in ours[row][len(expected):])


def test_beam_of_one_is_greedy_and_every_loop_agrees():
    greedy = run(max_length=6)
    beam = run("beam", max_length=6, beam_size=1)
    np.testing.assert_array_equal(beam, greedy[:, :beam.shape[1]])
    for early in (True, False, "never"):
        results = [run("beam", max_length=6, beam_size=3, early_stopping=early, **loop)
                   for loop in LOOPS]
        for other in results[1:]:
            np.testing.assert_array_equal(other, results[0])


def test_beam_search_never_copies_the_shared_cache():
    """The per-input part of the cache reaches every step with one row per input."""
    seen = []

    def spy(token_ids, index, cache, parents):
        seen.append((tuple(cache["source"].shape), tuple(token_ids.shape)))
        return toy_step(token_ids, index, cache, parents)

    log_probs, cache = toy_start(3, beams=4)
    generation.generate(spy, cache, log_probs, END, max_length=5, method="beam",
                        beam_size=4, compile=False)
    assert seen and all(source == (3, VOCAB) and tokens == (12, 1) for source, tokens in seen)


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


@pytest.mark.parametrize("top_k,top_p", [(2, None), (None, 0.5), (3, 0.7), (None, 0.01),
                                         (8, 1.0)])
def test_top_k_top_p_filter(top_k, top_p):
    log_probs = np.log(np.random.default_rng(1).dirichlet(np.ones(8), size=5)).astype("float32")
    filtered = np.asarray(generation.filter_top_k_top_p(log_probs, top_k, top_p))
    for row, original in zip(filtered, log_probs):
        assert set(np.flatnonzero(row > -1e8)) == reference_filter(original, top_k, top_p)


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.999])
def test_top_p_bisection_finds_the_nucleus_of_a_large_vocabulary(top_p):
    rng = np.random.default_rng(2)
    probs = np.maximum(rng.dirichlet(np.full(2000, 0.05), size=6), 1e-12)  # peaked rows
    probs = (probs / probs.sum(1, keepdims=True)).astype("float32")
    keep = np.asarray(generation.top_p_mask(ops.convert_to_tensor(probs), top_p))
    for row, kept in zip(probs, keep):
        assert set(np.flatnonzero(kept)) == reference_filter(np.log(row), None, top_p)


def sample_first_tokens(batch, **options):
    sources = np.repeat(SEEDS[:1], batch, axis=0)
    log_probs, cache = toy_start(batch, sources=sources)
    return generation.generate(toy_step, cache, log_probs, None, max_length=1,
                               method="sample", **options)[:, 0]


@pytest.mark.parametrize("options", [dict(temperature=2.0), dict(top_k=2),
                                     dict(top_p=0.6, temperature=0.5)])
def test_sampling_frequencies_follow_the_filtered_distribution(options):
    batch = 4000
    draws = sample_first_tokens(batch, seed=3, **options)
    logits = reference_log_probs(0, [0]) / options.get("temperature", 1.0)
    allowed = reference_filter(logits - np.log(np.exp(logits).sum()), options.get("top_k"),
                               options.get("top_p"))
    expected = np.where(np.isin(np.arange(VOCAB), list(allowed)), np.exp(logits), 0.0)
    expected /= expected.sum()
    np.testing.assert_allclose(np.bincount(draws, minlength=VOCAB) / batch, expected,
                               atol=0.03)


def test_sampling_is_seeded_and_top1_is_greedy():
    first = run("sample", max_length=5, top_p=0.9, seed=7)
    for loop in LOOPS[1:]:  # the same draws on every loop
        np.testing.assert_array_equal(run("sample", max_length=5, top_p=0.9, seed=7, **loop),
                                      first)
    assert not all(np.array_equal(run("sample", max_length=5, seed=s), first)
                   for s in range(8, 12))
    np.testing.assert_array_equal(run("sample", max_length=5, top_k=1, seed=0),
                                  run(max_length=5))


def numpy_mix32(x):
    """Wellons' lowbias32 on uint32, written from its published constants."""
    x = np.asarray(x, np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def test_uniform_draws_are_the_hash_and_uniform():
    rows, seed, index = 100_000, 12345, 3
    with np.errstate(over="ignore"):
        step = numpy_mix32(np.uint32(seed) + numpy_mix32(index))
        bits = numpy_mix32(step + np.arange(rows, dtype=np.uint32))
    expected = (bits >> np.uint32(8)).astype("float64") / 2 ** 24
    draws = np.asarray(generation.uniform_draws(rows, np.int32(seed), np.int32(index)))
    np.testing.assert_array_equal(draws, expected.astype("float32"))  # same on every backend
    assert draws.min() >= 0 and draws.max() < 1
    np.testing.assert_allclose(np.histogram(draws, bins=10, range=(0, 1))[0] / rows, 0.1,
                               atol=0.005)
    following = np.asarray(generation.uniform_draws(rows, np.int32(seed), np.int32(index + 1)))
    assert abs(np.corrcoef(draws, following)[0, 1]) < 0.01
