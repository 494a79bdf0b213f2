"""Autoregressive decoding for every keraformer model: greedy, beam search, top-k/top-p sampling.

A model takes part through two things:

* ``log_probs`` ``(batch, vocab)``: float32 log-probabilities of the first generated token of
  each input (T5 gets them by decoding its start token, a BERT ``lm``/``unilm`` model by
  running its prompt once);
* a *step* ``step(token_ids, index, cache, parents) -> (log_probs, cache)``: ``token_ids
  (rows, 1)`` int32 are the tokens generated at ``index`` (a scalar int32 tensor, 0 for the
  first generated token); it returns the log-probabilities ``(rows, vocab)`` of the token after
  them and its updated cache. ``rows`` is the batch, or ``batch · beam_size`` for beam search
  (the beams of input ``i`` are rows ``i·beam_size ... i·beam_size + beam_size - 1``).
  ``parents`` is ``None`` outside beam search; in it, an int32 ``(rows,)`` tensor saying which
  row of the previous step each row continues, so that a step can follow its hypotheses.

The engine never copies or reorders the cache: what is shared by the beams of an input
(encoder keys and values, a prompt's keys and values) stays there once, and what each beam
adds can be laid out so that nothing needs gathering (``keraformer.models.decoding`` writes
every beam's new key in its own slot and masks attention by each beam's ancestry).

Loops: ``loop="device"`` runs the whole decoding as one compiled ``keras.ops.while_loop``
(``tf.function(jit_compile=True)`` or ``jax.jit``), so a GPU never waits on the host;
``loop="host"`` calls one compiled step-and-choose function per token from Python (needed by
steps that cannot be traced, such as re-running a model on a growing prefix); ``"auto"`` picks
the device loop when compiling. Lengths count generated tokens; outputs are int32
``(batch, length <= max_length)``, padded with ``pad_id`` after ``end_id``.
"""

import difflib
import math
import numbers

import keras
import numpy as np
from keras import ops

from keraformer.checks import integer_ids

BLOCKED = -1e9  # log-probability given to tokens that may not be chosen (finite on purpose)
METHODS = ("greedy", "beam", "sample")
BEAM_STYLES = ("huggingface", "bert4keras")
LOOPS = ("auto", "device", "host")
# options each method takes, and their defaults
METHOD_OPTIONS = {
    "greedy": {},
    "beam": {"beam_size": 4, "length_penalty": 1.0, "early_stopping": True,
             "beam_style": "huggingface"},
    "sample": {"top_k": None, "top_p": None, "temperature": 1.0, "seed": None},
}
COMMON_OPTIONS = {"min_length": 0, "pad_id": 0, "loop": "auto", "compile": True}
SMALLEST_TEMPERATURE = float(np.finfo("float32").tiny)  # float32's smallest normal number


# -- argument checks ----------------------------------------------------------------------
def check_integer(name, value, minimum=None, maximum=None, what=None):
    """``value`` must be an integer (not a bool) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer; received {value!r} of type "
                        f"{type(value).__name__}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = what or (f">= {minimum}" if maximum is None else
                          f"in [{minimum}, {maximum}]")
        raise ValueError(f"`{name}` must be an integer {bounds}; received {value!r}")
    return int(value)


def check_number(name, value, minimum=None, maximum=None, open_minimum=False, what=None):
    """``value`` must be a finite real number above ``minimum`` (strictly if
    ``open_minimum``) and at most ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number; received {value!r} of type "
                        f"{type(value).__name__}")
    value = float(value)
    low = minimum is not None and (value <= minimum if open_minimum else value < minimum)
    high = maximum is not None and value > maximum
    if not math.isfinite(value) or low or high:
        raise ValueError(f"`{name}` must be {what or 'finite'}; received {value!r}")
    return value


def check_token_id(name, value, vocab_size):
    """A special token id: an integer inside the vocabulary (when its size is known)."""
    maximum = None if vocab_size is None else vocab_size - 1
    what = None if vocab_size is None else f"inside the vocabulary [0, {vocab_size})"
    return check_integer(name, value, 0, maximum, what)


def check_id_batch(token_ids, vocab_size, length_name):
    """``token_ids`` as a NumPy int32 ``(batch, length)`` array of ids in the vocabulary, or a
    ``ValueError``/``TypeError`` naming ``token_ids`` (``length_name``: what the length is,
    e.g. ``src_len`` or ``prompt_length``)."""
    ids = np.asarray(token_ids)
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"`token_ids` must have shape (batch, {length_name}) with "
                         f"{length_name} >= 1; received shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"`token_ids` must be integers; received dtype {ids.dtype}")
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        raise ValueError(f"`token_ids` must lie in [0, vocab_size={vocab_size}); "
                         f"received {ids[bad][0]} at {tuple(np.argwhere(bad)[0])}")
    return ids.astype("int32")


