"""Data helpers with bert4keras' API: ``sequence_padding`` and ``DataGenerator``.

``sequence_padding`` pads (or cuts) a list of sequences to one array, as bert4keras'
``snippets.sequence_padding`` does. ``DataGenerator`` is bert4keras' batching template: a
subclass writes ``__iter__(random)`` yielding one padded batch at a time, built from
``self.sample(random)``; ``forfit()`` then feeds ``model.fit`` forever with batches padded to
their own longest row. Keras 3 needs two things that bert4keras' generators did not give it,
and ``forfit``/``fortest`` supply them: every batch as a tuple ``(inputs, targets)`` of arrays
(a list-shaped batch is refused by Keras), and, on TensorFlow, a ``tf.data.Dataset`` whose
spec leaves every axis but the rank open, because Keras otherwise fixes the sequence length
from the first two batches and fails on the first batch of another length. (On JAX every new
batch shape is compiled once; padding lengths to a multiple, ``sequence_padding(x,
length=...)``, bounds how many.)

``text_dataset`` (classification, pairs) and ``seq2seq_dataset`` (T5) take raw strings, as a
KerasHub user has them: the texts are encoded once with the tokenizer's compiled
``encode_batch`` and every batch of the ``tf.data`` pipeline is padded to its own longest row;
``model.fit`` takes it on TensorFlow and JAX alike. ``read_labelled_texts`` reads the
``text<TAB>label`` files of a classification corpus (a file, a folder or a zip archive).
"""

import inspect
import numbers
import os
import re
import zipfile

import keras
import numpy as np


