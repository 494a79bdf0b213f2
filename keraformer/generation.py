"""Autoregressive decoding over a step function and its cache: greedy, beam, top-k/top-p.

The model-agnostic interface is a *step*: ``step(token_ids, index, cache) -> (log_probs,
cache)`` takes the last tokens ``(batch, 1)`` int32 at position ``index`` (a scalar int32
tensor, 0 for the start token) and returns float32 log-probabilities ``(batch, vocab)`` of the
next token and the updated cache. The cache is any nested structure (dicts, lists, tuples) of
tensors whose first axis is the batch, so beam search can repeat and reorder it without knowing
what it holds. Encoder-decoder models (T5) keep self-attention keys/values and the
cross-attention keys/values in it; decoder-only models (BERT ``lm``/``unilm``) keep theirs.
The driving loop runs in NumPy; the step runs in Keras (compile it with :func:`compile_step`).
Lengths count generated tokens, the start token excluded; outputs are int32
``(batch, length)`` padded with ``pad_id`` after ``end_id``.
"""

import keras
import numpy as np
from keras import ops

BLOCKED = -1e9  # log-probability given to tokens that may not be chosen (finite on purpose)


def compile_step(step):
    """``step`` compiled for the backend (``tf.function``, ``jax.jit``), or as is (torch)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        return tf.function(step, jit_compile=True)  # XLA: ~30% faster T5 steps on CPU
    if backend == "jax":
        import jax
        return jax.jit(step)
    return step


def cache_batch_size(cache):
    """The batch size of a cache (the first axis of its first tensor)."""
    leaves = keras.tree.flatten(cache)
    if not leaves:
        raise ValueError("`cache` must hold at least one tensor (batch first); received "
                         f"{cache!r}")
    return int(ops.shape(leaves[0])[0])


def repeat_cache(cache, times):
    """Repeat every batch row ``times`` times in a row (``(b, ...) -> (b·times, ...)``)."""
    return keras.tree.map_structure(lambda x: ops.repeat(x, times, axis=0), cache)


def reorder_cache(cache, indices):
    """Gather batch rows ``indices`` (int ``(n,)``) of every tensor of the cache."""
    indices = ops.convert_to_tensor(np.asarray(indices, "int32"))
    return keras.tree.map_structure(lambda x: ops.take(x, indices, axis=0), cache)


def run_step(step, tokens, index, cache):
    """Call ``step`` with tensors and return its log-probabilities as a float32 array."""
    log_probs, cache = step(ops.convert_to_tensor(np.asarray(tokens, "int32")),
                            ops.convert_to_tensor(np.int32(index)), cache)
    return np.asarray(ops.convert_to_numpy(log_probs), "float32"), cache


def block_end(log_probs, end_id, generated, min_length):
    """Forbid ``end_id`` while fewer than ``min_length`` tokens have been generated."""
    if end_id is not None and generated < min_length:
        log_probs = log_probs.copy()
        log_probs[..., end_id] = BLOCKED
    return log_probs


def greedy_search(step, cache, start_id, end_id=None, max_length=32, min_length=0, pad_id=0):
    """Pick the most probable token at every step (ties: the lowest id)."""
    return decode_loop(step, cache, start_id, end_id, max_length, min_length, pad_id,
                       lambda log_probs: log_probs.argmax(-1))


def filter_top_k_top_p(log_probs, top_k=None, top_p=None):
    """Set all but the ``top_k`` most probable tokens, and those outside the smallest set whose
    probability reaches ``top_p`` (nucleus, Holtzman et al. 2020), to ``BLOCKED``."""
    log_probs = log_probs.copy()
    if top_k is not None and top_k < log_probs.shape[-1]:
        kth = np.sort(log_probs, axis=-1)[:, -top_k][:, None]
        log_probs[log_probs < kth] = BLOCKED
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-log_probs, axis=-1, kind="stable")
        sorted_probs = np.exp(np.take_along_axis(log_probs, order, axis=-1))
        sorted_probs /= sorted_probs.sum(-1, keepdims=True)
        before = np.cumsum(sorted_probs, axis=-1) - sorted_probs  # mass of better tokens
        drop = np.zeros_like(log_probs, dtype=bool)
        np.put_along_axis(drop, order, before >= top_p, axis=-1)
        log_probs[drop] = BLOCKED
    return log_probs


def sample(step, cache, start_id, end_id=None, max_length=32, min_length=0, pad_id=0,
           top_k=None, top_p=None, temperature=1.0, seed=None):
    """Sample each token from the (temperature-scaled, top-k / top-p filtered) distribution."""
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0; received {temperature}")
    rng = np.random.default_rng(seed)

    def choose(log_probs):
        logits = filter_top_k_top_p(log_probs / temperature, top_k, top_p)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        cumulative = np.cumsum(probs, axis=-1)
        draws = rng.random((len(probs), 1)) * cumulative[:, -1:]
        return np.minimum((cumulative < draws).sum(-1), probs.shape[-1] - 1)

    return decode_loop(step, cache, start_id, end_id, max_length, min_length, pad_id, choose)


def decode_loop(step, cache, start_id, end_id, max_length, min_length, pad_id, choose):
    """One token per sequence per step, chosen by ``choose(log_probs) -> ids``."""
    batch = cache_batch_size(cache)
    tokens = np.full((batch, 1), start_id, "int32")
    finished = np.zeros(batch, bool)
    outputs = []
    for index in range(max_length):
        log_probs, cache = run_step(step, tokens, index, cache)
        ids = choose(block_end(log_probs, end_id, index, min_length)).astype("int32")
        ids = np.where(finished, pad_id, ids)
        outputs.append(ids)
        if end_id is not None:
            finished |= ids == end_id
        if finished.all():
            break
        tokens = ids[:, None]
    return np.stack(outputs, axis=1) if outputs else np.zeros((batch, 0), "int32")


def top_indices(scores, k):
    """Indices of the ``k`` largest scores along the last axis, best first."""
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


def beam_search(step, cache, start_id, end_id=None, max_length=32, min_length=0, pad_id=0,
                beam_size=4, length_penalty=1.0, early_stopping=True):
    """Beam search returning the best finished hypothesis of each input.

    Each step keeps the ``2·beam_size`` best continuations of all beams; those ending in
    ``end_id`` (or reaching ``max_length``) among the first ``beam_size`` become finished
    hypotheses scored ``sum(log p) / length ** length_penalty``, the best ``beam_size``
    unfinished ones continue. With ``early_stopping=True`` an input is done once it has
    ``beam_size`` finished hypotheses; with ``False`` once no running beam can beat the worst
    of them at the current length (``"never"``: at ``max_length`` when
    ``length_penalty > 0``). This is the procedure of Hugging Face's ``generate(num_beams=…)``.
    """
    if not isinstance(beam_size, (int, np.integer)) or beam_size < 1:
        raise ValueError(f"`beam_size` must be an integer >= 1; received {beam_size!r}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"`early_stopping` must be True, False or 'never'; received "
                         f"{early_stopping!r}")
    batch = cache_batch_size(cache)
    cache = repeat_cache(cache, beam_size)
    keep = 2 * beam_size
    running = np.full((batch, beam_size, max_length), pad_id, "int32")
    running_scores = np.zeros((batch, beam_size), "float32")
    running_scores[:, 1:] = BLOCKED  # identical beams at the start: expand only the first
    done = np.full((batch, beam_size, max_length), pad_id, "int32")
    done_scores = np.full((batch, beam_size), BLOCKED, "float32")
    is_done = np.zeros((batch, beam_size), bool)
    improvable = np.ones(batch, bool)
    tokens = np.full((batch * beam_size, 1), start_id, "int32")
    first_beams = np.arange(keep) < beam_size
    for index in range(max_length):
        log_probs, cache = run_step(step, tokens, index, cache)
        log_probs = block_end(log_probs, end_id, index, min_length)
        vocab = log_probs.shape[-1]
        total = (log_probs.reshape(batch, beam_size, vocab) + running_scores[..., None])
        total = total.reshape(batch, beam_size * vocab)
        best = top_indices(total, keep)
        scores = np.take_along_axis(total, best, axis=-1)
        parents, ids = best // vocab, (best % vocab).astype("int32")
        candidates = np.take_along_axis(running, parents[..., None], axis=1)
        candidates[:, :, index] = ids
        ends = (ids == end_id) if end_id is not None else np.zeros_like(ids, bool)
        ends |= index + 1 == max_length
        # the best unfinished continuations go on
        live_scores = scores + ends.astype("float32") * BLOCKED
        order = top_indices(live_scores, beam_size)
        running = np.take_along_axis(candidates, order[..., None], axis=1)
        running_scores = np.take_along_axis(live_scores, order, axis=-1)
        # finished continuations among the first beam_size join the pool of hypotheses
        just_done = ends & first_beams[None]
        normalised = scores / np.float32((index + 1) ** length_penalty)
        full = is_done.all(-1, keepdims=True) & (early_stopping is True)
        normalised = normalised + BLOCKED * (full | ~improvable[:, None] | ~just_done)
        pool_scores = np.concatenate([done_scores, normalised.astype("float32")], axis=1)
        chosen = top_indices(pool_scores, beam_size)
        done = np.take_along_axis(np.concatenate([done, candidates], 1), chosen[..., None], 1)
        done_scores = np.take_along_axis(pool_scores, chosen, axis=-1)
        is_done = np.take_along_axis(np.concatenate([is_done, just_done], 1), chosen, axis=-1)
        parent_rows = np.take_along_axis(parents, order, axis=-1)
        parent_rows = (parent_rows + np.arange(batch)[:, None] * beam_size).reshape(-1)
        cache = reorder_cache(cache, parent_rows)
        tokens = np.take_along_axis(ids, order, axis=-1).reshape(-1, 1)
        length = max_length if early_stopping == "never" and length_penalty > 0 else index + 1
        best_possible = running_scores[:, 0] / np.float32(length ** length_penalty)
        worst = np.where(is_done, done_scores.min(-1, keepdims=True), BLOCKED)
        improvable &= (best_possible[:, None] > worst).any(-1)
        if (not improvable.any() or (is_done.all() and early_stopping is True)
                or ends.all()):
            break
    return trim_after_end(done[:, 0], end_id, pad_id)


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


METHODS = {"greedy": greedy_search, "beam": beam_search, "sample": sample}


def generate(step, cache, start_id, end_id=None, max_length=32, method="greedy", **kwargs):
    """Decode with ``method`` (``greedy``, ``beam`` or ``sample``) from ``step`` and
    ``cache``; ``kwargs`` go to that method (``min_length``, ``pad_id``, ``beam_size``,
    ``length_penalty``, ``early_stopping``, ``top_k``, ``top_p``, ``temperature``, ``seed``).
    Returns int32 ``(batch, length ≤ max_length)``."""
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {sorted(METHODS)}; received {method!r}")
    if not isinstance(max_length, (int, np.integer)) or max_length < 1:
        raise ValueError(f"`max_length` must be an integer >= 1; received {max_length!r}")
    return METHODS[method](step, cache, start_id, end_id, max_length, **kwargs)


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
    masked positions (first maximum on ties).
    """
    scores = np.asarray(ops.convert_to_numpy(scores), dtype="float64")
    transitions = np.asarray(ops.convert_to_numpy(transitions), dtype="float64")
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
        mask = np.asarray(ops.convert_to_numpy(mask)).astype(bool)
        mask = mask[None] if single and mask.ndim == 1 else mask
        if mask.shape != keep.shape:
            raise ValueError(f"`mask` must have shape {keep.shape[1:] if single else keep.shape}"
                             f"; received shape {mask.shape}")
        keep &= mask
    barred = {}
    for name, allowed in (("starts", starts), ("ends", ends)):
        barred[name] = np.ones(labels, bool)
        if allowed is not None:
            allowed = np.asarray(allowed, dtype="int64").reshape(-1)
            if allowed.size == 0 or allowed.min() < 0 or allowed.max() >= labels:
                raise ValueError(f"`{name}` must list labels in [0, {labels}); received "
                                 f"{allowed.tolist()}")
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