def check_options(method, max_length, end_id=None, vocab_size=None, **options):
    """Validate ``generate``'s arguments where they enter; returns the complete options.

    Every option must belong to ``method`` (``top_p`` with ``method="greedy"`` would be
    ignored, so it is refused), numbers must be finite and in range, special ids inside the
    vocabulary. Errors name the argument, what it must be and what came.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"`method` must be one of {list(METHODS)}; received {method!r}")
    known = {**COMMON_OPTIONS, **{k: v for m in METHOD_OPTIONS.values() for k, v in m.items()}}
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, list(known) + ["max_length", "end_id",
                                                                 "method"], n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise TypeError(f"generate() got an unknown option `{name}`{hint} Options are "
                            f"{sorted(known)}")
    for name, value in options.items():
        if value is not None and name not in COMMON_OPTIONS and name not in METHOD_OPTIONS[
                method]:
            owner = next(m for m, names in METHOD_OPTIONS.items() if name in names)
            raise ValueError(f"`{name}` applies to method={owner!r} only; received "
                             f"{name}={value!r} with method={method!r}")
    result = {**COMMON_OPTIONS, **METHOD_OPTIONS[method]}
    result.update({k: v for k, v in options.items() if v is not None or k in COMMON_OPTIONS})
    result["method"] = method
    result["max_length"] = check_integer("max_length", max_length, 1)
    result["min_length"] = check_integer("min_length", result["min_length"], 0, max_length,
                                         f"in [0, max_length={max_length}]")
    if vocab_size is not None:
        vocab_size = check_integer("vocab_size", vocab_size, 1)
    result["end_id"] = None if end_id is None else check_token_id("end_id", end_id, vocab_size)
    result["pad_id"] = check_token_id("pad_id", result["pad_id"], vocab_size)
    if result["loop"] not in LOOPS:
        raise ValueError(f"`loop` must be one of {list(LOOPS)}; received {result['loop']!r}")
    if result["compile"] not in (True, False):
        raise TypeError(f"`compile` must be True or False; received {result['compile']!r}")
    if result["loop"] == "device" and not result["compile"]:
        raise ValueError("`loop`='device' needs `compile`=True (the loop runs as one "
                         "compiled function); received compile=False")
    if method == "beam":
        result["beam_size"] = check_integer("beam_size", result["beam_size"], 1)
        result["length_penalty"] = check_number("length_penalty", result["length_penalty"])
        if result["early_stopping"] not in (True, False, "never") or isinstance(
                result["early_stopping"], (int, float)) and not isinstance(
                result["early_stopping"], bool):
            raise ValueError(f"`early_stopping` must be True, False or 'never'; received "
                             f"{result['early_stopping']!r}")
        if vocab_size is not None and vocab_size < 2:
            raise ValueError(f"beam search needs a vocabulary of at least 2 tokens; received "
                             f"vocab_size={vocab_size}")
        if result["beam_style"] not in BEAM_STYLES:
            raise ValueError(f"`beam_style` must be one of {list(BEAM_STYLES)}; received "
                             f"{result['beam_style']!r}")
        if result["beam_style"] == "bert4keras":
            # bert4keras' search has no length penalty, stopping rule or blocked end id
            for name, default in (("length_penalty", 1.0), ("early_stopping", True),
                                  ("min_length", 0)):
                if result[name] != default:
                    raise ValueError(f"`{name}` does not apply to beam_style='bert4keras' "
                                     f"(bert4keras' search has none); received "
                                     f"{name}={result[name]!r}")
            if vocab_size is not None and vocab_size < result["beam_size"]:
                raise ValueError(f"beam_style='bert4keras' needs vocab_size >= beam_size; "
                                 f"received vocab_size={vocab_size}, "
                                 f"beam_size={result['beam_size']}")
    if method == "sample":
        if result["top_k"] is not None:
            maximum = None if vocab_size is None else vocab_size
            result["top_k"] = check_integer("top_k", result["top_k"], 1, maximum,
                                            ">= 1" if maximum is None else
                                            f"in [1, vocab_size={vocab_size}]")
        if result["top_p"] is not None:
            result["top_p"] = check_number("top_p", result["top_p"], 0.0, 1.0, True,
                                           "in (0, 1]")
        result["temperature"] = check_number("temperature", result["temperature"], 0.0,
                                             open_minimum=True, what="finite and > 0")
        if result["temperature"] < SMALLEST_TEMPERATURE:
            raise ValueError(f"`temperature` must be at least {SMALLEST_TEMPERATURE:.8g} "
                             f"(sampling divides float32 scores by it: anything smaller is 0 "
                             f"in float32); received {result['temperature']!r}; for the "
                             f"limit of a small temperature, the top token, use "
                             f"method='greedy'")
        if result["seed"] is not None:
            result["seed"] = check_integer("seed", result["seed"], 0, 2 ** 31 - 1)
    return result


# -- compiling ----------------------------------------------------------------------------
def compile_function(function, variables=None):
    """``function`` compiled for the backend: ``tf.function(jit_compile=True)`` (XLA) or
    ``jax.jit``; as is for other backends.

    Under JAX, ``variables`` (Keras variables the function reads, e.g. a model's weights) are
    passed to the compiled program as arguments instead of being baked in as constants.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        variables = list(variables or [])

        def read_once(*args):
            # weights read once per call, not in every iteration of a loop inside
            values = [v.value for v in variables]
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return function(*args)

        return tf.function(read_once, jit_compile=True)
    if backend == "jax":
        import jax
        variables = list(variables or [])

        def pure(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return function(*args)

        jitted = jax.jit(pure)
        return lambda *args: jitted([v.value for v in variables], *args)
    return function


# -- choosing tokens ----------------------------------------------------------------------
def block_end(log_probs, index, end_id, min_length):
    """Forbid ``end_id`` while fewer than ``min_length`` tokens have been generated."""
    if end_id is None or min_length == 0:
        return log_probs
    vocab = log_probs.shape[-1]
    blocked = ops.logical_and(ops.equal(ops.arange(vocab), end_id), index < min_length)
    return ops.where(blocked[None], ops.cast(BLOCKED, log_probs.dtype), log_probs)


def top_p_mask(probs, top_p, iterations=32):
    """``True`` for the tokens of the nucleus (Holtzman et al. 2020): the smallest set of most
    probable tokens whose probability reaches ``top_p``, for ``probs (rows, n)`` summing to 1.

    Found without sorting: the nucleus is ``probs >= t`` for the largest threshold ``t`` whose
    kept mass still reaches ``top_p``, located by bisection on ``[0, max(probs)]`` (32 halvings
    reach float32 resolution; sorting 32k tokens per step is ~20x slower under XLA on CPU).
    Tokens tying with the least probable kept one are kept too."""
    low = ops.zeros_like(probs[:, :1])
    high = ops.max(probs, axis=-1, keepdims=True)

    def halve(_, bounds):
        low, high = bounds
        middle = (low + high) / 2
        mass = ops.sum(ops.where(probs >= middle, probs, 0.0), axis=-1, keepdims=True)
        enough = mass >= top_p
        return ops.where(enough, middle, low), ops.where(enough, high, middle)

    low, _ = ops.fori_loop(0, iterations, halve, (low, high))
    return probs >= low


def filter_top_k_top_p(log_probs, top_k=None, top_p=None):
    """``log_probs (rows, vocab)`` with tokens outside the top-k set, then outside the top-p
    nucleus of the renormalised rest, set to ``BLOCKED``. Tokens tying with the last kept one
    are kept too."""
    logits = ops.convert_to_tensor(log_probs, "float32")
    vocab = logits.shape[-1]
    if top_k is not None and top_k < vocab:
        kth = ops.top_k(logits, top_k)[0][:, -1:]
        logits = ops.where(logits >= kth, logits, BLOCKED)
    if top_p is not None and top_p < 1.0:
        keep = top_p_mask(ops.softmax(logits, axis=-1), top_p)
        logits = ops.where(keep, logits, BLOCKED)
    return logits


def mix32(x):
    """An integer hash of int32 bit patterns (C. Wellons' "lowbias32": xor-shift, multiply,
    twice), in wrapping int32 arithmetic that every backend and XLA compute alike."""
    x = ops.bitwise_xor(x, ops.bitwise_and(ops.right_shift(x, 16), 0xFFFF))
    x = x * np.int32(0x7FEB352D)
    x = ops.bitwise_xor(x, ops.bitwise_and(ops.right_shift(x, 15), 0x1FFFF))
    x = x * np.int32(0x846CA68B - 2 ** 32)
    return ops.bitwise_xor(x, ops.bitwise_and(ops.right_shift(x, 16), 0xFFFF))


def uniform_draws(rows, seed, index):
    """``(rows,)`` uniform floats in [0, 1) for step ``index`` from an int32 ``seed``: a
    counter-based generator (a hash of seed, step and row), so that a compiled loop can draw
    and every loop and backend draws the same numbers."""
    step = mix32(ops.cast(seed, "int32") + mix32(ops.cast(index, "int32")))
    bits = mix32(step + ops.arange(rows, dtype="int32"))
    return ops.cast(ops.bitwise_and(ops.right_shift(bits, 8), 0xFFFFFF), "float32") / 2.0 ** 24


def sample_tokens(log_probs, index, seed, top_k, top_p, temperature):
    """Draw one token per row from the temperature-scaled, top-k / top-p filtered
    distribution, by inverting its cumulative distribution at a uniform draw."""
    values = ops.cast(log_probs, "float32")
    # the best token at 0 before dividing: a tiny temperature sends the others to -inf, never
    # every token (which would leave NaN probabilities and an arbitrary draw)
    values = (values - ops.max(values, axis=-1, keepdims=True)) / temperature
    indices = None
    if top_k is not None and top_k < values.shape[-1]:
        values, indices = ops.top_k(values, top_k)  # candidates, best first
    if values.shape[-1] == 1:  # top_k=1: the best token, whatever the draw
        return ops.cast(indices[:, 0], "int32")
    probs = ops.softmax(values, axis=-1)
    if top_p is not None and top_p < 1.0:
        probs = ops.where(top_p_mask(probs, top_p), probs, 0.0)
    cumulative = ops.cumsum(probs, axis=-1)
    draws = uniform_draws(ops.shape(probs)[0], seed, index)[:, None] * cumulative[:, -1:]
    # token i owns [cumulative[i-1], cumulative[i]): an empty interval (probability 0) is
    # never drawn, a draw of exactly 0 included; a draw that rounds up to the total takes
    # the last token that has a probability
    position = ops.sum(ops.cast(cumulative <= draws, "int32"), axis=-1)
    drawable = ops.flip(ops.cast(probs > 0, "int32"), axis=-1)
    last = values.shape[-1] - 1 - ops.cast(ops.argmax(drawable, axis=-1), "int32")
    position = ops.minimum(position, last)
    if indices is None:
        return ops.cast(position, "int32")
    return ops.cast(ops.take_along_axis(indices, position[:, None], axis=-1)[:, 0], "int32")


def choose_function(options):
    """``choose(log_probs, index, seed) -> ids (rows,)`` for greedy or sampling."""
    if options["method"] == "greedy":
        return lambda log_probs, index, seed: ops.cast(ops.argmax(log_probs, axis=-1), "int32")
    return lambda log_probs, index, seed: sample_tokens(
        log_probs, index, seed, options["top_k"], options["top_p"], options["temperature"])


# -- greedy and sampling ------------------------------------------------------------------
def token_loop_parts(step, options):
    """``first(log_probs, seed) -> state`` and ``body(state, cache) -> (state, cache)`` of
    greedy search and sampling; ``state`` is ``(index, ids, finished, out, seed)``."""
    end_id, pad_id = options["end_id"], options["pad_id"]
    choose = choose_function(options)

    def pick(log_probs, index, finished, out, seed):
        log_probs = block_end(log_probs, index, end_id, options["min_length"])
        ids = ops.where(finished, pad_id, choose(log_probs, index, seed))
        if end_id is not None:
            finished = ops.logical_or(finished, ops.equal(ids, end_id))
        out = ops.slice_update(out, (0, index), ids[:, None])
        return (index + 1, ids, finished, out, seed)

    def first(log_probs, seed):
        batch = ops.shape(log_probs)[0]
        out = ops.full((batch, options["max_length"]), pad_id, "int32")
        finished = ops.zeros((batch,), "bool")
        return pick(log_probs, ops.convert_to_tensor(0, "int32"), finished, out, seed)

    def body(state, cache):
        index, ids, finished, out, seed = state
        log_probs, cache = step(ids[:, None], index - 1, cache, None)
        return pick(log_probs, index, finished, out, seed), cache

    def running(state):
        index, _, finished, _, _ = state
        return ops.logical_and(index < options["max_length"],
                               ops.logical_not(ops.all(finished)))

    def result(state):
        index, _, _, out, _ = state
        return out, index

    return first, body, running, result


# -- beam search --------------------------------------------------------------------------
def gather_beams(x, indices):
    """``x (batch, n, ...)`` rows picked per input: ``indices (batch, m)`` -> ``(batch, m,
    ...)``."""
    batch, n = ops.shape(x)[0], x.shape[1]
    flat = ops.reshape(indices + ops.arange(batch, dtype=indices.dtype)[:, None] * n, (-1,))
    gathered = ops.take(ops.reshape(x, (-1,) + tuple(x.shape[2:])), flat, axis=0)
    return ops.reshape(gathered, (batch, indices.shape[1]) + tuple(x.shape[2:]))


def first_beam_scores(batch, beams):
    """``(batch, beams)`` starting scores: 0 for the first beam, blocked for the others (the
    beams start identical, so only the first is expanded)."""
    scores = ops.where(ops.arange(beams) == 0, 0.0, BLOCKED)
    return ops.broadcast_to(ops.cast(scores, "float32")[None], (batch, beams))


def beam_body_and_running(step, update, max_length):
    """The loop body and the running test shared by both beam searches: ``update`` folds one
    step's log-probabilities into the beam state ``(index, tokens, parents, stop, beam)``."""

    def body(state, cache):
        index, tokens, parents, _, beam = state
        log_probs, cache = step(tokens[:, None], index - 1, cache, parents)
        return update(beam, ops.cast(log_probs, "float32"), index), cache

    def running(state):
        index, _, _, stop, _ = state
        return ops.logical_and(index < max_length, ops.logical_not(stop))

    return body, running


def beam_loop_parts(step, options):
    """``first``, ``body``, ``running`` and ``result`` of beam search (see
    :func:`beam_search`); the state is ``(index, tokens, parents, stop, beams)``."""
    beams, max_length, end_id = options["beam_size"], options["max_length"], options["end_id"]
    pad_id, keep = options["pad_id"], 2 * options["beam_size"]
    early, penalty = options["early_stopping"], options["length_penalty"]
    # sum(log p) / length ** length_penalty, divisors computed as NumPy (float64, then float32)
    divisors = np.float32(np.arange(1, max_length + 1, dtype="float64") ** penalty)
    final = max_length if early == "never" and penalty > 0 else None

    def update(beam, log_probs, index):
        running, running_scores, done, done_scores, is_done, improvable = beam
        batch, vocab = ops.shape(running)[0], log_probs.shape[-1]
        log_probs = block_end(log_probs, index, end_id, options["min_length"])
        total = ops.reshape(log_probs, (batch, beams, vocab)) + running_scores[..., None]
        scores, best = ops.top_k(ops.reshape(total, (batch, beams * vocab)), keep)
        best = ops.cast(best, "int32")
        parents, ids = best // vocab, best % vocab
        candidates = gather_beams(running, parents)
        candidates = ops.where(ops.arange(max_length) == index, ids[..., None], candidates)
        ends = ops.broadcast_to(index + 1 == max_length, ops.shape(ids))
        if end_id is not None:
            ends = ops.logical_or(ends, ops.equal(ids, end_id))
        # the best unfinished continuations go on
        live = scores + ops.cast(ends, "float32") * BLOCKED
        running_scores, order = ops.top_k(live, beams)
        order = ops.cast(order, "int32")
        running = gather_beams(candidates, order)
        # finished continuations among the first beam_size join the hypotheses
        just_done = ops.logical_and(ends, (ops.arange(keep) < beams)[None])
        normalised = scores / ops.take(ops.convert_to_tensor(divisors), index)
        refused = ops.logical_or(ops.logical_not(improvable)[:, None],
                                 ops.logical_not(just_done))
        if early is True:
            refused = ops.logical_or(refused, ops.all(is_done, axis=-1, keepdims=True))
        normalised = normalised + ops.cast(refused, "float32") * BLOCKED
        done_scores, chosen = ops.top_k(ops.concatenate([done_scores, normalised], 1), beams)
        chosen = ops.cast(chosen, "int32")
        done = gather_beams(ops.concatenate([done, candidates], 1), chosen)
        is_done = gather_beams(ops.cast(ops.concatenate([is_done, just_done], 1), "int32"),
                               chosen) > 0
        parent_rows = gather_beams(parents, order) + ops.arange(batch, dtype="int32")[:, None] * beams
        tokens = ops.reshape(gather_beams(ids, order), (-1,))
        divisor = divisors[final - 1] if final else ops.take(ops.convert_to_tensor(divisors), index)
        best_possible = running_scores[:, 0] / divisor
        worst = ops.where(is_done, ops.min(done_scores, axis=-1, keepdims=True), BLOCKED)
        improvable = ops.logical_and(improvable, ops.any(best_possible[:, None] > worst, -1))
        stop = ops.logical_or(ops.logical_not(ops.any(improvable)), ops.all(ends))
        if early is True:
            stop = ops.logical_or(stop, ops.all(is_done))
        beam = (running, running_scores, done, done_scores, is_done, improvable)
        return (index + 1, tokens, ops.reshape(parent_rows, (-1,)), stop, beam)

    def first(log_probs, seed):
        batch = ops.shape(log_probs)[0]
        running = ops.full((batch, beams, max_length), pad_id, "int32")
        # identical beams at the start: expand only the first
        running_scores = first_beam_scores(batch, beams)
        beam = (running, running_scores, running, ops.full((batch, beams), BLOCKED, "float32"),
                ops.zeros((batch, beams), "bool"), ops.ones((batch,), "bool"))
        log_probs = ops.repeat(ops.cast(log_probs, "float32"), beams, axis=0)
        return update(beam, log_probs, ops.convert_to_tensor(0, "int32"))

    def result(state):
        return state[4][2][:, 0], state[0]

    return first, *beam_body_and_running(step, update, max_length), result


def bert4keras_beam_loop_parts(step, options):
    """``first``, ``body``, ``running`` and ``result`` of bert4keras' beam search
    (``AutoRegressiveDecoder.beam_search`` of bert4keras 0.11.5, batched); the state is
    ``(index, tokens, parents, stop, beams)``.

    Each step keeps the ``k`` best continuations of the ``k`` live beams by summed
    log-probability (no length normalisation). When the best of them ends, it is the result;
    otherwise the continuations that end are dropped and ``k`` shrinks by their number. At
    ``max_length`` the best live beam is the result. A hypothesis that ends while another
    scores higher is thus lost, where Hugging Face's search (``beam_style="huggingface"``)
    keeps it among the finished ones and may return it later.
    """
    beams, max_length, end_id = options["beam_size"], options["max_length"], options["end_id"]
    pad_id = options["pad_id"]

    def update(beam, log_probs, index):
        running, running_scores, width, result, decided = beam
        batch, vocab = ops.shape(running)[0], log_probs.shape[-1]
        total = ops.reshape(log_probs, (batch, beams, vocab)) + running_scores[..., None]
        # sorted; bert4keras keeps the first `width` (at most the beams still running)
        scores, best = ops.top_k(ops.reshape(total, (batch, beams * vocab)), beams)
        best = ops.cast(best, "int32")
        parents, ids = best // vocab, best % vocab
        kept = ops.arange(beams, dtype="int32")[None] < width[:, None]
        candidates = gather_beams(running, parents)
        candidates = ops.where(ops.arange(max_length) == index, ids[..., None], candidates)
        ends = ops.zeros(ops.shape(ids), "bool") if end_id is None else ops.equal(ids, end_id)
        # the best continuation (the first) decides when it ends or the length is reached
        decides = ops.logical_and(ops.logical_not(decided),
                                  ops.logical_or(ends[:, 0], index + 1 == max_length))
        result = ops.where(decides[:, None], candidates[:, 0], result)
        decided = ops.logical_or(decided, decides)
        going_on = ops.logical_and(kept, ops.logical_not(ends))
        running_scores = ops.where(going_on, scores, ops.cast(BLOCKED, "float32"))
        width = ops.sum(ops.cast(going_on, "int32"), axis=-1)
        parent_rows = parents + ops.arange(batch, dtype="int32")[:, None] * beams
        beam = (candidates, running_scores, width, result, decided)
        return (index + 1, ops.reshape(ids, (-1,)), ops.reshape(parent_rows, (-1,)),
                ops.all(decided), beam)

    def first(log_probs, seed):
        batch = ops.shape(log_probs)[0]
        running = ops.full((batch, beams, max_length), pad_id, "int32")
        # one live beam at the start, as bert4keras' single first row
        running_scores = first_beam_scores(batch, beams)
        beam = (running, running_scores, ops.full((batch,), beams, "int32"),
                ops.full((batch, max_length), pad_id, "int32"), ops.zeros((batch,), "bool"))
        log_probs = ops.repeat(ops.cast(log_probs, "float32"), beams, axis=0)
        return update(beam, log_probs, ops.convert_to_tensor(0, "int32"))

    def result(state):
        return state[4][3], state[0]

    return first, *beam_body_and_running(step, update, max_length), result


# -- the loops ----------------------------------------------------------------------------
def first_nan(log_probs, position, nan_at):
    """``nan_at`` (int32 scalar, -1 while no scores held NaN), or ``position`` if it is -1 and
    ``log_probs`` hold a NaN."""
    seen = ops.logical_and(ops.less(nan_at, 0), ops.any(ops.isnan(log_probs)))
    return ops.where(seen, ops.cast(position, "int32"), nan_at)


def watch_for_nan(step):
    """``step`` whose cache is ``(cache, nan_at)``: the first generated position whose scores
    held NaN, or -1. A NaN score makes every choice arbitrary (argmax and the draw of a
    NaN distribution return ordinary-looking ids), so the loop records it and the caller
    refuses the result."""
    def watched(token_ids, index, state, parents):
        cache, nan_at = state
        log_probs, cache = step(token_ids, index, cache, parents)
        return log_probs, (cache, first_nan(log_probs, index + 1, nan_at))
    return watched


def no_nan_yet(log_probs):
    return first_nan(log_probs, 0, ops.convert_to_tensor(np.int32(-1)))


def loop_parts(step, options):
    if options["method"] == "beam" and options["beam_style"] == "bert4keras":
        return bert4keras_beam_loop_parts(step, options)
    if options["method"] == "beam":
        return beam_loop_parts(step, options)
    return token_loop_parts(step, options)


def device_loop(step, options):
    """The whole decoding as one function ``(log_probs, cache, seed) -> (out, length)``
    around ``keras.ops.while_loop``."""
    first, body, running, result = loop_parts(watch_for_nan(step), options)

    def run(log_probs, cache, seed):
        def cond(state, cache):
            return running(state)

        def loop_body(state, cache):
            return body(state, cache)

        state, (_, nan_at) = ops.while_loop(
            cond, loop_body, (first(log_probs, seed), (cache, no_nan_yet(log_probs))))
        return result(state) + (nan_at,)

    return run


class Generator:
    """Decoding with one step function, compiled once per set of options.

    ``Generator(step, variables=None)(cache, log_probs, end_id=None, max_length=32,
    method="greedy", **options)`` returns int32 ``(batch, length)``; ``variables`` are the
    Keras variables the step reads (passed to JAX's compiled program as arguments).
    A builder keeps one ``Generator`` so that repeated calls reuse the compiled loops.
    """

    def __init__(self, step, variables=None):
        self.step, self.variables = step, variables
        self.compiled = {}

    def function(self, kind, options, make):
        key = (kind,) + tuple(sorted((k, v) for k, v in options.items() if k != "seed"))
        if key not in self.compiled:
            function = make()
            self.compiled[key] = (compile_function(function, self.variables)
                                  if options["compile"] else function)
        return self.compiled[key]

    def __call__(self, cache, log_probs, end_id=None, max_length=32, method="greedy",
                 vocab_size=None, **options):
        options = check_options(method, max_length, end_id, vocab_size, **options)
        log_probs = ops.cast(log_probs, "float32")
        if len(log_probs.shape) != 2:
            raise ValueError(f"`log_probs` must have shape (batch, vocab); received shape "
                             f"{tuple(log_probs.shape)}")
        if vocab_size is not None and log_probs.shape[-1] != vocab_size:
            raise ValueError(f"`log_probs` has {log_probs.shape[-1]} tokens but vocab_size is "
                             f"{vocab_size}")
        seed = options.get("seed")
        if seed is None:
            seed = int(np.random.default_rng().integers(2 ** 31 - 1))
        seed = ops.convert_to_tensor(np.int32(seed))
        loop = options["loop"]
        if loop == "auto":
            loop = "device" if options["compile"] else "host"
        if loop == "device":
            run = self.function("device", options, lambda: device_loop(self.step, options))
            out, length, nan_at = run(log_probs, cache, seed)
        else:
            out, length, nan_at = self.host_loop(cache, log_probs, seed, options)
        nan_at = int(ops.convert_to_numpy(nan_at))
        if nan_at >= 0:
            raise ValueError(f"the model's scores (`log_probs`) for generated token {nan_at} "
                             f"hold NaN, so every token chosen from them would be arbitrary: "
                             f"generation refused. Check the weights and the inputs (under "
                             f"XLA or JAX jit an id outside the vocabulary gives NaN)")
        out = np.asarray(ops.convert_to_numpy(out), "int32")
        if options["method"] == "beam":
            return trim_after_end(out, options["end_id"], options["pad_id"])
        return out[:, :int(ops.convert_to_numpy(length))]

    def host_loop(self, cache, log_probs, seed, options):
        """Python drives the loop: one compiled call per token, stopping on the host."""
        first, body, running, result = loop_parts(watch_for_nan(self.step), options)
        first = self.function("first", options, lambda: first)
        body = self.function("body", options, lambda: body)
        state, cache = first(log_probs, seed), (cache, no_nan_yet(log_probs))
        while bool(ops.convert_to_numpy(running(state))):
            state, cache = body(state, cache)
        return result(state) + (cache[1],)


def trim_after_end(sequences, end_id, pad_id):
    """Pad after the first ``end_id`` and cut the columns no sequence uses."""
    sequences = np.array(sequences, "int32")
    if end_id is None:
        return sequences
    is_end = sequences == end_id
    after = np.cumsum(is_end, axis=1) - is_end > 0
    sequences[after] = pad_id
    ended = is_end.any(1)
    lengths = np.where(ended, is_end.argmax(1) + 1, sequences.shape[1])
    return sequences[:, :max(int(lengths.max()), 0)] if len(lengths) else sequences


def generate(step, cache, log_probs, end_id=None, max_length=32, method="greedy",
             vocab_size=None, variables=None, **options):
    """Decode with ``method`` (``greedy``, ``beam`` or ``sample``) from ``step``, its
    ``cache`` and the first token's ``log_probs`` (see the module docstring).

    Options: ``min_length`` (end id blocked before), ``pad_id``, ``loop`` (``auto``,
    ``device``, ``host``), ``compile``; beam: ``beam_size`` (4), ``length_penalty`` (1.0),
    ``early_stopping`` (``True``, ``False`` or ``"never"``, as Hugging Face's
    ``generate``), ``beam_style`` (``"huggingface"``, the search those options shape, or
    ``"bert4keras"``: bert4keras' ``beam_search``, whose outputs a port reproduces; see
    :func:`bert4keras_beam_loop_parts`); sampling: ``top_k``, ``top_p``, ``temperature``
    (1.0), ``seed``.
    ``vocab_size`` (when given) bounds ``end_id``, ``pad_id`` and ``top_k``. For beam search
    the cache must hold ``batch · beam_size`` rows where it is per row. Returns int32
    ``(batch, length <= max_length)``.

    Example:

        >>> import numpy as np
        >>> from keras import ops
        >>> from keraformer.generation import generate
        >>> # t is followed by t+1
        >>> table = np.log(np.full((5, 5), 0.01) + np.eye(5)[[1, 2, 3, 4, 0]])
        >>> def step(token_ids, index, cache, parents):
        ...     log_probs = ops.take(ops.convert_to_tensor(table, "float32"), token_ids[:, 0], axis=0)
        ...     return log_probs, cache
        >>> first = ops.convert_to_tensor(table[[0, 2]], "float32")  # prompts that ended in 0 and 2
        >>> cache = {"unused": ops.zeros((2,))}
        >>> np.asarray(generate(step, cache, first, end_id=4, max_length=6)).tolist()
        [[1, 2, 3, 4], [3, 4, 0, 0]]
    """
    return Generator(step, variables)(cache, log_probs, end_id, max_length, method,
                                      vocab_size, **options)


def score_array(name, value):
    """``value`` as a float64 NumPy array of real scores, each finite or ``-inf`` (a label or
    transition that is ruled out); ``TypeError`` for non-numeric data (bools and strings
    included), ``ValueError`` naming ``name`` for NaN or ``+inf``, which would decide a path."""
    try:
        array = np.asarray(ops.convert_to_numpy(value))
    except (TypeError, ValueError) as error:
        raise TypeError(f"`{name}` must be an array of real scores; received "
                        f"{type(value).__name__} ({error})") from None
    if array.dtype.kind not in "iuf":
        raise TypeError(f"`{name}` must hold real scores (integers or floats); received dtype "
                        f"{array.dtype}")
    array = array.astype("float64")
    bad = np.isnan(array) | np.isposinf(array)
    if bad.any():
        raise ValueError(f"`{name}` must be finite or -inf (ruled out); received "
                         f"{int(bad.sum())} NaN or +inf entries, the first at "
                         f"{tuple(int(i) for i in np.argwhere(bad)[0])}")
    return array


def viterbi_decode(scores, transitions, mask=None, starts=None, ends=None):
    """The highest-scoring label path of a linear-chain CRF (Viterbi 1967), in NumPy.

    ``scores``: emission scores ``(length, labels)`` or ``(batch, length, labels)``, e.g. a
    ``ConditionalRandomField``'s output, whose masked positions are rows of ``-inf``; ``mask``
    ``(length,)``/``(batch, length)`` may mark the positions to decode instead (those rows are
    then skipped too). ``transitions``: ``(labels, labels)``, ``transitions[i, j]`` scoring
    label ``i`` followed by ``j`` (``crf.trans``). ``starts``/``ends``: the labels a path may
    begin/end with, as bert4keras' ``ViterbiDecoder`` (None allows every label). A path
    maximises ``sum_t scores[t, y_t] + sum_t transitions[y_t, y_{t+1}]`` over the unmasked
    positions, taken in order. Returns int32 labels of ``scores``' leading shape, ``-1`` at
    masked positions (first maximum on ties). Scores and transitions must be finite or
    ``-inf``; ``mask`` holds booleans or 0/1; ``starts``/``ends`` are integer labels.

    Example:

        >>> import numpy as np
        >>> from keraformer.generation import viterbi_decode
        >>> scores = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0]])   # (length, labels)
        >>> transitions = np.array([[0.0, -5.0], [0.0, 0.0]])         # 0 -> 1 is expensive
        >>> viterbi_decode(scores, transitions).tolist()
        [0, 0, 0]
        >>> viterbi_decode(scores, np.zeros((2, 2))).tolist()
        [0, 1, 1]
    """
    scores = score_array("scores", scores)
    transitions = score_array("transitions", transitions)
    if scores.ndim not in (2, 3):
        raise ValueError(f"`scores` must have shape (length, labels) or (batch, length, "
                         f"labels); received shape {scores.shape}")
    labels = scores.shape[-1]
    if transitions.shape != (labels, labels):
        raise ValueError(f"`transitions` must have shape ({labels}, {labels}) for scores with "
                         f"{labels} labels; received shape {transitions.shape}")
    single = scores.ndim == 2
    if single:
        scores = scores[None]
    keep = ~np.all(np.isneginf(scores), axis=-1)
    if mask is not None:
        mask = np.asarray(ops.convert_to_numpy(mask))
        if mask.dtype.kind not in "biuf" or not np.isin(mask, (0, 1)).all():
            raise ValueError(f"`mask` must hold booleans or 0/1; received dtype {mask.dtype} "
                             f"with values {np.unique(mask)[:5].tolist()}")
        expected = keep.shape[1:] if single else keep.shape
        if mask.shape != expected:
            raise ValueError(f"`mask` must have shape {expected}; received shape {mask.shape}")
        keep &= mask.astype(bool).reshape(keep.shape)
    barred = {}
    for name, allowed in (("starts", starts), ("ends", ends)):
        barred[name] = np.ones(labels, bool)
        if allowed is not None:
            allowed = integer_ids(allowed, name=name)
            if not allowed or min(allowed) < 0 or max(allowed) >= labels:
                raise ValueError(f"`{name}` must list labels in [0, {labels}); received "
                                 f"{allowed}")
            barred[name][allowed] = False
        else:
            barred[name][:] = False
    paths = np.full(scores.shape[:2], -1, dtype="int32")
    for row in range(scores.shape[0]):
        positions = np.flatnonzero(keep[row])
        if positions.size == 0:
            continue
        emissions = scores[row, positions].copy()
        emissions[0, barred["starts"]] = -np.inf
        emissions[-1, barred["ends"]] = -np.inf
        best, pointers = emissions[0], []
        for t in range(1, len(positions)):
            candidates = best[:, None] + transitions + emissions[t][None]
            pointers.append(candidates.argmax(axis=0))
            best = candidates.max(axis=0)
        if np.isneginf(best).all():
            raise ValueError(f"no label path of length {len(positions)} (row {row}) begins "
                             f"with one of `starts` and ends with one of `ends`; received "
                             f"starts={starts}, ends={ends}")
        label = int(best.argmax())
        path = [label]
        for pointer in reversed(pointers):
            label = int(pointer[label])
            path.append(label)
        paths[row, positions] = path[::-1]
    return paths[0] if single else paths
