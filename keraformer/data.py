"""Data helpers: raw text to padded ``tf.data`` batches for ``model.fit``.

``text_dataset`` (classification, pairs) and ``seq2seq_dataset`` (T5) encode the texts once
with the tokenizer's compiled ``encode_batch`` and pad every batch to its own longest row, so a
KerasHub-style user fits on raw strings. The datasets are ``tf.data`` pipelines (the one
TensorFlow dependency here), which ``model.fit`` takes on TensorFlow and JAX alike.
"""

import numbers

import numpy as np


# -- raw text to tf.data -------------------------------------------------------------------


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1; received {value!r}")


def check_tokenizer(tokenizer):
    if tokenizer is None or not callable(getattr(tokenizer, "encode_batch", None)):
        raise TypeError(f"`tokenizer` must be a keraformer Tokenizer or SpTokenizer (anything "
                        f"with encode_batch(texts, second, maxlen)); received "
                        f"{type(tokenizer).__name__}")


def row_lengths(token_ids, pad_id):
    """Length of each right-padded row: one past its last non-padding id."""
    real = token_ids != pad_id
    width = token_ids.shape[1]
    return np.where(real.any(axis=1), width - np.argmax(real[:, ::-1], axis=1), 0)


def checked_targets(name, values, count):
    """``values`` (labels, sample weights) as an array with one row per text."""
    values = np.asarray(values)
    if values.ndim == 0 or len(values) != count:
        raise ValueError(f"`{name}` must have one entry per text ({count}); received "
                         f"{'a scalar' if values.ndim == 0 else len(values)}")
    if values.dtype == object or values.dtype.kind in "USV":
        raise TypeError(f"`{name}` must be numbers (class ids, targets); received dtype "
                        f"{values.dtype}; map label names to ids first")
    return values


def batched_indices(lengths, batch_size, shuffle, seed, bucket_boundaries, drop_remainder):
    """A ``tf.data.Dataset`` of index batches over the rows: in order, or shuffled again
    every epoch (``seed``), optionally grouped into buckets of similar lengths."""
    import tensorflow as tf

    count = len(lengths)
    indices = tf.data.Dataset.range(count)
    if shuffle:
        indices = indices.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    if bucket_boundaries is None:
        return indices.batch(batch_size, drop_remainder=drop_remainder)
    table = tf.constant(lengths, tf.int32)
    return indices.bucket_by_sequence_length(
        lambda i: tf.gather(table, i), list(bucket_boundaries),
        [batch_size] * (len(bucket_boundaries) + 1), drop_remainder=drop_remainder)


def check_buckets(bucket_boundaries):
    if bucket_boundaries is None:
        return None
    boundaries = list(bucket_boundaries)
    if not boundaries or any(isinstance(b, bool) or not isinstance(b, numbers.Integral)
                             or b < 1 for b in boundaries) or boundaries != sorted(set(
                                 boundaries)):
        raise ValueError(f"`bucket_boundaries` must be None or increasing ints >= 1 (the "
                         f"lengths where one bucket ends and the next begins); received "
                         f"{bucket_boundaries!r}")
    return boundaries


