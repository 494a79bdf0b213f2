"""Cached decoding of the builders, driven by ``keraformer.generation``: the BERT-family
``lm``/``unilm`` decoder and T5's sequence-to-sequence decoder, side by side.

Both run the model's own layers: every step calls the same embeddings, the same blocks'
``call`` (with ``self_attention_cache=`` and ``cache_update_index=``) and the same output
head as ``fit`` and ``predict``; nothing here re-writes a forward pass.

The cache of one self-attention layer is ``(keys, values)``, each ``(batch, columns, heads,
size)``: one row per input, never one per beam. Its first ``prompt`` columns hold what every
hypothesis of an input shares (a BERT ``lm``/``unilm`` prompt, T5's start token); then one
column per step and beam, step-major: the token that beam row ``a`` generated at step ``s``
has its key in column ``prompt + s·beams + a``. A step writes its ``beams`` new keys into one
contiguous block of columns and nothing is ever gathered when beams are reordered. A beam's
history runs through other beams' rows: ``slots (batch, beams, max_length)`` records, for
each beam and earlier step, the row holding its token, and the attention mask lets a query
of beam ``b`` see column ``(s, a)`` when ``slots[b, s] == a`` and ``s <= t``. The queries of
one input's beams are the "length" axis of one attention call, so a step is ``(batch,
beams)`` wide. T5's cross-attention cache is the encoder output's keys and values
``(batch, src_len, heads, d_kv)``, computed once per source.

:class:`LanguageModelDecoder` gives BERT, RoBERTa, RoFormer and RoFormerV2 ``lm``/``unilm``
builders their ``generate``: the prompt (right-padded with id 0) runs once with the
application's mask (causal for ``lm``; for ``unilm`` bidirectional over segment 0, causal
over segment 1), each generated token at position ``prompt_length + t`` with segment 1
(``unilm``) or 0 (``lm``) attends to the prompt and to its own ancestors.
:class:`Seq2SeqDecoder` gives T5 its ``generate``: the source is encoded once, the start
token decoded at position 0, the token of step ``t`` at position ``t + 1``.
"""

import numpy as np
from keras import ops

from keraformer import generation
from keraformer.masks import causal_mask, padding_mask, unilm_mask
from keraformer.positions.relative import relative_position_bucket


# -- the cache layout -----------------------------------------------------------------------
def empty_cache(batch, columns, attention, dtype):
    """Zero ``(keys, values)`` ``(batch, columns, heads, size)`` of a ``MultiHeadAttention``."""
    return (ops.zeros((batch, columns, attention.heads, attention.key_size), dtype),
            ops.zeros((batch, columns, attention.heads, attention.head_size), dtype))


def step_column(prompt, index, beams):
    """The first cache column of step ``index`` (its beams fill ``beams`` columns)."""
    return prompt + index * beams


def column_positions(prompt, lengths, max_length, beams):
    """Position of each cache column ``(batch, prompt + max_length·beams)``: the prompt's
    columns hold positions ``0..prompt−1``, step ``s``'s columns (every beam) position
    ``lengths + s`` (local attention and ReRoPE read them)."""
    batch = ops.shape(lengths)[0]
    shared = ops.broadcast_to(ops.arange(prompt, dtype="int32")[None], (batch, prompt))
    steps = ops.repeat(ops.arange(max_length, dtype="int32"), beams)
    generated = ops.cast(lengths, "int32")[:, None] + steps[None]
    return ops.concatenate([shared, generated], axis=1)


def follow_parents(slots, parents, index):
    """Slots of the beams after a beam-search step: each row takes its parent's history
    (``parents (batch·beams,)``: rows of the previous step) and its own row at ``index``."""
    batch, beams = ops.shape(slots)[0], slots.shape[1]
    parent_beams = ops.reshape(parents, (batch, beams)) - ops.arange(
        batch, dtype="int32")[:, None] * beams
    slots = generation.gather_beams(slots, parent_beams)
    own = ops.broadcast_to(ops.arange(beams, dtype="int32")[None, :, None], ops.shape(slots))
    return ops.where(ops.arange(slots.shape[2]) == index, own, slots)


