"""Key/value-cached decoding for the builders, driven by ``keraformer.generation``.

The cache of one attention layer has two parts. The *prompt* part holds the keys and values
of what every hypothesis of an input shares (a BERT ``lm``/``unilm`` prompt, T5's start token,
T5's encoder output for cross-attention): ``(batch, prompt_len, heads, size)``, computed once
per input and never copied per beam. The *generated* part holds one slot per beam and step,
``(batch, beams, max_length, heads, size)``: at step ``t`` every beam writes its new key in
column ``t`` of its own row, so nothing is ever gathered when beams are reordered. A beam's
history runs through other beams' rows; ``slots (batch, beams, max_length)`` records, for each
beam and earlier step, the row holding its token, and attention masks the generated keys by it
(a query of beam ``b`` sees key ``(a, s)`` when ``slots[b, s] == a`` and ``s <= t``). The
queries of one input's beams are the "length" axis of one attention call, so a cached step is
``(batch, beams)`` wide and attends over ``prompt_len + beams · max_length`` keys.

:class:`LanguageModelDecoder` gives BERT, RoBERTa, RoFormer and RoFormerV2 ``lm``/``unilm``
builders their ``generate``: the prompt (right-padded with id 0) runs once with the
application's mask (causal for ``lm``; for ``unilm`` bidirectional over segment 0, causal
over segment 1), each generated token at position ``prompt_length + t`` with segment 1
(``unilm``) or 0 (``lm``) attends to the prompt and to its own ancestors.
"""

import math

import numpy as np
from keras import ops

from keraformer import generation
from keraformer.masks import causal_mask, padding_mask, unilm_mask


