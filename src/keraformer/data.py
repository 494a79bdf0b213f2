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
    check_int("batch_size", batch_size, 1)
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