def generated_mask(index, max_length, beams, slots=None):
    """Which generated columns the queries of step ``index`` see: ``(1, 1, 1, max_length)``
    without beams, else ``(batch, 1, beams, max_length·beams)`` from ``slots``."""
    written = ops.arange(max_length) <= index
    if slots is None:
        return written[None, None, None, :]
    own = ops.equal(slots[:, :, :, None], ops.arange(beams, dtype="int32")[None, None, None])
    own = ops.logical_and(own, written[None, None, :, None])  # (batch, b, s, a)
    return ops.reshape(own, (ops.shape(slots)[0], 1, beams, max_length * beams))


def step_mask(prompt_mask, index, max_length, beams, slots=None):
    """The mask of a step's queries over every cache column: the shared prompt columns
    (``prompt_mask`` ``(batch or 1, 1, 1, prompt)``) then the generated ones."""
    generated = generated_mask(index, max_length, beams, slots)
    rows = ops.shape(generated)[0] if slots is not None else ops.shape(prompt_mask)[0]
    prompt = ops.broadcast_to(prompt_mask, (rows, 1, beams, prompt_mask.shape[-1]))
    generated = ops.broadcast_to(generated, (rows, 1, beams, generated.shape[-1]))
    return ops.concatenate([prompt, generated], axis=-1)


def prompt_columns_mask(mask, generated_columns):
    """A prompt's own mask ``(batch, 1, P, P)`` over every cache column (the generated ones,
    still empty, hidden)."""
    hidden = ops.zeros(tuple(ops.shape(mask)[:3]) + (generated_columns,), "bool")
    return ops.concatenate([ops.cast(mask, "bool"), hidden], axis=-1)


def check_use_cache(use_cache, options):
    """``use_cache`` must be a bool; without a cache the model re-runs eagerly on a growing
    prefix, so ``compile`` defaults to False there and may not be True (updates
    ``options``)."""
    if use_cache not in (True, False) or not isinstance(use_cache, (bool, np.bool_)):
        raise TypeError(f"`use_cache` must be True or False; received {use_cache!r}")
    if not use_cache:
        if options.get("compile") or options.get("loop") == "device":
            raise ValueError(f"`compile`=True and `loop`='device' need use_cache=True: "
                             f"without a cache the model re-runs on a growing prefix, "
                             f"eagerly; received compile={options.get('compile')!r}, "
                             f"loop={options.get('loop')!r}")
        options.setdefault("compile", False)


class Decoder:
    """What both decoders share: compiled start functions and loops kept per decoder, and
    the entry point's order (check, start, loop)."""

    def __init__(self, builder):
        self.builder = builder
        self.check_supported()
        self.variables = builder.model.weights
        self.cached = generation.Generator(self.step, self.variables)
        self.uncached = generation.Generator(self.full_step)
        self.starts = {}

    def check_supported(self):
        """Raise a ``ValueError`` when the builder cannot generate."""

    def compiled_start(self, max_length, beams, compile):
        """The start function (:meth:`prefill`) for these sizes, compiled once."""
        key = (max_length, beams, compile)
        if key not in self.starts:
            start = lambda *a: self.prefill(*a, max_length, beams)  # noqa: E731
            self.starts[key] = (generation.compile_function(start, self.variables)
                                if compile else start)
        return self.starts[key]


