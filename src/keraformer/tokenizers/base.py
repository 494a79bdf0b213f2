"""What bert4keras' tokenizers share: framing with start/end tokens, ``maxlen`` cutting, and
``encode`` of one text or a pair into ``(token_ids, segment_ids)``."""

import numbers


def truncate_sequences(maxlen, index, *sequences):
    """Pop ``sequence[index]`` from the longest (the first on a tie) of ``sequences`` until
    their total length is at most ``maxlen``; empty or ``None`` sequences are left out."""
    sequences = [s for s in sequences if s]
    while sum(len(s) for s in sequences) > maxlen:
        lengths = [len(s) for s in sequences]
        sequences[lengths.index(max(lengths))].pop(index)
    return sequences


class TokenizerBase:
    """bert4keras' tokenizer interface on top of ``pieces``, ``token_to_id``, ``id_to_token``.

    A subclass sets ``token_start``/``token_end`` (tokens or None) and defines
    ``pieces(text)`` (tokens without the frame), ``token_to_id`` and ``id_to_token``.
    """

    token_start = None
    token_end = None
    token_translate = {}

    def set_hooks(self, pre_tokenize, token_translate):
        """Keep ``pre_tokenize`` (None or a function text -> words) and ``token_translate``."""
        if pre_tokenize is not None and not callable(pre_tokenize):
            raise TypeError(f"`pre_tokenize` must be None or a function text -> words; "
                            f"received {type(pre_tokenize).__name__}")
        self.pre_tokenize = pre_tokenize
        self.set_token_translate(token_translate)

    def set_token_translate(self, token_translate):
        """Keep ``{token: replacement}``, applied to every token after splitting."""
        token_translate = {} if token_translate is None else token_translate
        if not isinstance(token_translate, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in token_translate.items()):
            raise TypeError(f"`token_translate` must be None or a dict of str token -> str "
                            f"token; received {token_translate!r}"[:300])
        self.token_translate = dict(token_translate)

    def translated_pieces(self, text):
        """``pieces(text)`` with ``token_translate`` applied."""
        return [self.token_translate.get(t, t) for t in self.pieces(text)]

    def tokens_to_ids(self, tokens):
        """``[token_to_id(t) for t in tokens]``."""
        return [self.token_to_id(token) for token in tokens]

    def ids_to_tokens(self, ids):
        """``[id_to_token(i) for i in ids]``."""
        return [self.id_to_token(i) for i in ids]

    def frame(self, tokens):
        """``tokens`` between ``token_start`` and ``token_end`` (those that are not None)."""
        start = [self.token_start] if self.token_start is not None else []
        end = [self.token_end] if self.token_end is not None else []
        return start + tokens + end

    @staticmethod
    def check_maxlen(maxlen, frame):
        if isinstance(maxlen, bool) or not isinstance(maxlen, numbers.Integral) \
                or maxlen < frame:
            raise ValueError(f"`maxlen` must be None or an int >= {frame} (room for the "
                             f"special tokens); received {maxlen!r}")

    @property
    def cut_index(self):
        """Where ``maxlen`` cuts a framed text: just before ``token_end``, else at its end."""
        return -2 if self.token_end is not None else -1

    def tokenize(self, text, maxlen=None):
        """``[token_start, *pieces(text), token_end]``, cut to ``maxlen`` tokens from the end
        of the text (before ``token_end``)."""
        pieces = self.translated_pieces(text)
        tokens = self.frame(pieces)
        if maxlen is not None:
            self.check_maxlen(maxlen, len(tokens) - len(pieces))
            truncate_sequences(maxlen, self.cut_index, tokens)
        return tokens

    def text_tokens(self, text, name):
        """Framed tokens of a text, or a copy of a list of tokens (taken as framed)."""
        if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            return list(text)
        if not isinstance(text, str):
            raise TypeError(f"`{name}` must be a text (str) or a list of tokens; received "
                            f"{type(text).__name__}")
        return self.frame(self.translated_pieces(text))

    def encode(self, first, second=None, maxlen=None):
        """``(token_ids, segment_ids)`` of ``start first end`` (+ ``second end``).

        Both are lists of ints of equal length; segment ids are 0 for the first text with its
        frame and 1 for the second text with its end token (its start token is left out).
        ``first``/``second`` may also be lists of tokens, framed like ``tokenize``'s output.
        ``maxlen`` cuts one token at a time from the end of the currently longer text (the
        first on a tie), as bert4keras does; the frame is never cut.
        """
        first_tokens = self.text_tokens(first, "first")
        second_tokens = None if second is None else self.text_tokens(second, "second")
        opened = int(self.token_start is not None)
        closed = int(self.token_end is not None)
        if maxlen is not None:
            self.check_maxlen(maxlen, opened + closed * (1 if second is None else 2))
            dropped = opened if second is not None else 0  # the second text's start token
            truncate_sequences(maxlen + dropped, self.cut_index, first_tokens, second_tokens)
        token_ids = self.tokens_to_ids(first_tokens)
        segment_ids = [0] * len(token_ids)
        if second_tokens is not None:
            second_ids = self.tokens_to_ids(second_tokens[opened:])
            token_ids += second_ids
            segment_ids += [1] * len(second_ids)
        return token_ids, segment_ids

    # bert4keras' attribute names
    _token_start = property(lambda self: self.token_start)
    _token_end = property(lambda self: self.token_end)
    _token_start_id = property(
        lambda self: None if self.token_start is None else self.token_to_id(self.token_start))
    _token_end_id = property(
        lambda self: None if self.token_end is None else self.token_to_id(self.token_end))
