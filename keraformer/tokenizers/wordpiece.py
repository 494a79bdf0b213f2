"""BERT's WordPiece tokenizer: basic splitting, then greedy longest-match sub-words.

The special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]`` written in the text are cut out first
and kept whole. The rest is split into words: the text is cleaned (NUL, U+FFFD and control
characters dropped, whitespace turned into spaces), every CJK ideograph is isolated, the text
is NFC-normalised and split on whitespace; each word is optionally lower-cased with its
accents stripped (NFD, combining marks dropped) and split around punctuation (Unicode ``P*``
plus every ASCII symbol such as ``$ ^ `` ``). Each word is then cut greedily into the longest
vocabulary pieces, pieces after the first prefixed ``##``; a word with no such cut, or longer
than 100 characters, becomes ``[UNK]`` (Wu et al. 2016, "Google's Neural Machine Translation
System"; Devlin et al. 2019, BERT). The ids equal Hugging Face's pure-Python BERT tokenizer
(``BertTokenizerLegacy`` in transformers 5) on the same vocabulary.
"""

import numbers
import os
import re
import unicodedata

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SPECIAL_TOKEN_PATTERN = re.compile(
    "(" + "|".join(re.escape(t) for t in sorted(SPECIAL_TOKENS, key=len, reverse=True)) + ")")
STRUCTURAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]")
MAX_WORD_CHARS = 100
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
              (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
NO_SPACE_BEFORE = set(".,!?;:%)]}'\u3001\u3002\uff0c\uff01\uff1f")
NO_SPACE_AFTER = set("([{$'")


def is_cjk(char):
    """True for a CJK Unified Ideograph (any extension block) or compatibility ideograph."""
    cp = ord(char)
    return any(low <= cp <= high for low, high in CJK_RANGES)


def is_punctuation(char):
    """Unicode punctuation (``P*``) and every printable ASCII non-alphanumeric (``$ ^ ` ~``)."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def is_whitespace(char):
    """Space, tab, newline, carriage return and Unicode space separators (``Zs``)."""
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def is_dropped(char):
    """NUL, U+FFFD and control/format characters (``C*``) other than tab and newlines."""
    if char in ("\x00", "\ufffd"):
        return True
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def clean_text(text):
    """Drop NUL, U+FFFD and control characters; turn every whitespace into a space."""
    return "".join(" " if is_whitespace(c) else c for c in text if not is_dropped(c))


def strip_accents(text):
    """Decompose (NFD) and drop the non-spacing combining marks (``Mn``): ``é`` -> ``e``."""
    return "".join(c for c in unicodedata.normalize("NFD", text)
                   if unicodedata.category(c) != "Mn")


def split_punctuation(word):
    """Every punctuation character becomes a word of its own: ``don't!`` -> ``don ' t !``."""
    pieces, current = [], ""
    for char in word:
        if is_punctuation(char):
            if current:
                pieces.append(current)
                current = ""
            pieces.append(char)
        else:
            current += char
    return pieces + [current] if current else pieces


def split_special_tokens(text):
    """``text`` cut around the literal special tokens: ``"a[MASK]b"`` -> ``a, [MASK], b``."""
    return [chunk for chunk in SPECIAL_TOKEN_PATTERN.split(text) if chunk]


def basic_words(text, do_lower_case=True):
    """Words of ``text`` (no special tokens in it) before WordPiece, in BERT's order."""
    text = clean_text(text)
    text = "".join(f" {c} " if is_cjk(c) else c for c in text)
    words = []
    for word in unicodedata.normalize("NFC", text).split():
        if word in SPECIAL_TOKENS:  # formed once control characters were dropped
            words.append(word)
            continue
        if do_lower_case:
            word = strip_accents(word.lower())
        words.extend(split_punctuation(word))
    return words


def word_pieces(word, vocab, unk="[UNK]"):
    """Greedy longest-match-first WordPiece split of one word; ``[unk]`` if none exists."""
    if len(word) > MAX_WORD_CHARS:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
        else:
            return [unk]
        pieces.append(piece)
        start = end
    return pieces


class MissingVocabularyError(FileNotFoundError, ValueError):
    """The vocabulary file does not exist (both a ``FileNotFoundError`` and a ``ValueError``)."""


def load_vocab(vocab):
    """``{token: id}`` from a ``vocab.txt`` path (token of line ``i`` gets id ``i``) or a dict."""
    if isinstance(vocab, dict):
        for token, index in vocab.items():
            if not isinstance(token, str) or isinstance(index, bool) \
                    or not isinstance(index, numbers.Integral):
                raise TypeError(f"`vocab_path` as a dict must map str tokens to int ids; "
                                f"received {token!r}: {index!r}")
        return {token: int(index) for token, index in vocab.items()}
    if not isinstance(vocab, (str, os.PathLike)):
        raise TypeError(f"`vocab_path` must be a path to a vocab.txt or a dict of token -> id; "
                        f"received {type(vocab).__name__}")
    if not os.path.isfile(vocab):
        raise MissingVocabularyError(f"`vocab_path` must be an existing vocab.txt file; "
                                f"{os.fspath(vocab)!r} does not exist or is not a file")
    with open(vocab, encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    return {token: i for i, token in enumerate(tokens) if token}


class Tokenizer:
    """WordPiece tokenizer for BERT-family vocabularies (``vocab.txt`` or a token->id dict).

    ``encode(first, second=None, maxlen=None)`` returns ``(token_ids, segment_ids)`` for
    ``[CLS] first [SEP]`` or ``[CLS] first [SEP] second [SEP]`` (segments 0 then 1).
    ``maxlen`` is an explicit request to cut the result to at most ``maxlen`` tokens: one
    token at a time is removed from the end of the currently longer text (the first on a
    tie), as bert4keras does; the special tokens are never removed. Without ``maxlen`` nothing
    is cut. ``rematch(text, tokens)`` maps each token back to the indices of the characters
    of ``text`` it came from, for span extraction.
    """

    def __init__(self, vocab_path, do_lower_case=True):
        self.vocab = load_vocab(vocab_path)
        self.inverse = {i: token for token, i in self.vocab.items()}
        self.do_lower_case = bool(do_lower_case)
        missing = [t for t in ("[UNK]", "[CLS]", "[SEP]") if t not in self.vocab]
        if missing:
            raise ValueError(f"`vocab_path` must hold the special tokens [UNK], [CLS] and "
                             f"[SEP]; the vocabulary lacks {missing}")

    def __len__(self):
        return len(self.vocab)

    @property
    def vocab_size(self):
        return len(self.vocab)

    @property
    def pad_id(self):
        """Id of ``[PAD]``; 0 when the vocabulary has none (BERT's padding id)."""
        return self.vocab.get("[PAD]", 0)

    @property
    def unk_id(self):
        return self.vocab["[UNK]"]

    @property
    def cls_id(self):
        return self.vocab["[CLS]"]

    @property
    def sep_id(self):
        return self.vocab["[SEP]"]

    @property
    def mask_id(self):
        """Id of ``[MASK]``, or ``None`` when the vocabulary has none."""
        return self.vocab.get("[MASK]")

    def token_to_id(self, token):
        """Id of ``token``; the ``[UNK]`` id for a token outside the vocabulary."""
        return self.vocab.get(token, self.vocab["[UNK]"])

    def id_to_token(self, token_id):
        """Token of ``token_id``; ``ValueError`` for an id outside the vocabulary."""
        try:
            return self.inverse[int(token_id)]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"`token_id` must be an id of the vocabulary (size "
                             f"{len(self.vocab)}); received {token_id!r}") from None

    def pieces(self, text):
        """WordPiece tokens of ``text``, without the added ``[CLS]``/``[SEP]``."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str; received {type(text).__name__}")
        tokens = []
        for chunk in split_special_tokens(text):
            if chunk in SPECIAL_TOKENS:
                tokens.append(chunk)
                continue
            for word in basic_words(chunk, self.do_lower_case):
                tokens.extend(word_pieces(word, self.vocab))
        return tokens

    def tokenize(self, text):
        """``["[CLS]", *pieces(text), "[SEP]"]``."""
        return ["[CLS]"] + self.pieces(text) + ["[SEP]"]

    def encode(self, first, second=None, maxlen=None):
        """``(token_ids, segment_ids)`` of ``[CLS] first [SEP]`` (+ ``second [SEP]``).

        Both are lists of ints of equal length; segment ids are 0 for ``[CLS] first [SEP]``
        and 1 for ``second [SEP]``. See the class docstring for ``maxlen``.
        """
        first_pieces = self.pieces(first)
        second_pieces = None if second is None else self.pieces(second)
        if maxlen is not None:
            specials = 2 if second is None else 3
            if isinstance(maxlen, bool) or not isinstance(maxlen, numbers.Integral) \
                    or maxlen < specials:
                raise ValueError(f"`maxlen` must be None or an int >= {specials} (room for "
                                 f"the special tokens); received {maxlen!r}")
            second_pieces = second_pieces if second_pieces is not None else []
            while len(first_pieces) + len(second_pieces) > maxlen - specials:
                longer = second_pieces if len(second_pieces) > len(first_pieces) \
                    else first_pieces
                longer.pop()
            second_pieces = None if second is None else second_pieces
        tokens = ["[CLS]"] + first_pieces + ["[SEP]"]
        segments = [0] * len(tokens)
        if second_pieces is not None:
            tokens += second_pieces + ["[SEP]"]
            segments += [1] * (len(second_pieces) + 1)
        return [self.token_to_id(t) for t in tokens], segments

    def decode(self, token_ids):
        """Readable text from ids: ``[PAD]/[CLS]/[SEP]`` dropped, ``##`` pieces glued on.

        Spaces separate words except between CJK characters, before closing and after
        opening punctuation; re-encoding the result gives the same word pieces.
        """
        text, previous = "", None
        for token in (self.id_to_token(i) for i in token_ids):
            if token in STRUCTURAL_TOKENS:
                continue
            if token.startswith("##") and previous is not None:
                text += token[2:]
            elif previous is None or token in NO_SPACE_BEFORE or previous in NO_SPACE_AFTER \
                    or (is_cjk(token[0]) and is_cjk(previous[-1])):
                text += token
            else:
                text += " " + token
            previous = token
        return text

    def comparable(self, text):
        """``text`` as rematch compares it: NFD, and lower-cased without marks if lowering."""
        if self.do_lower_case:
            return strip_accents(text.lower()).replace("\u03c2", "\u03c3")  # final sigma
        return unicodedata.normalize("NFD", text)

    def comparable_characters(self, text):
        """Comparable characters of ``text`` with the index each came from and word starts."""
        chars, origins, starts, after_space = [], [], [], True
        for index, char in enumerate(text):
            if is_dropped(char):
                continue
            if is_whitespace(char) or char.isspace():
                after_space = True
                continue
            for c in self.comparable(char):
                chars.append(c)
                origins.append(index)
                starts.append(after_space)
                after_space = False
        return "".join(chars), origins, starts

    def rematch(self, text, tokens):
        """For each token, the sorted indices of the characters of ``text`` it came from.

        ``tokens`` is ``tokenize(text)`` or ``pieces(text)`` (or a prefix of them). The
        ``[CLS]`` and ``[SEP]`` framing a ``tokenize`` output get ``[]``, as do special
        tokens not written in ``text``; ``[UNK]`` gets the characters of the word it
        replaced. A character that decomposes into several tokens (a Hangul syllable into
        its jamo) belongs to each of them.
        """
        chars, origins, starts = self.comparable_characters(text)
        framed = len(tokens) >= 2 and tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
        mapping, offset = [], 0
        for position, token in enumerate(tokens):
            if framed and position in (0, len(tokens) - 1):
                mapping.append([])
                continue
            if token in SPECIAL_TOKENS:
                literal = self.comparable(token)
                if chars.startswith(literal, offset):
                    end = offset + len(literal)
                elif token == "[UNK]":
                    end = self.unknown_word_end(chars, starts, offset)
                else:
                    mapping.append([])
                    continue
                mapping.append(sorted(set(origins[offset:end])))
                offset = end
                continue
            piece = self.comparable(token[2:] if token.startswith("##") else token)
            start = chars.find(piece, offset) if piece else -1
            if start < 0:
                mapping.append([])
                continue
            mapping.append(sorted(set(origins[start:start + len(piece)])))
            offset = start + len(piece)
        return mapping

    @staticmethod
    def unknown_word_end(chars, starts, offset):
        """End of the basic word starting at ``chars[offset]`` (which ``[UNK]`` replaced)."""
        if offset >= len(chars) or is_punctuation(chars[offset]) or is_cjk(chars[offset]):
            return min(offset + 1, len(chars))
        end = offset + 1
        while end < len(chars) and not starts[end] and not is_punctuation(chars[end]) \
                and not is_cjk(chars[end]):
            end += 1
        return end

    # -- batch encoding --------------------------------------------------------------------
    def encode_batch(self, texts, second=None, maxlen=None):
        """Encode a list of texts (and optionally a list of ``second`` texts) at once.

        Returns ``(token_ids, segment_ids)``, two ``int32`` arrays ``(len(texts), length)``
        padded on the right with ``pad_id`` and 0 to the longest row; row ``i`` holds
        exactly ``encode(texts[i], second[i], maxlen)``. The work runs in the compiled
        ``tokenizers`` engine (see ``keraformer.tokenizers.batch``), built on first use.
        """
        from keraformer.tokenizers.batch import WordPieceBatchEncoder

        key = (id(self.vocab), len(self.vocab), self.do_lower_case)
        encoder = self.__dict__.get("_batch_encoder")
        if encoder is None or encoder.key != key:
            encoder = self._batch_encoder = WordPieceBatchEncoder(self)
            encoder.key = key
        return encoder(texts, second, maxlen)