# -- BERT / RoFormer lm and unilm -----------------------------------------------------------
class LanguageModelDecoder(Decoder):
    """Cached and uncached decoding of a BERT-family builder built as ``lm`` or ``unilm``.

    ``LanguageModelDecoder(builder).generate(token_ids, segment_ids=None, max_length=32,
    method="greedy", end_id=None, use_cache=True, **options)`` returns int32
    ``(batch, <= max_length)`` generated ids; see ``keraformer.generation`` for the options.
    """

    def check_supported(self):
        builder = self.builder
        if builder.application not in ("lm", "unilm"):
            raise ValueError(f"generate() needs a model built with application='lm' or "
                             f"'unilm'; received application={builder.application!r}")
        if not builder.with_mlm:
            raise ValueError(f"generate() needs the MLM head (with_mlm=True or 'linear') to "
                             f"predict tokens; received with_mlm={builder.with_mlm!r}")
        attention = getattr(builder, "attention", "softmax")
        if attention != "softmax":
            raise ValueError(f"generate() supports attention='softmax' only; received "
                             f"attention={attention!r}")
        if (builder.application == "unilm" and getattr(builder, "segment_embedding", None)
                is not None and self.segment_count() < 2):
            raise ValueError(f"application='unilm' generates segment-1 tokens, so the model "
                             f"needs type_vocab_size (segment_vocab_size) >= 2 or 0; "
                             f"received {self.segment_count()}")
        if builder.entropy_scaling:
            raise ValueError("generate() does not support entropy_scaling=True (the key count "
                             "of each cached step would have to be tracked); received "
                             "entropy_scaling=True")

    # -- inputs --------------------------------------------------------------------------
    def check_inputs(self, token_ids, segment_ids, max_length):
        """Prompt ids (right-padded with the pad id), segments and lengths as NumPy."""
        builder = self.builder
        ids = generation.check_id_batch(token_ids, builder.vocab_size, "prompt_length")
        real = ids != builder.pad_id
        lengths = real.sum(1)
        if (lengths == 0).any():
            raise ValueError(f"every prompt in `token_ids` needs at least one token that is "
                             f"not the pad id {builder.pad_id}; row "
                             f"{int(np.argmax(lengths == 0))} has none")
        inside = (real != (np.arange(ids.shape[1]) < lengths[:, None])).any(1)
        if inside.any():
            raise ValueError(f"`token_ids` must be right-padded: pad id {builder.pad_id} only "
                             f"after each prompt's tokens; row {int(np.argmax(inside))} has "
                             f"it inside")
        if segment_ids is None:
            segments = np.zeros_like(ids)
        else:
            segments = np.asarray(segment_ids)
            if segments.shape != ids.shape:
                raise ValueError(f"`segment_ids` must have the shape of `token_ids` "
                                 f"{ids.shape}; received {segments.shape}")
            if not np.issubdtype(segments.dtype, np.integer):
                raise TypeError(f"`segment_ids` must be integers; received dtype "
                                f"{segments.dtype}")
            types = self.segment_count()
            if ((segments < 0) | (segments >= max(types, 1))).any():
                raise ValueError(f"`segment_ids` must lie in [0, {max(types, 1)}) (the "
                                 f"model's segment vocabulary, type_vocab_size={types}); "
                                 f"received values {sorted(set(segments.ravel().tolist()))}")
        position = getattr(builder, "position_embedding", None)
        if position is not None:
            needed = ids.shape[1] + max_length - 1
            rows = position.input_dim ** 2 if position.hierarchical else position.input_dim
            if needed > rows:
                raise ValueError(f"`max_length` {max_length} after prompts of width "
                                 f"{ids.shape[1]} needs {needed} positions but the model has "
                                 f"{rows}; pass max_length <= {rows - ids.shape[1] + 1}")
        return ids.astype("int32"), segments.astype("int32"), lengths.astype("int32")

    def segment_count(self):
        """Segment ids the model embeds (``segment_vocab_size``, which overrides the config's
        ``type_vocab_size``); 2 (source, target) for ``unilm`` without a segment embedding,
        whose segment ids only shape the mask."""
        builder = self.builder
        if builder.segment_vocab_size or builder.application != "unilm":
            return builder.segment_vocab_size
        return 2

    def generated_segment(self):
        """Segment id of generated tokens: 1 for ``unilm`` (the target), 0 for ``lm``."""
        return 1 if self.builder.application == "unilm" else 0

    # -- the model's layers, with a cache --------------------------------------------------
    def prompt_mask(self, ids, segments):
        """The application's mask over the prompt ``(batch, 1, P, P)``."""
        mask = padding_mask(ids, self.builder.pad_id)
        if self.builder.application == "unilm":
            return ops.logical_and(mask, unilm_mask(segments))
        return ops.logical_and(mask, causal_mask(ops.shape(ids)[1]))

    def run_blocks(self, x, caches, mask, index, positions, key_positions):
        """The builder's blocks with their caches: ``(x, caches)``."""
        updated = []
        for block, cache in zip(self.builder.blocks, caches):
            x, cache = block(x, attention_mask=mask, self_attention_cache=cache,
                             cache_update_index=index, positions=positions,
                             key_positions=key_positions)
            updated.append(cache)
        return x, updated

    def log_probs(self, x):
        """float32 log-probabilities ``(rows, vocab)`` of final hidden states ``x``."""
        logits = self.builder.mlm_logits(x)
        return ops.log_softmax(ops.cast(ops.reshape(logits, (-1, logits.shape[-1])),
                                        "float32"), axis=-1)

    def prefill(self, ids, segments, lengths, max_length, beams):
        """Run the prompt: first-token log-probabilities ``(batch, vocab)`` and the cache."""
        builder = self.builder
        prompt, batch = ids.shape[1], ops.shape(ids)[0]
        positions = ops.arange(prompt)[None]
        x = builder.embed(ids, segments, positions)
        caches = [empty_cache(batch, prompt + max_length * beams, block.attention, x.dtype)
                  for block in builder.blocks]
        mask = prompt_columns_mask(self.prompt_mask(ids, segments), max_length * beams)
        key_positions = column_positions(prompt, lengths, max_length, beams)
        x, caches = self.run_blocks(x, caches, mask, 0, positions, key_positions)
        last = generation.gather_beams(x, ops.cast(lengths - 1, "int32")[:, None])
        cache = {"layers": caches, "prompt_mask": padding_mask(ids, builder.pad_id),
                 "lengths": lengths, "key_positions": key_positions}
        if beams > 1:
            cache["slots"] = ops.zeros((batch, beams, max_length), "int32")
        return self.log_probs(last), cache

    def step(self, token_ids, index, cache, parents):
        """Cached step (see ``keraformer.generation``): the tokens generated at ``index``
        of every row, at positions ``prompt_length + index``."""
        lengths, prompt_mask = cache["lengths"], cache["prompt_mask"]
        batch = ops.shape(lengths)[0]
        beams = cache["slots"].shape[1] if "slots" in cache else 1
        prompt = prompt_mask.shape[-1]
        max_length = (cache["layers"][0][0].shape[1] - prompt) // beams
        ids = ops.reshape(token_ids, (batch, beams))
        positions = ops.broadcast_to(lengths[:, None] + index, (batch, beams))
        segments = ops.full((batch, beams), self.generated_segment(), "int32")
        x = self.builder.embed(ids, segments, positions)
        cache = dict(cache)
        slots = None
        if parents is not None and beams > 1:
            slots = cache["slots"] = follow_parents(cache["slots"], parents, index)
        mask = step_mask(prompt_mask, index, max_length, beams, slots)
        x, cache["layers"] = self.run_blocks(x, cache["layers"], mask,
                                             step_column(prompt, index, beams), positions,
                                             cache["key_positions"])
        return self.log_probs(x), cache

    # -- without a cache: the whole model on the growing sequence ----------------------------
    def full_start(self, ids, segments, lengths, max_length, beams):
        """First log-probabilities and a cache of whole sequences ``(batch·beams, P + max_length)``
        for :meth:`full_step`."""
        rows = np.repeat(np.arange(len(ids)), beams)
        width = ids.shape[1] + max_length
        tokens = np.zeros((len(rows), width), "int32")
        tokens[:, :ids.shape[1]] = ids[rows]
        positions = np.arange(width)
        generated = positions[None] >= lengths[rows][:, None]
        segment_rows = np.zeros((len(rows), width), "int32")
        segment_rows[:, :ids.shape[1]] = segments[rows]
        segment_rows[generated] = self.generated_segment()
        log_probs = self.model_log_probs(ids, segments, lengths - 1)
        cache = {"tokens": ops.convert_to_tensor(tokens),
                 "segments": ops.convert_to_tensor(segment_rows),
                 "lengths": ops.convert_to_tensor(lengths[rows])}
        return log_probs, cache

    def model_log_probs(self, ids, segments, positions):
        """Log-probabilities ``(rows, vocab)`` of the full model at one position per row."""
        outputs = self.builder.model(self.builder.model_inputs(
            ops.convert_to_tensor(ids), ops.convert_to_tensor(segments)))
        outputs = outputs[-1] if isinstance(outputs, (list, tuple)) else outputs
        outputs = np.asarray(ops.convert_to_numpy(outputs), "float32")
        picked = ops.convert_to_tensor(outputs[np.arange(len(outputs)), positions])
        if self.builder.with_mlm == "linear":
            return ops.log_softmax(picked, axis=-1)
        return ops.log(ops.maximum(picked, 1e-30))

    def full_step(self, token_ids, index, cache, parents):
        """Uncached step: place the tokens after each row's prefix and run the whole model
        (eager only; the prefix grows)."""
        tokens, lengths = cache["tokens"], cache["lengths"]
        if parents is not None:
            tokens = ops.take(tokens, parents, axis=0)
        index = int(ops.convert_to_numpy(index))
        column = lengths[:, None] + index
        tokens = ops.where(ops.arange(tokens.shape[1])[None] == column, token_ids, tokens)
        width = int(ops.convert_to_numpy(ops.max(lengths))) + index + 1
        log_probs = self.model_log_probs(tokens[:, :width], cache["segments"][:, :width],
                                         ops.convert_to_numpy(lengths) + index)
        return log_probs, {**cache, "tokens": tokens}

    # -- entry point ----------------------------------------------------------------------
    def generate(self, token_ids, segment_ids=None, max_length=32, method="greedy",
                 end_id=None, use_cache=True, **options):
        builder = self.builder
        check_use_cache(use_cache, options)
        checked = generation.check_options(method, max_length, end_id, builder.vocab_size,
                                           **options)
        ids, segments, lengths = self.check_inputs(token_ids, segment_ids, max_length)
        beams = checked["beam_size"] if method == "beam" else 1
        if use_cache:
            start = self.compiled_start(max_length, beams, checked["compile"])
            log_probs, cache = start(*(ops.convert_to_tensor(a) for a in
                                       (ids, segments, lengths)))
            return self.cached(cache, log_probs, end_id, max_length, method,
                               builder.vocab_size, **options)
        log_probs, cache = self.full_start(ids, segments, lengths, max_length, beams)
        return self.uncached(cache, log_probs, end_id, max_length, method, builder.vocab_size,
                             **options)


