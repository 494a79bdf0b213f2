"""BERT's WordPiece tokenizer: basic splitting, then greedy longest-match sub-words.

Basic splitting cleans the text (drops NUL, U+FFFD and control characters, maps whitespace to
spaces), isolates every CJK ideograph, optionally lower-cases and strips accents (NFD, drop
combining marks), and splits punctuation (Unicode ``P*`` plus the ASCII symbols) into tokens
of their own. Each word is then cut greedily into the longest vocabulary pieces, the pieces
after the first prefixed ``##``; a word with no such cut, or longer than 100 characters,
becomes ``[UNK]``. The ids equal Hugging Face's ``BertTokenizer`` on the same vocabulary.
"""

import os
import unicodedata

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_WORD_CHARS = 100


def is_cjk(char):
    """CJK Unified Ideographs and their extensions and compatibility blocks."""
    cp = ord(char)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F
            or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


def is_punctuation(char):
    """Unicode punctuation, and every ASCII non-alphanumeric printable symbol ($, ^, `...)."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def is_whitespace(char):
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def is_control(char):
    if char in "\t\n\r":
        return False
    return unicodedata.category(char).startswith("C")


def clean_text(text):
    """Drop NUL, U+FFFD and control characters; turn whitespace into spaces."""
    out = []
    for char in text:
        if char in ("\x00", "\ufffd") or is_control(char):
            continue
        out.append(" " if is_whitespace(char) else char)
    return "".join(out)


def strip_accents(text):
    return "".join(c for c in unicodedata.normalize("NFD", text)
                   if unicodedata.category(c) != "Mn")


def split_punctuation(word):
    """``"don't!"`` -> ``["don", "'", "t", "!"]``."""
    pieces, current = [], []
    for char in word:
        if is_punctuation(char):
            if current:
                pieces.append("".join(current))
                current = []
            pieces.append(char)
        else:
            current.append(char)
    if current:
        pieces.append("".join(current))
    return pieces


def basic_words(text, do_lower_case=True, never_split=SPECIAL_TOKENS):
    """Words of ``text`` before WordPiece: cleaned, CJK isolated, punctuation split."""
    text = clean_text(text)
    text = "".join(f" {c} " if is_cjk(c) else c for c in text)
    words = []
    for word in text.split():
        if word in never_split:
            words.append(word)
            continue
        if do_lower_case:
            word = strip_accents(word.lower())
        words.extend(split_punctuation(word))
    return words


def word_pieces(word, vocab, unk="[UNK]"):
    """Greedy longest-match-first WordPiece split of one word."""
    if len(word) > MAX_WORD_CHARS:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:
            return [unk]
        pieces.append(piece)
        start = end
    return pieces


def load_vocab(vocab):
    """``{token: id}`` from a ``vocab.txt`` path (one token per line) or a dict."""
    if isinstance(vocab, dict):
        return dict(vocab)
    if not isinstance(vocab, (str, os.PathLike)):
        raise TypeError(f"`vocab_path` must be a path to vocab.txt or a dict of token -> id; "
                        f"received {type(vocab).__name__}")
    if not os.path.exists(vocab):
        raise FileNotFoundError(f"`vocab_path` {str(vocab)!r} does not exist")
    with open(vocab, encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f) if line.rstrip("\n")}


class Tokenizer:
    """WordPiece tokenizer for BERT-family vocabularies.

    ``encode(first, second=None, maxlen=None)`` returns ``(token_ids, segment_ids)`` for
    ``[CLS] first [SEP] (second [SEP])``. ``maxlen`` is an explicit request to cut the pair
    to at most ``maxlen`` tokens: tokens are removed from the end of the longer segment first
    (bert4keras' rule). ``rematch(text, tokens)`` maps each token back to the positions of
    its characters in ``text``.
    """

    def __init__(self, vocab_path, do_lower_case=True):
        self.vocab = load_vocab(vocab_path)
        self.inverse = {i: token for token, i in self.vocab.items()}
        self.do_lower_case = do_lower_case
        missing = [t for t in ("[UNK]", "[CLS]", "[SEP]") if t not in self.vocab]
        if missing:
            raise ValueError(f"vocabulary lacks the special tokens {missing}")

    def token_to_id(self, token):
        return self.vocab.get(token, self.vocab["[UNK]"])

    def id_to_token(self, token_id):
        if token_id not in self.inverse:
            raise ValueError(f"`token_id` must lie in the vocabulary (size {len(self.vocab)});"
                             f" received {token_id}")
        return self.inverse[token_id]

    pad_id = property(lambda self: self.vocab.get("[PAD]", 0))
    unk_id = property(lambda self: self.vocab["[UNK]"])
    cls_id = property(lambda self: self.vocab["[CLS]"])
    sep_id = property(lambda self: self.vocab["[SEP]"])
    mask_id = property(lambda self: self.vocab.get("[MASK]"))

    def never_split(self):
        return tuple(t for t in SPECIAL_TOKENS if t in self.vocab)

    def pieces(self, text):
        """WordPiece tokens of ``text`` without ``[CLS]``/``[SEP]``."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str; received {type(text).__name__}")
        return [piece for word in basic_words(text, self.do_lower_case, self.never_split())
                for piece in word_pieces(word, self.vocab)]

    def tokenize(self, text):
        """``[CLS]`` + WordPiece tokens + ``[SEP]``."""
        return ["[CLS]"] + self.pieces(text) + ["[SEP]"]

    def encode(self, first, second=None, maxlen=None):
        """``(token_ids, segment_ids)`` of ``[CLS] first [SEP] (second [SEP])``."""
        first_pieces = self.pieces(first)
        second_pieces = None if second is None else self.pieces(second)
        if maxlen is not None:
            if not isinstance(maxlen, int) or maxlen < (3 if second is None else 4):
                raise ValueError(f"`maxlen` must be an int of at least "
                                 f"{3 if second is None else 4}; received {maxlen!r}")
            budget = maxlen - (2 if second is None else 3)
            while len(first_pieces) + len(second_pieces or ()) > budget:
                longer = (second_pieces if second_pieces is not None
                          and len(second_pieces) > len(first_pieces) else first_pieces)
                longer.pop()
        tokens = ["[CLS]"] + first_pieces + ["[SEP]"]
        segments = [0] * len(tokens)
        if second_pieces is not None:
            tokens += second_pieces + ["[SEP]"]
            segments += [1] * (len(second_pieces) + 1)
        return [self.token_to_id(t) for t in tokens], segments

    def decode(self, token_ids):
        """Text from ids: special tokens dropped, ``##`` pieces joined to their word."""
        text = ""
        for token in (self.id_to_token(int(i)) for i in token_ids):
            if token in SPECIAL_TOKENS and token != "[UNK]":
                continue
            if token.startswith("##"):
                text += token[2:]
            elif len(token) == 1 and (is_cjk(token) or is_punctuation(token)):
                text += token
            else:
                text += (" " if text else "") + token
        return text

    def rematch(self, text, tokens):
        """For each token, the indices in ``text`` of the characters it came from.

        Special tokens get ``[]``; ``[UNK]`` gets the characters of the word it replaced.
        """
        normalized, char_map = [], []
        for i, char in enumerate(text):
            if self.do_lower_case:
                char = strip_accents(char.lower())
            for c in char:
                if c in ("\x00", "\ufffd") or is_control(c) or is_whitespace(c):
                    continue
                normalized.append(c)
                char_map.append(i)
        normalized = "".join(normalized)
        mapping, offset = [], 0
        for token in tokens:
            if token in SPECIAL_TOKENS and token != "[UNK]":
                mapping.append([])
                continue
            piece = token[2:] if token.startswith("##") else token
            if token == "[UNK]":
                end = offset + 1
                while end < len(normalized) and not is_punctuation(normalized[end]) \
                        and not is_cjk(normalized[end]) and char_map[end] == char_map[end - 1] + 1:
                    end += 1
                mapping.append(char_map[offset:end])
                offset = end
                continue
            start = normalized.find(piece, offset)
            if start < 0:
                mapping.append([])
                continue
            mapping.append(char_map[start:start + len(piece)])
            offset = start + len(piece)
        return mapping