def check_int(name, value, minimum):
    """Raise ``TypeError``/``ValueError`` unless ``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer; received {value!r} of type "
                        f"{type(value).__name__}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; received {value}")


def sequence_padding(inputs, length=None, value=0, seq_dims=1, mode="post",
                     pad_to_multiple_of=None):
    """Pad each sequence of ``inputs`` to one length and stack them into a NumPy array.

    ``inputs`` is a list of sequences (lists or arrays) of equal rank whose first
    ``seq_dims`` axes are sequence axes. ``length`` (an int, or one int per sequence axis)
    defaults to the longest size of each axis; a sequence longer than ``length`` is cut to
    it, as in bert4keras. ``mode="post"`` pads at the end, ``"pre"`` at the start; ``value``
    fills the padding. Returns an array of shape ``(len(inputs), *length, *rest)`` with the
    inputs' dtype, equal to bert4keras 0.11.5's ``sequence_padding``. ``pad_to_multiple_of``
    (keraformer's addition) rounds the default lengths up to a multiple of it, so fewer
    distinct batch shapes reach the model (JAX and XLA compile each shape once).

    Example:

        >>> from keraformer.data import sequence_padding
        >>> sequence_padding([[1, 2, 3], [4]]).tolist()
        [[1, 2, 3], [4, 0, 0]]
        >>> sequence_padding([[1, 2, 3], [4]], length=2, mode="pre").tolist()   # cut, pad in front
        [[1, 2], [0, 4]]
        >>> sequence_padding([[1, 2, 3]], pad_to_multiple_of=4).shape
        (1, 4)
    """
    if mode not in ("post", "pre"):
        raise ValueError(f'`mode` must be "post" or "pre"; received {mode!r}')
    check_int("seq_dims", seq_dims, 1)
    if isinstance(inputs, np.ndarray):
        inputs = list(inputs)
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise ValueError(f"`inputs` must be a non-empty list of sequences; received "
                         f"{inputs!r}"[:200])
    arrays = [np.asarray(x) for x in inputs]
    ranks = {x.ndim for x in arrays}
    if len(ranks) != 1 or min(ranks) < seq_dims:
        raise ValueError(f"`inputs` must be sequences of one rank >= seq_dims={seq_dims}; "
                         f"received ranks {sorted(ranks)} (ragged nesting inside one "
                         f"sequence cannot be padded)")
    if pad_to_multiple_of is not None:
        check_int("pad_to_multiple_of", pad_to_multiple_of, 1)
        if length is not None:
            raise ValueError(f"`pad_to_multiple_of` rounds up the default length; pass it or "
                             f"`length`, not both (received length={length!r})")
    if length is None:
        length = np.max([x.shape[:seq_dims] for x in arrays], axis=0)
        if pad_to_multiple_of is not None:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    elif not hasattr(length, "__getitem__"):
        length = [length]
    if len(length) < seq_dims:
        raise ValueError(f"`length` must give one size per sequence axis (seq_dims="
                         f"{seq_dims}); received {length!r}")
    for size in list(length)[:seq_dims]:
        check_int("length", size, 0)
    rest = {x.shape[seq_dims:] for x in arrays}
    if len(rest) != 1:
        raise ValueError(f"`inputs` must agree on every axis after the first seq_dims="
                         f"{seq_dims}; received trailing shapes {sorted(rest)}")
    dtype = np.result_type(*arrays)
    if not representable(value, dtype):
        raise ValueError(f"`value` must be representable in the inputs' dtype {dtype}; "
                         f"received {value!r}")
    cut = tuple(slice(0, int(length[i])) for i in range(seq_dims))
    outputs = []
    for x in arrays:
        x = x[cut]
        pad_width = [(0, 0)] * x.ndim
        for i in range(seq_dims):
            missing = int(length[i]) - x.shape[i]
            pad_width[i] = (0, missing) if mode == "post" else (missing, 0)
        outputs.append(np.pad(x, pad_width, "constant", constant_values=value))
    return np.array(outputs)


def representable(value, dtype):
    """True when ``value`` survives a cast to the numeric ``dtype`` unchanged (NaN counts)."""
    if not np.issubdtype(dtype, np.number):
        return True
    try:
        cast = np.asarray(value, dtype).item()
    except (OverflowError, TypeError, ValueError):
        return False
    return cast == value or (cast != cast and value != value)


def open_shape(shape):
    """The shape a ``tf.data`` spec gives an array of ``shape``: the batch axis and every other
    axis open (``None``) except those of size 1 (a label column, which losses squeeze)."""
    return (None,) + tuple(1 if size == 1 else None for size in shape[1:])


def as_arrays(part):
    """One element of a batch as Keras takes it: an array, a tuple of arrays or a dict."""
    if isinstance(part, dict):
        return {key: np.asarray(item) for key, item in part.items()}
    if isinstance(part, (list, tuple)) and part and not all(
            isinstance(item, (numbers.Number, str, bytes)) for item in part):
        return tuple(np.asarray(item) for item in part)
    return np.asarray(part)


def as_batch(batch):
    """``(inputs, targets[, sample_weights])`` as a tuple of arrays (lists become tuples).

    Trailing ``None`` parts are dropped: bert4keras' ``yield inputs, None`` (a model whose loss
    a ``LossLayer`` adds) becomes ``(inputs,)``."""
    if isinstance(batch, (list, tuple)):
        batch = list(batch)
        while len(batch) > 1 and batch[-1] is None:
            batch.pop()
        if any(part is None for part in batch):
            raise ValueError(f"a batch from `__iter__` may end in None parts (no targets) but "
                             f"not hold None before its last part; received parts "
                             f"{['None' if p is None else type(p).__name__ for p in batch]}")
        if not 1 <= len(batch) <= 3:
            raise ValueError(f"a batch from `__iter__` must be (inputs,), (inputs, targets) or "
                             f"(inputs, targets, sample_weights); received {len(batch)} parts")
        return tuple(as_arrays(part) for part in batch)
    return (as_arrays(batch),)


class DataGenerator:
    """bert4keras' batching template: subclass it and write ``__iter__(self, random=False)``.

    ``data`` is any iterable of samples (a list, or an unsized iterable streamed through a
    shuffle buffer of ``buffer_size`` samples, default ``1000 * batch_size``).
    ``self.sample(random)`` yields ``(is_end, sample)`` pairs, ``is_end`` True for the last
    sample, so ``__iter__`` knows when to yield the final, shorter batch. ``len(generator)``
    is the number of batches per epoch (``ceil(len(data) / batch_size)``).

    ``forfit(random=True)`` repeats epochs forever for ``model.fit(generator.forfit(),
    steps_per_epoch=len(generator), ...)``; ``fortest()`` does the same with inputs only,
    for ``model.predict``. Batches may each have their own length (dynamic padding).

    Example:

        >>> from keraformer.data import DataGenerator, sequence_padding
        >>> class Batches(DataGenerator):
        ...     def __iter__(self, random=False):
        ...         batch = []
        ...         for is_end, (ids, label) in self.sample(random):
        ...             batch.append((ids, label))
        ...             if len(batch) == self.batch_size or is_end:
        ...                 yield sequence_padding([i for i, _ in batch]), [l for _, l in batch]
        ...                 batch = []
        >>> data = [([5, 6], 1), ([7], 0), ([5, 6, 7], 1)]
        >>> generator = Batches(data, batch_size=2)
        >>> len(generator), [ids.shape for ids, _ in generator]   # each batch its own length
        (2, [(2, 2), (1, 3)])
    """

    def __init__(self, data, batch_size=32, buffer_size=None):
        check_int("batch_size", batch_size, 1)
        if buffer_size is not None:
            check_int("buffer_size", buffer_size, 1)
        self.data = data
        self.batch_size = batch_size
        if hasattr(data, "__len__"):
            self.steps = -(-len(data) // batch_size)
        else:
            self.steps = None
        self.buffer_size = buffer_size or batch_size * 1000

    def __len__(self):
        if self.steps is None:
            raise TypeError("len() of a DataGenerator needs `data` with a length; this one "
                            f"streams a {type(self.data).__name__} (pass steps_per_epoch "
                            f"to model.fit yourself)")
        return self.steps

    def sample(self, random=False):
        """Yield ``(is_end, sample)`` over one pass of the data, shuffled if ``random``.

        Sized data is permuted with ``np.random.permutation``; unsized data goes through a
        buffer of ``buffer_size`` samples from which ``np.random.randint`` picks, so a fixed
        ``np.random.seed`` gives bert4keras' order.
        """
        if not random:
            samples = iter(self.data)
        elif self.steps is None:
            samples = self.buffered_shuffle()
        else:
            samples = (self.data[i] for i in np.random.permutation(len(self.data)))
        try:
            current = next(samples)
        except StopIteration:
            return
        for following in samples:
            yield False, current
            current = following
        yield True, current

    def buffered_shuffle(self):
        """Samples of unsized ``data`` in a random order, ``buffer_size`` held at a time."""
        cache, full = [], False
        for item in self.data:
            cache.append(item)
            if full:
                yield cache.pop(np.random.randint(len(cache)))
            elif len(cache) == self.buffer_size:
                full = True
        while cache:
            yield cache.pop(np.random.randint(len(cache)))

    def __iter__(self, random=False):
        raise NotImplementedError(
            f"{type(self).__name__} must define __iter__(self, random=False) yielding "
            f"batches built from self.sample(random), as in bert4keras")

    def epochs(self, random, inputs_only=False):
        """Batches of epoch after epoch, each a tuple of arrays, without end."""
        while True:
            empty = True
            for batch in self.__iter__(random):
                empty = False
                batch = as_batch(batch)
                yield batch[:1] if inputs_only else batch
            if empty:
                raise ValueError(f"{type(self).__name__}.__iter__ yielded no batch for "
                                 f"`data` of {self.steps} batches; it must yield at least one")

    def forfit(self, random=True):
        """Batches for ``model.fit`` (with ``steps_per_epoch=len(self)``), repeating forever.

        On TensorFlow a ``tf.data.Dataset`` with open axes (all but the batch's size-1 axes,
        see :func:`open_shape`), so that every batch keeps its own length; on JAX (and torch)
        a Python generator of tuples.
        """
        return self.for_keras(self.epochs(random))

    def fortest(self, random=False):
        """Inputs-only batches for ``model.predict(..., steps=len(self))``, forever."""
        return self.for_keras(self.epochs(random, inputs_only=True))

    @staticmethod
    def for_keras(batches):
        if keras.backend.backend() != "tensorflow":
            return batches
        import tensorflow as tf

        first = next(batches)
        signature = keras.tree.map_structure(
            lambda x: tf.TensorSpec(open_shape(x.shape), tf.as_dtype(x.dtype)), first)
        pending = [first]

        def generate():
            while pending:
                yield pending.pop()
            yield from batches

        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
        return dataset.prefetch(tf.data.AUTOTUNE)

    def __repr__(self):
        size = "unsized" if self.steps is None else f"{self.steps} batches"
        return f"{type(self).__name__}(batch_size={self.batch_size}, {size})"


# -- raw text to tf.data -------------------------------------------------------------------


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
                 drop_remainder=False, subword_sampling=None):
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
        subword_sampling: None, or ``{"alpha": ..., "nbest_size": ...}`` for an
            ``SpTokenizer``: every batch of every epoch is encoded again with
            ``encode(..., sample=True, **subword_sampling)`` (subword regularisation), so
            each epoch sees new segmentations (buckets use the plain lengths).

    Example:

        >>> vocab = {token: i for i, token in enumerate(
        ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "film", "bad", "##s", "a"])}
        >>> from keraformer.data import text_dataset
        >>> from keraformer.tokenizers import Tokenizer
        >>> dataset = text_dataset(["good film", "a bad film", "bad"], [1, 0, 0],
        ...                        tokenizer=Tokenizer(vocab), batch_size=2)
        >>> [(tuple(ids.shape), tuple(labels.shape)) for (ids, segments), labels in dataset]
        [((2, 5), (2,)), ((1, 3), (1,))]
    """
    import tensorflow as tf

    check_tokenizer(tokenizer)
    check_int("batch_size", batch_size, 1)
    boundaries = check_buckets(bucket_boundaries)
    sampling = check_subword_sampling(subword_sampling, tokenizer)
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

    if sampling is not None:
        text_list, second_list = list(texts), None if second is None else list(second)

        def sampled_rows(indices):
            rows = [tokenizer.encode(text_list[i], None if second_list is None
                                     else second_list[i], maxlen, sample=True, **sampling)
                    for i in indices]
            return (sequence_padding([r[0] for r in rows], value=pad_id).astype("int32"),
                    sequence_padding([r[1] for r in rows]).astype("int32"))

        def gather_sampled(indices):
            x = tf.numpy_function(sampled_rows, [indices], [tf.int32, tf.int32],
                                  stateful=True)
            for part in x:
                part.set_shape((None, None))
            x = tuple(x)
            return (x,) if target_table is None else (x, tf.gather(target_table, indices))

    batches = batched_indices(lengths, batch_size, shuffle, seed, boundaries, drop_remainder)
    batches = batches.map(gather if sampling is None else gather_sampled,
                          num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE)