# -- T5 -------------------------------------------------------------------------------------
class Seq2SeqDecoder(Decoder):
    """Cached and uncached decoding of a T5 builder: ``generate(token_ids, max_length=32,
    method="greedy", use_cache=True, **options)`` (``end_id`` defaults to the config's
    ``eos_token_id``, ``pad_id`` to ``pad_token_id``) returns int32 ``(batch, <=
    max_length)`` generated ids after the start token."""

    def position_bias(self, query_position, key_positions):
        """The decoder's relative bias ``(1, heads, 1, keys)`` of one query position, from
        the decoder stack's own bias table."""
        builder = self.builder
        buckets = relative_position_bucket(key_positions - query_position, False,
                                           builder.num_buckets, builder.max_distance)
        table = ops.cast(builder.decoder_bias.embeddings, builder.decoder_bias.compute_dtype)
        return ops.transpose(ops.take(table, buckets, axis=0))[None, :, None, :]

    def key_positions(self, max_length, beams):
        """Decoder position of every self-attention cache column: 0 (the start token), then
        ``s + 1`` for the ``beams`` columns of step ``s``."""
        generated = ops.repeat(ops.arange(1, max_length + 1, dtype="int32"), beams)
        return ops.concatenate([ops.zeros((1,), "int32"), generated])

    def context_bias(self, query_position, cache):
        """With ``cross_position_bias`` (bert4keras), the decoder's relative bias of one
        query position over the source positions; else None."""
        if not self.builder.cross_position_bias:
            return None
        sources = ops.shape(cache["context"][0][0])[1]
        return self.position_bias(query_position, ops.arange(sources))

    def run_blocks(self, x, cache, mask, bias, index, context_bias):
        """The decoder blocks with their caches: ``(x, self-attention caches)``."""
        updated = []
        for block, layer, context in zip(self.builder.decoder_blocks, cache["layers"],
                                         cache["context"]):
            x, layer = block(x, bias, attention_mask=mask, context_mask=cache["context_mask"],
                             context_bias=context_bias, self_attention_cache=layer,
                             cache_update_index=index, cross_attention_cache=context)
            updated.append(layer)
        return x, updated

    def log_probs(self, x, cache):
        """float32 log-probabilities ``(rows, vocab)`` of the decoder blocks' output."""
        logits = self.builder.logits(self.builder.decoder_norm(x), cache.get("output_kernel"))
        return ops.log_softmax(ops.cast(ops.reshape(logits, (-1, logits.shape[-1])),
                                        "float32"), axis=-1)

    def prefill(self, token_ids, max_length, beams):
        """Encode source ``token_ids (batch, src_len)`` and decode the start token: the first
        generated token's log-probabilities ``(batch, vocab)`` and the cache."""
        builder = self.builder
        context = builder.encoder(token_ids)
        batch = ops.shape(token_ids)[0]
        columns = 1 + max_length * beams
        cache = {"context": [block.cross_attention_cache(context)
                             for block in builder.decoder_blocks],
                 "context_mask": padding_mask(token_ids, builder.pad_id)}
        x = builder.token_embedding(ops.full((batch, 1), builder.start_id, "int32"))
        cache["layers"] = [empty_cache(batch, columns, block.self_attention, x.dtype)
                           for block in builder.decoder_blocks]
        if beams > 1:
            cache["slots"] = ops.zeros((batch, beams, max_length), "int32")
        mask = (ops.arange(columns) < 1)[None, None, None, :]
        bias = self.position_bias(0, self.key_positions(max_length, beams))
        x, cache["layers"] = self.run_blocks(x, cache, mask, bias, 0,
                                             self.context_bias(0, cache))
        if not builder.tied:
            # the output kernel transposed to (vocab, d_model) once per call: XLA's CPU dot
            # multiplies by it about twice as fast as by the (d_model, vocab) kernel
            cache["output_kernel"] = ops.transpose(ops.cast(
                builder.output_dense.kernel, builder.output_dense.compute_dtype))
        return self.log_probs(x, cache), cache

    def step(self, token_ids, index, cache, parents=None):
        """The ``keraformer.generation`` step: log-probabilities ``(rows, vocab)`` of the token
        after ``token_ids (rows, 1)``, generated at ``index`` (decoder position ``index + 1``),
        and the updated cache; ``rows`` is ``batch · beams``."""
        builder = self.builder
        batch = ops.shape(cache["context_mask"])[0]
        beams = cache["slots"].shape[1] if "slots" in cache else 1
        max_length = (cache["layers"][0][0].shape[1] - 1) // beams
        x = builder.token_embedding(ops.reshape(token_ids, (batch, beams)))
        cache = dict(cache)
        slots = None
        if parents is not None and beams > 1:
            slots = cache["slots"] = follow_parents(cache["slots"], parents, index)
        query = index + 1
        mask = step_mask(ops.ones((1, 1, 1, 1), "bool"), index, max_length, beams, slots)
        bias = self.position_bias(query, self.key_positions(max_length, beams))
        x, cache["layers"] = self.run_blocks(x, cache, mask, bias,
                                             step_column(1, index, beams),
                                             self.context_bias(query, cache))
        return self.log_probs(x, cache), cache

    # -- without a cache ---------------------------------------------------------------------
    def full_start(self, token_ids, max_length, beams=1):
        """First log-probabilities from the whole model, and a cache of every row's source
        and decoder tokens for :meth:`full_step`."""
        builder = self.builder
        start = np.full((len(token_ids), 1), builder.start_id, "int32")
        probs = builder.model([ops.convert_to_tensor(token_ids), ops.convert_to_tensor(start)])
        log_probs = ops.log(ops.maximum(ops.cast(probs[:, -1], "float32"), 1e-30))
        rows = np.repeat(token_ids, beams, axis=0)
        tokens = np.full((len(rows), max_length + 1), builder.start_id, "int32")
        return log_probs, {"sources": ops.convert_to_tensor(rows),
                           "tokens": ops.convert_to_tensor(tokens)}

    def full_step(self, token_ids, index, cache, parents=None):
        """A step that re-runs the whole model over the decoded prefix (eager)."""
        tokens = cache["tokens"]
        if parents is not None:
            tokens = ops.take(tokens, parents, axis=0)
        index = int(ops.convert_to_numpy(index))
        tokens = ops.slice_update(tokens, (0, index + 1), token_ids)
        probs = self.builder.model([cache["sources"], tokens[:, :index + 2]])
        log_probs = ops.log(ops.maximum(ops.cast(probs[:, -1], "float32"), 1e-30))
        return log_probs, {**cache, "tokens": tokens}

    # -- entry point ----------------------------------------------------------------------
    def generate(self, token_ids, max_length=32, method="greedy", use_cache=True, **options):
        builder = self.builder
        end_id = options.pop("end_id", builder.end_id)
        options.setdefault("pad_id", builder.pad_id)
        check_use_cache(use_cache, options)
        checked = generation.check_options(method, max_length, end_id, builder.vocab_size,
                                           **options)
        generation.check_token_id("decoder_start_token_id", builder.start_id,
                                  builder.vocab_size)
        ids = generation.check_id_batch(token_ids, builder.vocab_size, "src_len")
        beams = checked["beam_size"] if method == "beam" else 1
        if not use_cache:
            log_probs, cache = self.full_start(ids, max_length, beams)
            return self.uncached(cache, log_probs, end_id, max_length, method,
                                 builder.vocab_size, **options)
        start = self.compiled_start(max_length, beams, checked["compile"])
        log_probs, cache = start(ops.convert_to_tensor(ids))
        return self.cached(cache, log_probs, end_id, max_length, method, builder.vocab_size,
                           **options)


def decoder_of(builder, cls, attribute):
    """The builder's decoder of class ``cls``, made once and kept as ``builder.attribute``
    (it keeps the compiled loops)."""
    decoder = getattr(builder, attribute, None)
    if decoder is None:
        decoder = cls(builder)
        setattr(builder, attribute, decoder)
    return decoder


def language_model_decoder(builder):
    """The builder's :class:`LanguageModelDecoder`."""
    return decoder_of(builder, LanguageModelDecoder, "language_model_decoder")


def seq2seq_decoder(builder):
    """The builder's :class:`Seq2SeqDecoder`."""
    return decoder_of(builder, Seq2SeqDecoder, "seq2seq_decoder")
