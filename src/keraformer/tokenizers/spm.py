"""SentencePiece tokenizer with bert4keras' API and T5's sentinels.

``SpTokenizer(model_path, token_start="[CLS]", token_end="[SEP]")`` frames every text with
``token_start``/``token_end`` as bert4keras does (ALBERT-style vocabularies hold ``[CLS]`` and
``[SEP]``); T5 and mT5 take ``token_start=None, token_end="</s>"``, which appends the end id
as T5's tokenizer does. T5 vocabularies are followed by ``extra_ids`` sentinel tokens
``<extra_id_0>`` ... ``<extra_id_{extra_ids-1}>`` counted down from the top: ``<extra_id_i>``
has id ``pieces + extra_ids - 1 - i``. Sentinels written in the text are kept whole; the text
between them is encoded by SentencePiece on its own.
"""

import numbers
import os
import re

from keraformer.checks import integer_id, integer_ids

from keraformer.tokenizers.base import TokenizerBase

SENTINEL = re.compile(r"(<extra_id_\d+>)")


class SpTokenizer(TokenizerBase):
    """``SpTokenizer(model_path, token_start="[CLS]", token_end="[SEP]", extra_ids=100)``.

    ``tokenize(text, maxlen=None)`` gives the framed pieces, ``encode(first, second=None,
    maxlen=None)`` ``(token_ids, segment_ids)`` (bert4keras' ``encode``; ``maxlen`` cuts the
    longer text first and never the frame), ``decode(ids)`` text without pad/end/unknown/
    sentinel tokens (unless ``skip_special=False``). ``pre_tokenize(text)`` may split the text
    into words first, which are joined with spaces (bert4keras' rule); ``token_translate``
    (``{piece: token}``) replaces pieces after splitting and ``decode`` maps them back.
    ``pad_id``, ``eos_id``,
    ``unk_id`` come from the model; ``vocab_size`` counts the sentinels.

    bert4keras' default frame ``[CLS] ... [SEP]`` is kept; a frame token the model lacks is
    refused (bert4keras would silently use the unknown id).

    Example:

        >>> import os, tempfile
        >>> import sentencepiece
        >>> from keraformer.tokenizers import SpTokenizer
        >>> folder = tempfile.mkdtemp()
        >>> texts = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"] * 20
        >>> sentencepiece.SentencePieceTrainer.train(     # a tiny T5-style model: pad 0, </s> 1
        ...     sentence_iterator=iter(texts), model_prefix=os.path.join(folder, "sp"),
        ...     vocab_size=20, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
        >>> tokenizer = SpTokenizer(os.path.join(folder, "sp.model"), token_start=None,
        ...                         token_end="</s>", extra_ids=0)            # T5's framing
        >>> token_ids, segment_ids = tokenizer.encode("the cat sat")
        >>> tokenizer.decode(token_ids), token_ids[-1] == tokenizer.eos_id
        ('the cat sat', True)
        >>> token_ids, segment_ids = tokenizer.encode_batch(["the cat", "a dog sat on the mat"])
        >>> token_ids.dtype, int((token_ids[0] != 0).sum()) < token_ids.shape[1]   # padded with 0
        (dtype('int32'), True)
    """

    def __init__(self, model_path, token_start="[CLS]", token_end="[SEP]", extra_ids=100,
                 pre_tokenize=None, token_translate=None):
        import sentencepiece

        if not isinstance(model_path, (str, os.PathLike)) or not os.path.exists(model_path):
            raise FileNotFoundError(f"`model_path` must be an existing SentencePiece .model "
                                    f"file; received {model_path!r}")
        if isinstance(extra_ids, bool) or not isinstance(extra_ids, numbers.Integral):
            raise TypeError(f"`extra_ids` must be an integer >= 0; received {extra_ids!r} of "
                            f"type {type(extra_ids).__name__}")
        if extra_ids < 0:
            raise ValueError(f"`extra_ids` must be an integer >= 0; received {extra_ids!r}")
        extra_ids = int(extra_ids)
        self.model_path = os.fspath(model_path)
        if not os.path.isfile(self.model_path) or os.path.getsize(self.model_path) == 0:
            raise ValueError(f"`model_path` must be a SentencePiece .model file; "
                             f"{self.model_path!r} is "
                             f"{'empty (0 bytes)' if os.path.isfile(self.model_path) else 'not a regular file'}")
        try:
            self.processor = sentencepiece.SentencePieceProcessor(model_file=self.model_path)
        except (RuntimeError, OSError) as error:  # the library's own message names no file
            raise ValueError(f"`model_path` {self.model_path!r} is not a SentencePiece model "
                             f"that loads: {error}") from None
        self.pieces_count = self.processor.get_piece_size()
        self.extra_ids = extra_ids
        self.vocab_size = self.pieces_count + extra_ids
        self.pad_id = self.processor.pad_id()
        self.eos_id = self.processor.eos_id()
        self.unk_id = self.processor.unk_id()
        for name, token in (("token_start", token_start), ("token_end", token_end)):
            if token is not None and not self.has_token(token):
                raise ValueError(
                    f"`{name}` {token!r} is not a piece of the SentencePiece model "
                    f"{os.fspath(model_path)!r}; pass a piece it holds or None (T5 and mT5: "
                    f"token_start=None, token_end='</s>')")
        self.token_start, self.token_end = token_start, token_end
        self.set_hooks(pre_tokenize, token_translate)

    def has_token(self, token):
        """True when ``token`` is a piece of the model or a sentinel within ``extra_ids``."""
        match = re.fullmatch(r"<extra_id_(\d+)>", token)
        if match:
            return int(match.group(1)) < self.extra_ids
        return self.processor.piece_to_id(token) != self.unk_id \
            or token == self.processor.id_to_piece(self.unk_id)

    # bert4keras' attribute names (None where the model lacks the token)
    _token_pad_id = property(lambda self: self.pad_id if self.pad_id >= 0 else None)
    _token_unk_id = property(lambda self: self.unk_id)
    _token_mask_id = property(
        lambda self: self.token_to_id("[MASK]") if self.has_token("[MASK]") else None)
    _vocab_size = property(lambda self: self.pieces_count)

    # -- sentinels -------------------------------------------------------------------------
    def sentinel_id(self, index):
        """Id of ``<extra_id_{index}>``; ``TypeError`` unless ``index`` is an integer (a
        float or bool is not truncated), ``ValueError`` outside ``[0, extra_ids)``."""
        index = integer_id(index, "index")
        if not 0 <= index < self.extra_ids:
            raise ValueError(f"sentinel `index` must lie in [0, {self.extra_ids}) "
                             f"(extra_ids); received {index}")
        return self.pieces_count + self.extra_ids - 1 - index

    def is_special(self, token_id):
        """Whether ``token_id`` is the pad, end or unknown id or a sentinel; ``TypeError``
        for a non-integer, ``ValueError`` outside ``[0, vocab_size)``."""
        token_id = integer_id(token_id, "token_id")
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"`token_id` must lie in [0, {self.vocab_size}); "
                             f"received {token_id}")
        return token_id in (self.pad_id, self.eos_id, self.unk_id) \
            or token_id >= self.pieces_count

    def token_to_id(self, token):
        """Id of piece or sentinel ``token`` (the unknown id for a piece the model lacks,
        as in bert4keras); ``TypeError`` unless ``token`` is a str."""
        if not isinstance(token, str):
            raise TypeError(f"`token` must be a str; received {token!r} of type "
                            f"{type(token).__name__}")
        match = re.fullmatch(r"<extra_id_(\d+)>", token)
        if match:
            return self.sentinel_id(int(match.group(1)))
        return self.processor.piece_to_id(token)

    def id_to_token(self, token_id):
        token_id = integer_id(token_id, "token_id")
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"`token_id` must lie in [0, {self.vocab_size}); "
                             f"received {token_id}")
        if token_id >= self.pieces_count:
            return f"<extra_id_{self.pieces_count + self.extra_ids - 1 - token_id}>"
        return self.processor.id_to_piece(token_id)

    # -- text <-> ids ----------------------------------------------------------------------
    def split_sentinels(self, text):
        """``text`` as chunks, each a sentinel token or a stretch of ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str; received {type(text).__name__}")
        return [chunk for chunk in SENTINEL.split(text) if chunk and not chunk.isspace()]

    def piece_ids(self, text):
        """Ids of ``text``'s pieces, without the frame."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str; received {type(text).__name__}")
        if self.pre_tokenize is not None:
            text = " ".join(self.pre_tokenize(text))
        ids = []
        for chunk in self.split_sentinels(text):
            if SENTINEL.fullmatch(chunk) and int(chunk[10:-1]) < self.extra_ids:
                ids.append(self.sentinel_id(int(chunk[10:-1])))
            elif getattr(self, "sampling", None) is not None:
                alpha, nbest_size = self.sampling
                ids.extend(self.processor.encode(chunk, enable_sampling=True, alpha=alpha,
                                                 nbest_size=nbest_size))
            else:
                ids.extend(self.processor.encode(chunk))
        return ids

    def encode(self, first, second=None, maxlen=None, sample=False, alpha=None,
               nbest_size=None):
        """``(token_ids, segment_ids)`` as bert4keras' ``encode``; with ``sample=True`` each
        text's segmentation is drawn by SentencePiece's subword regularisation (Kudo 2018):
        ``alpha`` (default 0.1) is the smoothing of the unigram model's distribution (for a
        BPE model, the dropout rate), ``nbest_size`` (default -1: every segmentation) the
        number of best segmentations sampled from (>= 2, or -1). Draws follow SentencePiece's
        generator (``sentencepiece.set_random_generator_seed`` makes them repeatable)."""
        if not isinstance(sample, (bool,)):
            raise TypeError(f"`sample` must be True or False; received {sample!r}")
        if not sample:
            if alpha is not None or nbest_size is not None:
                raise ValueError(f"`alpha` and `nbest_size` only apply with sample=True; "
                                 f"received alpha={alpha!r}, nbest_size={nbest_size!r}")
            return super().encode(first, second, maxlen)
        alpha = 0.1 if alpha is None else alpha
        nbest_size = -1 if nbest_size is None else nbest_size
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) \
                or not (0 < alpha < float("inf")):
            raise ValueError(f"`alpha` must be a finite number > 0; received {alpha!r}")
        if isinstance(nbest_size, bool) or not isinstance(nbest_size, numbers.Integral) \
                or not (nbest_size == -1 or nbest_size >= 2):
            raise ValueError(f"`nbest_size` must be -1 (sample among all segmentations) or an "
                             f"int >= 2 (0 and 1 would not sample); received {nbest_size!r}")
        self.sampling = (float(alpha), int(nbest_size))
        try:
            return super().encode(first, second, maxlen)
        finally:
            self.sampling = None

    def pieces(self, text):
        """Pieces of ``text`` without the frame; unknown characters become ``<unk>``."""
        return [self.id_to_token(i) for i in self.piece_ids(text)]

    def decode(self, ids, skip_special=True):
        """Text of ``ids`` (a list or 1-D array), without pad/end/unknown/sentinel tokens when
        ``skip_special``, else with them written out between the decoded stretches."""
        ids = integer_ids(ids, self.vocab_size, "ids")
        if self.token_translate:  # back to the pieces the translated tokens stood for
            inverse = {self.token_to_id(v): self.token_to_id(k)
                       for k, v in self.token_translate.items()}
            ids = [inverse.get(i, i) for i in ids]
        text, run = [], []
        for token_id in ids:
            if self.is_special(token_id):
                if not skip_special:
                    text.append(self.processor.decode(run))
                    text.append(self.id_to_token(token_id))
                    run = []
                continue
            run.append(token_id)
        text.append(self.processor.decode(run))
        return " ".join(part for part in text if part) if not skip_special else "".join(text)

    # -- batch encoding --------------------------------------------------------------------
    def encode_batch(self, texts, second=None, maxlen=None):
        """Encode a list of texts (and optionally a list of ``second`` texts) at once.

        Returns ``(token_ids, segment_ids)``, two ``int32`` arrays ``(len(texts), length)``
        padded on the right with ``pad_id`` and 0 to the longest row; row ``i`` holds the
        ids of text ``i`` framed as ``encode`` frames them (T5: the pieces then ``eos_id``),
        cut to ``maxlen``. SentencePiece encodes the batch in C++ on every core.
        """
        from keraformer.tokenizers.batch import batch_encoder

        return batch_encoder(self)(texts, second, maxlen)
