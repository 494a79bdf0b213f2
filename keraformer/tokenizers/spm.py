"""SentencePiece tokenizer with T5's conventions: pad 0, end 1, unknown 2 and sentinels.

T5 and mT5 vocabularies are SentencePiece models whose ids are followed by ``extra_ids``
sentinel tokens ``<extra_id_0>`` ... ``<extra_id_{extra_ids-1}>`` counted down from the top:
``<extra_id_i>`` has id ``pieces + extra_ids - 1 - i``. ``encode`` appends the end id ``</s>``
as T5's tokenizer does. Sentinels written in the text are kept whole; the text between them is
encoded by SentencePiece on its own.
"""

import os
import re

import numpy as np

SENTINEL = re.compile(r"(<extra_id_\d+>)")


class SpTokenizer:
    """``SpTokenizer(model_path, extra_ids=100)``: text <-> ids with a SentencePiece model.

    ``tokenize(text)`` gives pieces, ``encode(text)`` ids ending with ``eos_id``,
    ``decode(ids)`` text without pad/end/sentinel tokens (unless ``skip_special=False``).
    ``pad_id``, ``eos_id``, ``unk_id`` come from the model; ``vocab_size`` counts sentinels.
    """

    def __init__(self, model_path, extra_ids=100):
        import sentencepiece

        if not isinstance(model_path, (str, os.PathLike)) or not os.path.exists(model_path):
            raise FileNotFoundError(f"`model_path` must be an existing SentencePiece .model "
                                    f"file; received {model_path!r}")
        if isinstance(extra_ids, bool) or not isinstance(extra_ids, int) or extra_ids < 0:
            raise ValueError(f"`extra_ids` must be an integer >= 0; received {extra_ids!r}")
        self.processor = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
        self.pieces = self.processor.get_piece_size()
        self.extra_ids = extra_ids
        self.vocab_size = self.pieces + extra_ids
        self.pad_id = self.processor.pad_id()
        self.eos_id = self.processor.eos_id()
        self.unk_id = self.processor.unk_id()

    # -- sentinels -------------------------------------------------------------------------
    def sentinel_id(self, index):
        """Id of ``<extra_id_{index}>``."""
        if not 0 <= index < self.extra_ids:
            raise ValueError(f"sentinel `index` must lie in [0, {self.extra_ids}); "
                             f"received {index}")
        return self.pieces + self.extra_ids - 1 - index

    def is_special(self, token_id):
        return token_id in (self.pad_id, self.eos_id, self.unk_id) or token_id >= self.pieces

    def token_to_id(self, token):
        match = re.fullmatch(r"<extra_id_(\d+)>", token)
        if match:
            return self.sentinel_id(int(match.group(1)))
        return self.processor.piece_to_id(token)

    def id_to_token(self, token_id):
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"`token_id` must lie in [0, {self.vocab_size}); "
                             f"received {token_id}")
        if token_id >= self.pieces:
            return f"<extra_id_{self.pieces + self.extra_ids - 1 - token_id}>"
        return self.processor.id_to_piece(token_id)

    # -- text <-> ids ----------------------------------------------------------------------
    def split_sentinels(self, text):
        """``text`` as chunks, each a sentinel token or a stretch of ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str; received {type(text).__name__}")
        return [chunk for chunk in SENTINEL.split(text) if chunk and not chunk.isspace()]

    def tokenize(self, text):
        """Pieces of ``text`` (no end token); unknown characters become the ``<unk>`` piece."""
        return [self.id_to_token(i) for i in self.encode(text, add_eos=False)]

    def encode(self, text, add_eos=True, max_length=None):
        """Ids of ``text``, ending with ``eos_id`` when ``add_eos``; cut to ``max_length``
        (the end id kept last)."""
        ids = []
        for chunk in self.split_sentinels(text):
            if SENTINEL.fullmatch(chunk) and int(chunk[10:-1]) < self.extra_ids:
                ids.append(self.sentinel_id(int(chunk[10:-1])))
            else:
                ids.extend(self.processor.encode(chunk))
        if max_length is not None:
            ids = ids[:max_length - 1 if add_eos else max_length]
        return ids + [self.eos_id] if add_eos else ids

    def decode(self, ids, skip_special=True):
        """Text of ``ids`` (a list or 1-D array), without pad/end/unknown/sentinel tokens when
        ``skip_special``, else with them written out between the decoded stretches."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
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
        from keraformer.tokenizers.batch import SentencePieceBatchEncoder

        encoder = self.__dict__.get("_batch_encoder")
        if encoder is None:
            encoder = self._batch_encoder = SentencePieceBatchEncoder(self)
        return encoder(texts, second, maxlen)