def check_subword_sampling(subword_sampling, tokenizer):
    """``subword_sampling`` as keyword arguments of ``encode(..., sample=True)``."""
    if subword_sampling is None:
        return None
    if not isinstance(subword_sampling, dict) or set(subword_sampling) - {"alpha",
                                                                           "nbest_size"}:
        raise TypeError(f"`subword_sampling` must be None or a dict with the keys 'alpha' "
                        f"and/or 'nbest_size'; received {subword_sampling!r}")
    if "sample" not in inspect.signature(tokenizer.encode).parameters:
        raise TypeError(f"`subword_sampling` needs an SpTokenizer (SentencePiece samples "
                        f"segmentations); received {type(tokenizer).__name__}")
    tokenizer.encode("a", sample=True, **subword_sampling)  # refuses bad options by name
    return dict(subword_sampling)


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

    Example:

        >>> from keraformer.data import seq2seq_dataset
        >>> from keraformer.tokenizers import Tokenizer
        >>> vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b"])}
        >>> tokenizer = Tokenizer(vocab, token_start=None)   # targets end with [SEP] (id 3)
        >>> dataset = seq2seq_dataset(["a b", "b"], ["b a", "a"], tokenizer=tokenizer, batch_size=2)
        >>> (encoder_ids, decoder_ids), labels, weights = next(iter(dataset))
        >>> decoder_ids.numpy().tolist(), labels.numpy().tolist()   # shifted behind start id 0
        ([[0, 5, 4], [0, 4, 3]], [[5, 4, 3], [4, 3, 0]])
        >>> weights.numpy().tolist()
        [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    """
    import tensorflow as tf

    check_tokenizer(tokenizer)
    target_tokenizer = tokenizer if target_tokenizer is None else target_tokenizer
    check_tokenizer(target_tokenizer)
    check_int("batch_size", batch_size, 1)
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


# -- labelled text files -------------------------------------------------------------------


LABEL = re.compile(r"[+-]?\d+")


def read_labelled_texts(path, split=None):
    """``[(text, label), ...]`` from ``text<TAB>label`` lines, the format of bert4keras'
    classification corpora (each of its example scripts read it with its own ``load_data``).

    ``path`` is one such file, or a folder or zip archive holding one file per split; then
    ``split`` (e.g. ``"train"``) picks the one file whose name contains it (folders are
    searched recursively; names starting with ``.`` are passed over, as are macOS'
    ``__MACOSX`` copies). Every non-blank line is a text, a tab and an integer label; a text
    may hold tabs itself (the last one separates). Files are read as UTF-8 (a leading BOM is
    dropped); blank lines are skipped. The rows keep the file's order.

    Args:
        path: str or path-like, a ``text<TAB>label`` file, a folder or a ``.zip`` archive.
        split: None for a file; for a folder or archive, the part of a file name that picks
            the file.

    Raises ``FileNotFoundError`` for a missing ``path``, ``ValueError`` when ``split`` picks
    no file or several, and ``ValueError`` naming the file and line of a line that is not
    ``text<TAB>label``.

    Example:

        >>> import os, tempfile
        >>> from keraformer.data import read_labelled_texts
        >>> path = os.path.join(tempfile.mkdtemp(), "train.tsv")
        >>> with open(path, "w", encoding="utf-8") as f:
        ...     _ = f.write("a good film\\t1\\nbad\\t0\\n")
        >>> read_labelled_texts(path)
        [('a good film', 1), ('bad', 0)]
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or path-like (a file, folder or zip archive); "
                        f"received {type(path).__name__}")
    if split is not None and not isinstance(split, str):
        raise TypeError(f"`split` must be None or a str such as 'train'; received "
                        f"{type(split).__name__}")
    if split == "":
        raise ValueError("`split` must be None or a non-empty str such as 'train'; received ''")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"`path` {path!r} does not exist")
    folder, archive = os.path.isdir(path), zipfile.is_zipfile(path)
    if not folder and not archive:
        if split is not None:
            raise ValueError(f"`split` picks a file inside a folder or zip archive; `path` "
                             f"{path!r} is a single file (pass split=None); received "
                             f"split={split!r}")
        with open(path, encoding="utf-8-sig") as f:
            return labelled_rows(f.read(), path)
    if split is None:
        raise ValueError(f"`path` {path!r} is a {'folder' if folder else 'zip archive'}: "
                         f"pass `split` (e.g. 'train') to pick one of its files")
    if archive:
        with zipfile.ZipFile(path) as z:
            name = split_file([n for n in z.namelist() if not n.endswith("/")], split, path)
            return labelled_rows(z.read(name).decode("utf-8-sig"), f"{path}:{name}")
    names = [os.path.relpath(os.path.join(root, f), path)
             for root, _, files in os.walk(path) for f in files]
    name = os.path.join(path, split_file(names, split, path))
    with open(name, encoding="utf-8-sig") as f:
        return labelled_rows(f.read(), name)