# -- attention over cached blocks -----------------------------------------------------------
def split_heads(x, heads):
    """``(batch, length, heads·size)`` to ``(batch, length, heads, size)``."""
    return ops.reshape(x, (ops.shape(x)[0], ops.shape(x)[1], heads, x.shape[-1] // heads))


def project_key_value(attention, x, positions=None):
    """Keys and values ``(batch, length, heads, size)`` of a ``MultiHeadAttention`` for
    ``x (batch, length, dim)``, keys rotated at ``positions`` when the layer is rotary."""
    k = split_heads(attention.key_dense(x), attention.heads)
    v = split_heads(attention.value_dense(x), attention.heads)
    rotary = getattr(attention, "rotary", None)
    return (k if rotary is None else rotary(k, positions=positions)), v


def project(attention, x, positions=None):
    """Queries, keys and values ``(batch, length, heads, size)`` of a ``MultiHeadAttention``
    for ``x (batch, length, dim)``, rotated at ``positions`` when the layer is rotary."""
    q = split_heads(attention.query_dense(x), attention.heads)
    rotary = getattr(attention, "rotary", None)
    if rotary is not None:
        q = rotary(q, positions=positions)
    return (q,) + project_key_value(attention, x, positions)


def logit_scale(attention):
    """The attention layer's logit scale (default ``1/sqrt(key size)``)."""
    if attention.scale is not None:
        return attention.scale
    return 1.0 / math.sqrt(attention.query_dense.kernel.shape[-1] // attention.heads)


def attend(q, blocks, scale):
    """Softmax attention of ``q (batch, q_len, heads, d)`` over the concatenation of key
    blocks, without concatenating the keys: ``blocks`` is a list of ``(k, v, mask, bias)``
    with ``k, v (batch, k_len_i, heads, d)``, a boolean ``mask`` and an additive ``bias``
    (either may be ``None``) broadcasting to ``(batch, heads, q_len, k_len_i)``.
    Returns ``(batch, q_len, heads·d_v)``; the softmax is taken in float32."""
    q32 = ops.cast(q, "float32")
    logits, sizes = [], []
    for k, _, mask, bias in blocks:
        block = ops.einsum("bqhd,bkhd->bhqk", q32, ops.cast(k, "float32")) * scale
        if bias is not None:
            block = block + ops.cast(bias, "float32")
        if mask is not None:
            block = ops.where(mask, block, generation.BLOCKED)
        logits.append(block)
        sizes.append(k.shape[1])
    logits = ops.concatenate(logits, axis=-1) if len(logits) > 1 else logits[0]
    if sum(sizes) == 1:  # one key (T5's start token): all the weight on it
        probs = ops.ones_like(logits)
    else:
        probs = ops.softmax(logits, axis=-1)
    out, start = None, 0
    for (_, v, _, _), size in zip(blocks, sizes):
        part = ops.cast(probs[..., start:start + size], v.dtype)
        start += size
        term = ops.einsum("bhqk,bkhd->bqhd", part, v)
        out = term if out is None else out + term
    return ops.reshape(out, (ops.shape(out)[0], ops.shape(out)[1], -1))


def empty_slots(batch, beams, max_length, like):
    """An empty generated-key cache ``(batch, beams, max_length, heads, size)`` for keys or
    values shaped and typed like ``like (batch, length, heads, size)``."""
    return ops.zeros((batch, beams, max_length) + tuple(like.shape[2:]), like.dtype)


def write(cache, update, index):
    """Write ``update (batch, beams, heads, size)`` into column ``index`` of
    ``cache (batch, beams, max_length, heads, size)``."""
    return ops.slice_update(cache, (0, 0, index, 0, 0),
                            ops.cast(update, cache.dtype)[:, :, None])


def flatten_beams(cache):
    """``(batch, beams, max_length, heads, size)`` as ``(batch, beams·max_length, heads,
    size)`` keys (beam-major)."""
    shape = tuple(cache.shape)
    return ops.reshape(cache, (ops.shape(cache)[0], shape[1] * shape[2]) + shape[3:])


def follow_parents(slots, parents, index):
    """Slots of the beams after a beam-search step: each row takes its parent's history
    (``parents (batch·beams,)``: rows of the previous step) and its own row at ``index``."""
    batch, beams = ops.shape(slots)[0], slots.shape[1]
    parent_beams = ops.reshape(parents, (batch, beams)) - ops.arange(
        batch, dtype="int32")[:, None] * beams
    slots = generation.gather_beams(slots, parent_beams)
    own = ops.broadcast_to(ops.arange(beams, dtype="int32")[None, :, None], ops.shape(slots))
    return ops.where(ops.arange(slots.shape[2]) == index, own, slots)


def generated_mask(index, max_length, slots=None):
    """Mask of the generated keys for the queries of step ``index``: ``(1, 1, 1,
    max_length)`` without beams, else ``(batch, 1, beams, beams·max_length)`` from
    ``slots``."""
    written = ops.arange(max_length) <= index
    if slots is None:
        return written[None, None, None, :]
    beams = slots.shape[1]
    own = ops.equal(slots[:, :, None, :], ops.arange(beams, dtype="int32")[None, None, :, None])
    own = ops.logical_and(own, written)
    return ops.reshape(own, (ops.shape(slots)[0], 1, beams, beams * max_length))


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


# -- BERT / RoFormer lm and unilm -----------------------------------------------------------
def residual(block, x, sublayer, norm):
    """A ``TransformerBlock`` residual at inference: pre- or post-norm."""
    if block.norm == "pre":
        return x + sublayer(norm(x))
    return norm(x + sublayer(x))


class LanguageModelDecoder:
    """Cached and uncached decoding of a BERT-family builder built as ``lm`` or ``unilm``.

    ``LanguageModelDecoder(builder).generate(token_ids, segment_ids=None, max_length=32,
    method="greedy", end_id=None, use_cache=True, **options)`` returns int32
    ``(batch, <= max_length)`` generated ids; see ``keraformer.generation`` for the options.
    """

    def __init__(self, builder):
        self.builder = builder
        self.check_supported()
        self.variables = builder.model.weights
        self.cached = generation.Generator(self.step, self.variables)
        self.uncached = generation.Generator(self.full_step)
        self.prefills = {}

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

    # -- the model, piece by piece ---------------------------------------------------------
    def embed(self, ids, segments, positions, total):
        """Embeddings of ``ids (batch, n)`` at ``positions`` (broadcasting to ``(batch,
        n)``), as the builder's embedding graph computes them."""
        builder = self.builder
        x = builder.token_embedding(ids)
        segment = getattr(builder, "segment_embedding", None)
        if segment is not None:
            x = x + segment(segments)
        table = getattr(builder, "position_embedding", None)
        if table is not None:
            vectors = table.position_vectors(total)
            x = x + ops.take(vectors, ops.broadcast_to(positions, ops.shape(ids)), axis=0)
        x = builder.embedding_norm(x)
        mapping = getattr(builder, "embedding_mapping_dense", None)
        return x if mapping is None else mapping(x)

    def logits(self, x):
        """Vocabulary logits of final hidden states (the MLM head without its softmax)."""
        builder = self.builder
        if getattr(builder, "mlm_dense", None) is not None:
            x = builder.mlm_norm(builder.mlm_dense(x))
            return builder.mlm_bias(builder.token_embedding(x, reverse=True))
        return builder.token_embedding(x, reverse=True)  # RoFormerV2: tied, no transform

    def prompt_mask(self, ids, segments):
        """The application's mask over the prompt ``(batch, 1, P, P)``."""
        mask = padding_mask(ids, self.builder.pad_id)
        if self.builder.application == "unilm":
            return ops.logical_and(mask, unilm_mask(segments))
        return ops.logical_and(mask, causal_mask(ops.shape(ids)[1]))

    def prefill(self, ids, segments, lengths, max_length, beams):
        """Run the prompt: first-token log-probabilities ``(batch, vocab)`` and the cache."""
        prompt = ids.shape[1]
        total = prompt + max_length - 1
        x = self.embed(ids, segments, ops.arange(prompt)[None], total)
        mask = self.prompt_mask(ids, segments)
        batch = ops.shape(ids)[0]
        layers = []
        for block in self.builder.blocks:
            attention = block.attention
            scale = logit_scale(attention)
            kv = {}

            def sublayer(h, attention=attention, scale=scale, kv=kv):
                q, k, v = project(attention, h)
                kv["key"], kv["value"] = k, v
                return attention.output_dense(attend(q, [(k, v, mask, None)], scale))

            x = residual(block, x, sublayer, block.attention_norm)
            if getattr(block, "feedforward", None) is not None:
                x = residual(block, x, block.feedforward, block.feedforward_norm)
            k, v = kv["key"], kv["value"]
            layers.append({"prompt_key": k, "prompt_value": v,
                           "key": empty_slots(batch, beams, max_length, k),
                           "value": empty_slots(batch, beams, max_length, v)})
        last = generation.gather_beams(x, ops.cast(lengths - 1, "int32")[:, None])
        logits = ops.cast(self.logits(last)[:, 0], "float32")
        cache = {"layers": layers, "prompt_mask": padding_mask(ids, self.builder.pad_id),
                 "lengths": lengths}
        if beams > 1:
            cache["slots"] = ops.zeros((batch, beams, max_length), "int32")
        return ops.log_softmax(logits, axis=-1), cache

    def step(self, token_ids, index, cache, parents):
        """Cached step (see ``keraformer.generation``): the tokens generated at ``index``
        of every row, at positions ``prompt_length + index``."""
        lengths = cache["lengths"]
        batch, rows = ops.shape(lengths)[0], token_ids.shape[0]
        first = cache["layers"][0]
        beams, max_length = first["key"].shape[1], first["key"].shape[2]
        prompt = first["prompt_key"].shape[1]
        ids = ops.reshape(token_ids, (batch, beams))
        positions = ops.broadcast_to(lengths[:, None] + index, (batch, beams))
        segments = ops.full((batch, beams), self.generated_segment(), "int32")
        x = self.embed(ids, segments, positions, prompt + max_length - 1)
        cache = dict(cache)
        slots = None
        if parents is not None and beams > 1:
            slots = cache["slots"] = follow_parents(cache["slots"], parents, index)
        generated = generated_mask(index, max_length, slots)
        layers = []
        for block, layer in zip(self.builder.blocks, cache["layers"]):
            attention = block.attention
            scale = logit_scale(attention)
            layer = dict(layer)

            def sublayer(h, attention=attention, scale=scale, layer=layer):
                q, k, v = project(attention, h, positions)
                layer["key"] = write(layer["key"], k, index)
                layer["value"] = write(layer["value"], v, index)
                blocks = [(layer["prompt_key"], layer["prompt_value"], cache["prompt_mask"], None),
                          (flatten_beams(layer["key"]), flatten_beams(layer["value"]), generated,
                           None)]
                return attention.output_dense(attend(q, blocks, scale))

            x = residual(block, x, sublayer, block.attention_norm)
            if getattr(block, "feedforward", None) is not None:
                x = residual(block, x, block.feedforward, block.feedforward_norm)
            layers.append(layer)
        cache["layers"] = layers
        logits = ops.cast(ops.reshape(self.logits(x), (rows, -1)), "float32")
        return ops.log_softmax(logits, axis=-1), cache

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
            key = (max_length, beams, checked["compile"])
            if key not in self.prefills:
                prefill = lambda i, s, n: self.prefill(i, s, n, max_length, beams)  # noqa: E731
                self.prefills[key] = (generation.compile_function(prefill, self.variables)
                                      if checked["compile"] else prefill)
            log_probs, cache = self.prefills[key](*(ops.convert_to_tensor(a) for a in
                                                     (ids, segments, lengths)))
            return self.cached(cache, log_probs, end_id, max_length, method,
                               builder.vocab_size, **options)
        log_probs, cache = self.full_start(ids, segments, lengths, max_length, beams)
        return self.uncached(cache, log_probs, end_id, max_length, method, builder.vocab_size,
                             **options)


def language_model_decoder(builder):
    """The builder's :class:`LanguageModelDecoder`, made once (it keeps compiled loops)."""
    decoder = getattr(builder, "language_model_decoder", None)
    if decoder is None:
        decoder = builder.language_model_decoder = LanguageModelDecoder(builder)
    return decoder