def text_dataset(texts, labels=None, tokenizer=None, maxlen=None, batch_size=32,
                 shuffle=False, second=None, seed=None, bucket_boundaries=None,
                 drop_remainder=False):
    """A ``tf.data.Dataset`` of ``((token_ids, segment_ids), labels)`` batches from raw text.

    The texts (and the ``second`` texts of pairs) are encoded once with
    ``tokenizer.encode_batch`` (bert4keras' framing and ``maxlen`` cut); every batch is then
    padded only to its own longest row (``pad_id``, segment 0). ``shuffle`` draws a new
    order every epoch (``seed`` makes it repeatable); ``bucket_boundaries`` (e.g.
    ``[32, 64, 128]``) batches texts of similar lengths together, so little padding is
    computed. ``labels`` (one per text: class ids, targets, multi-label rows) may be left out
    for ``predict``, which then gets ``((token_ids, segment_ids),)``. ``model.fit`` takes the
    dataset on every backend; on JAX each distinct batch shape compiles once, so buckets
    also bound the number of compilations.

    Args:
        texts: list of str.
        labels: None or array-like, one entry per text.
        tokenizer: a ``Tokenizer`` or ``SpTokenizer``.
        maxlen: None or the longest row in tokens, special tokens included.
        batch_size: texts per batch.
        shuffle: reshuffle every epoch.
        second: None or a list of second texts (pairs), one per text.
        seed: seed of the shuffle.
        bucket_boundaries: None or increasing lengths that separate the buckets.
        drop_remainder: drop a last batch smaller than ``batch_size``.
    """
    import tensorflow as tf

    check_tokenizer(tokenizer)
    check_positive_int("batch_size", batch_size)
    boundaries = check_buckets(bucket_boundaries)
    token_ids, segment_ids = tokenizer.encode_batch(texts, second, maxlen)
    count = len(token_ids)
    if count == 0:
        raise ValueError("`texts` must hold at least one text; received an empty list")
    targets = None if labels is None else checked_targets("labels", labels, count)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None and tokenizer.pad_id >= 0 else 0
    lengths = row_lengths(token_ids, pad_id)
    tokens = tf.RaggedTensor.from_tensor(token_ids, lengths=lengths)
    segments = tf.RaggedTensor.from_tensor(segment_ids, lengths=lengths)
    target_table = None if targets is None else tf.constant(targets)

    def gather(indices):
        x = (tf.gather(tokens, indices).to_tensor(pad_id),
             tf.gather(segments, indices).to_tensor(0))
        return (x,) if target_table is None else (x, tf.gather(target_table, indices))

    batches = batched_indices(lengths, batch_size, shuffle, seed, boundaries, drop_remainder)
    return batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def seq2seq_dataset(sources, targets=None, tokenizer=None, source_maxlen=None,
                    target_maxlen=None, batch_size=32, shuffle=False, seed=None,
                    bucket_boundaries=None, decoder_start_id=0, target_tokenizer=None,
                    drop_remainder=False):
    """A ``tf.data.Dataset`` of ``((encoder_ids, decoder_ids), labels, weights)`` batches
    for T5-style sequence-to-sequence ``fit`` on raw ``(source, target)`` text pairs.

    ``labels`` are the target ids as the tokenizer frames them (T5: the pieces then ``</s>``),
    ``decoder_ids`` the same shifted one step right behind ``decoder_start_id`` (T5: 0), so
    position ``t`` of the decoder sees the labels before ``t`` and predicts label ``t``;
    ``weights`` are 1 on real label positions and 0 on padding, so the loss ignores it.
    Every batch is padded to its own longest source and target; ``shuffle``, ``seed`` and
    ``bucket_boundaries`` (on the source length) work as in :func:`text_dataset`. Without
    ``targets`` it yields ``(encoder_ids,)`` batches. ``target_tokenizer`` defaults to
    ``tokenizer``.

    Args:
        sources: list of str.
        targets: None or a list of str, one per source.
        tokenizer: an ``SpTokenizer`` (or any tokenizer with ``encode_batch``).
        source_maxlen: None or the longest encoder row in tokens.
        target_maxlen: None or the longest label row in tokens.
        batch_size: pairs per batch.
        shuffle: reshuffle every epoch.
        seed: seed of the shuffle.
        bucket_boundaries: None or increasing source lengths that separate the buckets.
        decoder_start_id: the id the decoder starts from.
        target_tokenizer: None or the tokenizer of the targets.
        drop_remainder: drop a last batch smaller than ``batch_size``.
    """
    import tensorflow as tf

    check_tokenizer(tokenizer)
    target_tokenizer = tokenizer if target_tokenizer is None else target_tokenizer
    check_tokenizer(target_tokenizer)
    check_positive_int("batch_size", batch_size)
    if isinstance(decoder_start_id, bool) or not isinstance(decoder_start_id, numbers.Integral) \
            or decoder_start_id < 0:
        raise ValueError(f"`decoder_start_id` must be an int >= 0; received "
                         f"{decoder_start_id!r}")
    boundaries = check_buckets(bucket_boundaries)
    source_ids = tokenizer.encode_batch(sources, None, source_maxlen)[0]
    count = len(source_ids)
    if count == 0:
        raise ValueError("`sources` must hold at least one text; received an empty list")
    source_pad = tokenizer.pad_id if tokenizer.pad_id is not None and tokenizer.pad_id >= 0 \
        else 0
    source_lengths = row_lengths(source_ids, source_pad)
    encoder = tf.RaggedTensor.from_tensor(source_ids, lengths=source_lengths)
    labels = None
    if targets is not None:
        if len(targets) != count:
            raise ValueError(f"`targets` must have one text per source ({count}); received "
                             f"{len(targets)}")
        target_ids = target_tokenizer.encode_batch(targets, None, target_maxlen)[0]
        target_pad = target_tokenizer.pad_id if target_tokenizer.pad_id is not None \
            and target_tokenizer.pad_id >= 0 else 0
        labels = tf.RaggedTensor.from_tensor(target_ids,
                                             lengths=row_lengths(target_ids, target_pad))

    def gather(indices):
        encoder_ids = tf.gather(encoder, indices).to_tensor(source_pad)
        if labels is None:
            return (encoder_ids,)
        rows = tf.gather(labels, indices)
        label_ids = rows.to_tensor(target_pad)
        start = tf.fill([tf.shape(label_ids)[0], 1], tf.constant(decoder_start_id, tf.int32))
        decoder_ids = tf.concat([start, label_ids[:, :-1]], axis=1)
        weights = tf.sequence_mask(rows.row_lengths(), tf.shape(label_ids)[1], tf.float32)
        return (encoder_ids, decoder_ids), label_ids, weights

    batches = batched_indices(source_lengths, batch_size, shuffle, seed, boundaries,
                              drop_remainder)
    return batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