def split_file(names, split, path):
    """The one name among ``names`` whose base name contains ``split``."""
    candidates = [n for n in sorted(names) if split in os.path.basename(n)
                  and not os.path.basename(n).startswith(".")
                  and "__MACOSX" not in n.replace("\\", "/").split("/")]
    if len(candidates) != 1:
        raise ValueError(f"`split` {split!r} must pick one file of {path!r} by name; "
                         f"{'it picks ' + str(candidates) if candidates else 'none contains it'}"
                         f" (files: {sorted(names)[:20]})")
    return candidates[0]


def labelled_rows(content, source):
    """The ``(text, label)`` rows of the text ``content`` of file ``source``."""
    rows = []
    for number, line in enumerate(content.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        text, tab, label = line.rpartition("\t")
        if not tab or not LABEL.fullmatch(label.strip()):
            raise ValueError(f"{source} line {number}: expected 'text<TAB>label' with an "
                             f"integer label; received {line[:80]!r}")
        rows.append((text, int(label)))
    if not rows:
        raise ValueError(f"{source} holds no 'text<TAB>label' line")
    return rows


# -- pretraining objectives ----------------------------------------------------------------


def check_rate(name, value, upper_closed=False):
    """A real number in ``(0, 1)`` (``(0, 1]`` with ``upper_closed``), by name."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number in (0, 1); received {value!r} of type "
                        f"{type(value).__name__}")
    if not (0 < value < 1 or (upper_closed and value == 1)):
        raise ValueError(f"`{name}` must lie in (0, 1{']' if upper_closed else ')'}; "
                         f"received {value!r}")
    return float(value)


def check_seed(seed):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"`seed` must be None or an integer; received {seed!r}")
    return seed


def special_token_ids(tokenizer):
    """The ids an objective never masks or corrupts: padding, the frame tokens, ``[MASK]``,
    and for a SentencePiece model its end, unknown and sentinel ids."""
    ids = {tokenizer.pad_id}
    for name in ("_token_start_id", "_token_end_id", "_token_mask_id", "_token_cls_id",
                 "_token_sep_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            ids.add(int(value))
    if callable(getattr(tokenizer, "is_special", None)):
        ids.update(i for i in range(tokenizer.vocab_size) if tokenizer.is_special(i))
    return {i for i in ids if i is not None and i >= 0}


def unframed(token_ids, tokenizer):
    """The rows of ``encode_batch``'s ``token_ids`` without their start and end tokens, as a
    list of int32 arrays."""
    pad = tokenizer.pad_id if tokenizer.pad_id is not None and tokenizer.pad_id >= 0 else 0
    lengths = row_lengths(token_ids, pad)
    start = int(tokenizer.token_start is not None)
    end = int(tokenizer.token_end is not None)
    return [row[start:length - end].astype("int32") for row, length in zip(token_ids, lengths)]


def mask_tokens(token_ids, word_ids, rng, mask_rate, mask_id, replacement_ids):
    """BERT's masking of one batch (Devlin et al. 2019): every maskable word is chosen with
    probability ``mask_rate``; each token of a chosen word becomes ``mask_id`` (80%), a
    token drawn uniformly from ``replacement_ids`` (10%) or stays (10%).

    ``token_ids (batch, length)``; ``word_ids (batch, length)`` the index of each token's
    word within its row, ``-1`` for tokens never masked (special tokens, padding); a token
    that is its own word gives token-level masking. Returns ``(inputs, labels, weights)``:
    the masked ids, the original ids at chosen positions (0 elsewhere) and 1.0 at chosen
    positions (0.0 elsewhere), so the loss counts the chosen tokens only.
    """
    token_ids = np.asarray(token_ids)
    word_ids = np.asarray(word_ids)
    maskable = word_ids >= 0
    word_draws = rng.random(token_ids.shape)
    chosen_words = word_draws < mask_rate
    chosen = maskable & np.take_along_axis(chosen_words, np.maximum(word_ids, 0), axis=1)
    action = rng.random(token_ids.shape)
    random_ids = np.asarray(replacement_ids)[rng.integers(0, len(replacement_ids),
                                                          token_ids.shape)]
    inputs = np.where(chosen & (action < 0.8), mask_id, token_ids)
    inputs = np.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    labels = np.where(chosen, token_ids, 0)
    return (inputs.astype("int32"), labels.astype("int32"), chosen.astype("float32"))


def word_pieces_of(text, tokenizer, pre_tokenize):
    """``(ids, word_ids)`` of one text encoded word by word (``pre_tokenize`` gives the
    words), framed as the tokenizer frames it; frame tokens have word id ``-1``."""
    ids, words = [], []
    for word in pre_tokenize(text):
        pieces = tokenizer.tokens_to_ids(tokenizer.translated_pieces(word))
        words.extend([words[-1] + 1 if words else 0] * len(pieces))
        ids.extend(pieces)
    start = [] if tokenizer.token_start is None else [tokenizer.token_to_id(
        tokenizer.token_start)]
    end = [] if tokenizer.token_end is None else [tokenizer.token_to_id(tokenizer.token_end)]
    return start + ids + end, [-1] * len(start) + words + [-1] * len(end)


def batch_seeds(seed):
    """A dataset of one int64 per batch that differs every epoch and, with an integer
    ``seed``, repeats from run to run."""
    import tensorflow as tf

    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)


def mlm_dataset(texts, tokenizer=None, maxlen=None, batch_size=32, mask_rate=0.15,
                shuffle=False, seed=None, pre_tokenize=None, special_ids=None,
                drop_remainder=False):
    """A ``tf.data.Dataset`` of ``((token_ids, segment_ids), labels, weights)`` batches for
    masked-language-model pretraining (BERT) on raw text, for a builder with
    ``with_mlm=True`` and ``loss="sparse_categorical_crossentropy"``.

    Each epoch draws new masks (dynamic masking; ``seed`` makes the sequence repeatable):
    tokens are chosen with probability ``mask_rate`` and replaced as :func:`mask_tokens`
    says (80% ``[MASK]``, 10% a random ordinary token, 10% unchanged). Padding, the frame
    tokens (``[CLS]``, ``[SEP]``), ``[MASK]`` and ``special_ids`` are never chosen, nor
    drawn as random replacements. ``labels`` hold the original ids at chosen positions and
    ``weights`` are 1 there and 0 elsewhere, so the loss sees the chosen tokens only.
    ``pre_tokenize`` (a segmenter such as ``jieba.lcut``: text → words) turns on
    whole-word masking: every token of a chosen word is chosen (Chinese BERT-wwm).

    Args:
        texts: list of str.
        tokenizer: a ``Tokenizer`` (with ``[MASK]``) or an ``SpTokenizer`` holding
            ``[MASK]``.
        maxlen: None or the longest row in tokens, frame included.
        batch_size: texts per batch.
        mask_rate: the chance that a token (a word with ``pre_tokenize``) is chosen, in (0, 1).
        shuffle: reshuffle every epoch.
        seed: None or an int: the shuffle's and the masks' seed.
        pre_tokenize: None or a function text -> list of words (whole-word masking).
        special_ids: more ids never to mask (e.g. ``[unused*]``).
        drop_remainder: drop a last batch smaller than ``batch_size``.

    Example:

        >>> import numpy as np
        >>> from keraformer.data import mlm_dataset
        >>> from keraformer.tokenizers import Tokenizer
        >>> vocab = {t: i for i, t in enumerate(
        ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "film", "plot"])}
        >>> dataset = mlm_dataset(["a good film", "a bad plot a good film"], Tokenizer(vocab),
        ...                       batch_size=2, mask_rate=0.5, seed=0)
        >>> (token_ids, segment_ids), labels, weights = next(iter(dataset))
        >>> tuple(token_ids.shape), tuple(labels.shape), tuple(weights.shape)
        ((2, 8), (2, 8), (2, 8))
        >>> original = np.array([[2, 5, 6, 8, 3, 0, 0, 0], [2, 5, 7, 9, 5, 6, 8, 3]])
        >>> chosen = weights.numpy() == 1
        >>> bool((labels.numpy()[chosen] == original[chosen]).all())      # labels: the original ids
        True
        >>> bool((token_ids.numpy()[~chosen] == original[~chosen]).all())  # the rest is unchanged
        True
        >>> bool(chosen[:, 0].any() or chosen[original == 0].any())        # never [CLS] or padding
        False
    """
    import tensorflow as tf

    check_tokenizer(tokenizer)
    check_int("batch_size", batch_size, 1)
    mask_rate = check_rate("mask_rate", mask_rate)
    seed = check_seed(seed)
    if pre_tokenize is not None and not callable(pre_tokenize):
        raise TypeError(f"`pre_tokenize` must be None or a function text -> words; received "
                        f"{type(pre_tokenize).__name__}")
    mask_id = getattr(tokenizer, "_token_mask_id", None)
    if mask_id is None:
        raise ValueError("`tokenizer` must hold a [MASK] token for masked-language-model "
                         "data; its vocabulary has none")
    specials = special_token_ids(tokenizer)
    if special_ids is not None:
        specials |= {integer for integer in (int(i) for i in special_ids)}
    replacement_ids = np.array([i for i in range(tokenizer.vocab_size) if i not in specials],
                               "int32")
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None and tokenizer.pad_id >= 0 else 0
    if pre_tokenize is None:
        token_ids = tokenizer.encode_batch(texts, None, maxlen)[0]
        lengths = row_lengths(token_ids, pad_id)
        positions = np.broadcast_to(np.arange(token_ids.shape[1]), token_ids.shape)
        word_ids = np.where(np.isin(token_ids, list(specials)), -1, positions)
    else:
        rows = [word_pieces_of(text, tokenizer, pre_tokenize) for text in texts]
        if maxlen is not None:
            frame = int(tokenizer.token_start is not None) + int(tokenizer.token_end is not None)
            tokenizer.check_maxlen(maxlen, frame)
            rows = [(ids[:maxlen - 1] + ids[-1:], words[:maxlen - 1] + words[-1:])
                    if len(ids) > maxlen and tokenizer.token_end is not None
                    else (ids[:maxlen], words[:maxlen]) for ids, words in rows]
        lengths = np.array([len(ids) for ids, _ in rows])
        token_ids = sequence_padding([ids for ids, _ in rows] or [[]], value=pad_id)
        word_ids = sequence_padding([words for _, words in rows] or [[]], value=-1)
        word_ids = np.where(np.isin(token_ids, list(specials)), -1, word_ids)
    count = len(token_ids)
    if count == 0:
        raise ValueError("`texts` must hold at least one text; received an empty list")
    tokens = tf.RaggedTensor.from_tensor(token_ids.astype("int32"), lengths=lengths)
    words = tf.RaggedTensor.from_tensor(word_ids.astype("int32"), lengths=lengths)

    def masked(ids, word_ids, batch_seed):
        rng = np.random.default_rng(np.uint64(batch_seed))
        return mask_tokens(ids, word_ids, rng, mask_rate, mask_id, replacement_ids)

    def gather(indices, batch_seed):
        ids = tf.gather(tokens, indices).to_tensor(pad_id)
        word_ids = tf.gather(words, indices).to_tensor(-1)
        inputs, labels, weights = tf.numpy_function(
            masked, [ids, word_ids, batch_seed], [tf.int32, tf.int32, tf.float32],
            stateful=False)
        for part in (inputs, labels, weights):
            part.set_shape(ids.shape)
        return (inputs, tf.zeros_like(inputs)), labels, weights

    batches = batched_indices(lengths, batch_size, shuffle, seed, None, drop_remainder)
    batches = tf.data.Dataset.zip((batches, batch_seeds(seed)))
    return batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def random_segmentation(total, segments, rng):
    """``segments`` positive lengths summing to ``total``, uniformly over such compositions
    (``segments - 1`` cuts drawn without replacement among the ``total - 1`` gaps)."""
    cuts = np.sort(rng.choice(total - 1, segments - 1, replace=False)) + 1 \
        if segments > 1 else np.array([], int)
    return np.diff(np.concatenate([[0], cuts, [total]]))


def random_spans_noise_mask(length, noise_density, mean_noise_span_length, rng):
    """T5's span-corruption mask (Raffel et al. 2020, section 3.1.4) for ``length`` tokens.

    ``round(length·noise_density)`` tokens (at least 1, at most ``length − 1``) are noise,
    in ``round(noise / mean_noise_span_length)`` spans (at least 1); noise and non-noise
    tokens are each split into that many runs of random positive lengths, interleaved
    starting with non-noise. A length below 2 is masked as T5 masks it: as length 2, then
    cut. Returns a boolean array ``(length,)``, True at noise tokens.
    """
    original = length
    length = max(length, 2)
    noise = min(max(int(round(length * noise_density)), 1), length - 1)
    spans = max(int(round(noise / mean_noise_span_length)), 1)
    spans = min(spans, noise, length - noise)
    noise_lengths = random_segmentation(noise, spans, rng)
    kept_lengths = random_segmentation(length - noise, spans, rng)
    runs = np.stack([kept_lengths, noise_lengths], axis=1).ravel()
    is_noise = np.repeat(np.tile([False, True], spans), runs)
    return is_noise[:original]


def corrupt_spans(ids, noise, sentinel_ids):
    """``(inputs, targets)`` of T5's span corruption: each noise span of ``ids`` is replaced
    in the inputs by the next sentinel, and the targets list every sentinel followed by the
    span it replaced (no end token: the caller frames both)."""
    inputs, targets = [], []
    span = -1
    for position, (token, is_noise) in enumerate(zip(ids, noise)):
        if is_noise:
            if position == 0 or not noise[position - 1]:
                span += 1
                inputs.append(sentinel_ids[span])
                targets.append(sentinel_ids[span])
            targets.append(token)
        else:
            inputs.append(token)
    return inputs, targets


def span_corruption_dataset(texts, tokenizer=None, maxlen=None, batch_size=32,
                            noise_density=0.15, mean_noise_span_length=3.0, shuffle=False,
                            seed=None, decoder_start_id=0, drop_remainder=False):
    """A ``tf.data.Dataset`` of ``((encoder_ids, decoder_ids), labels, weights)`` batches
    for T5's span-corruption pretraining on raw text (T5, T5.1.1 and mT5 builders, with
    ``loss="sparse_categorical_crossentropy"``), in :func:`seq2seq_dataset`'s layout.

    Every epoch draws new spans (``seed`` makes them repeatable) with
    :func:`random_spans_noise_mask` over the text's pieces (``maxlen`` cuts them first, the
    end token not counted): the encoder reads the text with each noise span replaced by a
    sentinel ``<extra_id_i>`` then ``</s>``; the labels are each sentinel followed by its
    span, then ``</s>``; ``decoder_ids`` are the labels shifted right behind
    ``decoder_start_id``; ``weights`` are 1 on real label positions.

    Args:
        texts: list of str.
        tokenizer: an ``SpTokenizer`` with sentinels (T5: ``token_start=None,
            token_end="</s>"``).
        maxlen: None or the most pieces of a text that are read.
        batch_size: texts per batch.
        noise_density: the fraction of tokens corrupted, in (0, 1).
        mean_noise_span_length: the mean length of a corrupted span, a number >= 1.
        shuffle: reshuffle every epoch.
        seed: None or an int: the shuffle's and the spans' seed.
        decoder_start_id: the id the decoder starts from.
        drop_remainder: drop a last batch smaller than ``batch_size``.

    Example:

        >>> import os, tempfile
        >>> import sentencepiece
        >>> from keraformer.data import span_corruption_dataset
        >>> from keraformer.tokenizers import SpTokenizer
        >>> folder = tempfile.mkdtemp()
        >>> texts = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"] * 20
        >>> sentencepiece.SentencePieceTrainer.train(
        ...     sentence_iterator=iter(texts), model_prefix=os.path.join(folder, "sp"),
        ...     vocab_size=20, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
        >>> tokenizer = SpTokenizer(os.path.join(folder, "sp.model"), token_start=None,
        ...                         token_end="</s>", extra_ids=10)
        >>> dataset = span_corruption_dataset(["the cat sat on the mat"], tokenizer=tokenizer,
        ...                                   batch_size=1, noise_density=0.3, seed=0)
        >>> (encoder_ids, decoder_ids), labels, weights = next(iter(dataset))
        >>> labels = labels.numpy()[0].tolist()
        >>> tokenizer.id_to_token(labels[0]), tokenizer.id_to_token(labels[-1])
        ('<extra_id_0>', '</s>')
        >>> decoder_ids.numpy()[0].tolist() == [0] + labels[:-1]   # shifted right
        True
    """
    import tensorflow as tf

    check_tokenizer(tokenizer)
    if not callable(getattr(tokenizer, "sentinel_id", None)):
        raise TypeError(f"`tokenizer` must have sentinels (an SpTokenizer with extra_ids); "
                        f"received {type(tokenizer).__name__}")
    check_int("batch_size", batch_size, 1)
    noise_density = check_rate("noise_density", noise_density)
    if isinstance(mean_noise_span_length, bool) or not isinstance(
            mean_noise_span_length, numbers.Real) or not mean_noise_span_length >= 1:
        raise ValueError(f"`mean_noise_span_length` must be a number >= 1; received "
                         f"{mean_noise_span_length!r}")
    seed = check_seed(seed)
    if maxlen is not None:
        check_int("maxlen", maxlen, 1)
    check_int("decoder_start_id", decoder_start_id, 0)
    pieces = unframed(tokenizer.encode_batch(texts, None, None)[0], tokenizer)
    if not pieces:
        raise ValueError("`texts` must hold at least one text; received an empty list")
    if maxlen is not None:
        pieces = [row[:maxlen] for row in pieces]
    longest = max(len(row) for row in pieces)
    most_spans = max(int(round(max(int(round(max(longest, 2) * noise_density)), 1)
                               / mean_noise_span_length)), 1)
    if most_spans > tokenizer.extra_ids:
        raise ValueError(f"the longest text ({longest} pieces) needs {most_spans} sentinels; "
                         f"`tokenizer` has extra_ids={tokenizer.extra_ids}: lower `maxlen`"
                         f" or `noise_density`, or raise `mean_noise_span_length`")
    sentinels = [tokenizer.sentinel_id(i) for i in range(most_spans)]
    end = [] if tokenizer.token_end is None else [tokenizer.token_to_id(tokenizer.token_end)]
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None and tokenizer.pad_id >= 0 else 0
    lengths = np.array([len(row) for row in pieces])
    table = tf.RaggedTensor.from_row_lengths(
        np.concatenate(pieces).astype("int32") if lengths.sum() else np.zeros(0, "int32"),
        lengths)

    def corrupted(ids, lengths, batch_seed):
        rng = np.random.default_rng(np.uint64(batch_seed))
        sources, labels = [], []
        for row, length in zip(ids, lengths):
            row = row[:length].tolist()
            noise = random_spans_noise_mask(len(row), noise_density, mean_noise_span_length,
                                            rng)
            inputs, targets = corrupt_spans(row, noise, sentinels)
            sources.append(inputs + end)
            labels.append(targets + end)
        encoder = sequence_padding(sources, value=pad_id).astype("int32")
        label_ids = sequence_padding(labels, value=pad_id).astype("int32")
        decoder = np.concatenate([np.full((len(labels), 1), decoder_start_id, "int32"),
                                  label_ids[:, :-1]], axis=1)
        weights = (np.arange(label_ids.shape[1])[None]
                   < np.array([len(t) for t in labels])[:, None]).astype("float32")
        return encoder, decoder, label_ids, weights

    def gather(indices, batch_seed):
        rows = tf.gather(table, indices)
        encoder, decoder, labels, weights = tf.numpy_function(
            corrupted, [rows.to_tensor(pad_id), rows.row_lengths(), batch_seed],
            [tf.int32, tf.int32, tf.int32, tf.float32], stateful=False)
        for part in (encoder, decoder, labels, weights):
            part.set_shape((None, None))
        return (encoder, decoder), labels, weights

    batches = batched_indices(lengths, batch_size, shuffle, seed, None, drop_remainder)
    batches = tf.data.Dataset.zip((batches, batch_seeds(seed)))
    return batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def lm_dataset(texts, tokenizer=None, maxlen=None, batch_size=32, application="lm",
               second=None, shuffle=False, seed=None, bucket_boundaries=None,
               drop_remainder=False):
    """A ``tf.data.Dataset`` of ``((token_ids, segment_ids), labels, weights)`` batches for
    language-model training on raw text, for a builder with ``application="lm"`` or
    ``"unilm"`` and ``loss="sparse_categorical_crossentropy"``.

    ``labels`` are the token ids shifted one step left (position ``t`` predicts token
    ``t + 1``). ``application="lm"`` (causal): ``weights`` are 1 wherever a next token exists.
    ``"unilm"`` (Dong et al. 2019, seq2seq in one encoder): ``texts`` are the sources and
    ``second`` the targets, framed as a pair (segments 0 and 1); ``weights`` are 1 only where
    the next token belongs to the target, so the source is read, never predicted.
    ``shuffle``, ``seed`` and ``bucket_boundaries`` work as in :func:`text_dataset`.

    Args:
        texts: list of str (the sources for ``"unilm"``).
        tokenizer: a ``Tokenizer`` or ``SpTokenizer``.
        maxlen: None or the longest row in tokens, frame included.
        batch_size: texts per batch.
        application: ``"lm"`` or ``"unilm"``.
        second: ``"unilm"`` only: the target texts, one per source.
        shuffle: reshuffle every epoch.
        seed: seed of the shuffle.
        bucket_boundaries: None or increasing lengths that separate the buckets.
        drop_remainder: drop a last batch smaller than ``batch_size``.

    Example:

        >>> from keraformer.data import lm_dataset
        >>> from keraformer.tokenizers import Tokenizer
        >>> tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c"]
        >>> vocab = {t: i for i, t in enumerate(tokens)}
        >>> dataset = lm_dataset(["a b c"], tokenizer=Tokenizer(vocab), batch_size=1)
        >>> (token_ids, segment_ids), labels, weights = next(iter(dataset))
        >>> token_ids.numpy().tolist(), labels.numpy().tolist(), weights.numpy().tolist()
        ([[2, 4, 5, 6, 3]], [[4, 5, 6, 3, 0]], [[1.0, 1.0, 1.0, 1.0, 0.0]])
        >>> dataset = lm_dataset(["a b"], tokenizer=Tokenizer(vocab), batch_size=1,
        ...                      application="unilm", second=["c"])   # source, target
        >>> (token_ids, segment_ids), labels, weights = next(iter(dataset))
        >>> token_ids.numpy().tolist(), segment_ids.numpy().tolist()
        ([[2, 4, 5, 3, 6, 3]], [[0, 0, 0, 0, 1, 1]])
        >>> labels.numpy().tolist(), weights.numpy().tolist()   # target only
        ([[4, 5, 3, 6, 3, 0]], [[0.0, 0.0, 0.0, 1.0, 1.0, 0.0]])
    """
    import tensorflow as tf

    if application not in ("lm", "unilm"):
        raise ValueError(f'`application` must be "lm" or "unilm"; received {application!r}')
    if application == "unilm" and second is None:
        raise ValueError('`second` (the target texts) is needed with application="unilm"; '
                         'received None')
    if application == "lm" and second is not None:
        raise ValueError('`second` is only for application="unilm" (the targets); received '
                         'a list with application="lm"')
    check_tokenizer(tokenizer)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None and tokenizer.pad_id >= 0 else 0
    dataset = text_dataset(texts, None, tokenizer, maxlen, batch_size, shuffle, second, seed,
                           bucket_boundaries, drop_remainder)

    def with_targets(inputs):
        token_ids, segment_ids = inputs
        labels = tf.concat([token_ids[:, 1:], tf.fill([tf.shape(token_ids)[0], 1],
                                                      tf.constant(pad_id, token_ids.dtype))],
                           axis=1)
        following = tf.concat([tf.ones_like(token_ids[:, 1:], tf.bool),
                               tf.zeros_like(token_ids[:, :1], tf.bool)], axis=1)
        real = tf.sequence_mask(row_count(token_ids, pad_id) - 1, tf.shape(token_ids)[1])
        counted = tf.logical_and(following, real)
        if application == "unilm":
            next_segment = tf.concat([segment_ids[:, 1:], tf.zeros_like(segment_ids[:, :1])],
                                     axis=1)
            counted = tf.logical_and(counted, tf.equal(next_segment, 1))
        return (token_ids, segment_ids), labels, tf.cast(counted, tf.float32)

    return dataset.map(lambda inputs: with_targets(inputs),
                       num_parallel_calls=tf.data.AUTOTUNE)


def row_count(token_ids, pad_id):
    """Length of each right-padded row of a ``tf`` batch: one past its last non-padding id."""
    import tensorflow as tf

    real = tf.cast(tf.not_equal(token_ids, pad_id), tf.int32)
    width = tf.shape(token_ids)[1]
    last = width - tf.argmax(tf.reverse(real, [1]), axis=1, output_type=tf.int32)
    return tf.where(tf.reduce_any(real > 0, axis=1), last, 0)
