"""BERT's WordPiece tokenizer: basic splitting, then greedy longest-match sub-words.

Special tokens written in the text (``[SEP]``, ``[PAD]``...) are ordinary text, split like
any other word (``[``, ``sep``, ``]``), as bert4keras does: user text can never forge a segment
boundary or a padding id. The text is split into words: the text is cleaned (NUL, U+FFFD and control
characters dropped, whitespace turned into spaces), every CJK ideograph is isolated, the text
is NFC-normalised and split on whitespace; each word is optionally lower-cased with its
accents stripped (NFD, combining marks dropped) and split around punctuation (Unicode ``P*``
plus every ASCII symbol such as ``$ ^ `` ``). Each word is then cut greedily into the longest
vocabulary pieces, pieces after the first prefixed ``##``; a word with no such cut, or longer
than ``word_maxlen`` characters, becomes ``[UNK]`` (Wu et al. 2016, "Google's Neural Machine
Translation System"; Devlin et al. 2019, BERT). The ids equal Hugging Face's pure-Python BERT
tokenizer (``BertTokenizerLegacy`` in transformers 5, with ``word_maxlen=100``) and bert4keras
0.11.5's ``Tokenizer`` on the same vocabulary, apart from the cases ``Tokenizer`` lists.
"""

import numbers
import os
import re
import unicodedata

from keraformer.checks import check_bools, integer_id, integer_ids
from keraformer.tokenizers.base import TokenizerBase

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
              (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


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


def basic_words(text, do_lower_case=True):
    """Words of ``text`` before WordPiece, in BERT's order (a special token written in the
    text is split like any word: ``[SEP]`` -> ``[``, ``SEP``, ``]``)."""
    text = clean_text(text)
    text = "".join(f" {c} " if is_cjk(c) else c for c in text)
    words = []
    for word in unicodedata.normalize("NFC", text).split():
        if do_lower_case:
            word = strip_accents(word.lower())
        words.extend(split_punctuation(word))
    return words


def word_pieces(word, vocab, unk="[UNK]", max_chars=200):
    """Greedy longest-match-first WordPiece split of one word; ``[unk]`` if none exists or
    the word is longer than ``max_chars`` characters."""
    if len(word) > max_chars:
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


def stem(token):
    """``token`` without its ``##`` continuation prefix."""
    return token[2:] if token.startswith("##") else token


def is_redundant(token):
    """True for a token that basic splitting never produces: longer than one character with a
    CJK or punctuation character in its stem (``##。``, ``中国``) — bert4keras' rule."""
    return len(token) > 1 and any(is_cjk(c) or is_punctuation(c) for c in stem(token))


def checked_vocab(vocab, name="vocab_path", encoding="utf-8"):
    """``{token: id}`` from a vocab.txt path or a dict, with errors naming ``name``.

    A line's token is its first whitespace-separated field (bert4keras' reading); its id is
    its line number. A token listed twice is refused (its id would be ambiguous), and so is
    a blank line before the last token: it would still take an id, so the ids of the tokens
    after it would reach the vocabulary size. A dict must number its tokens ``0 .. n-1``,
    each id once (two tokens on one id, a negative id or one past the size are refused).
    """
    if isinstance(vocab, dict):
        for token, index in vocab.items():
            if not isinstance(token, str) or isinstance(index, bool) \
                    or not isinstance(index, numbers.Integral):
                raise TypeError(f"`{name}` as a dict must map str tokens to int ids; "
                                f"received {token!r}: {index!r}")
        return checked_ids(name, {token: int(index) for token, index in vocab.items()})
    if not isinstance(vocab, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a path to a vocab.txt or a dict of token -> id; "
                        f"received {type(vocab).__name__}")
    if not os.path.isfile(vocab):
        raise MissingVocabularyError(f"`{name}` must be an existing vocab.txt file; "
                                     f"{os.fspath(vocab)!r} does not exist or is not a file")
    tokens = {}
    with open(vocab, encoding=encoding) as f:
        try:
            lines = f.read().split("\n")  # the lines Python's text mode yields
        except UnicodeDecodeError as error:  # model weights, a zip... passed as the vocab
            raise ValueError(f"`{name}` must be a vocab.txt file (one token a line, "
                             f"{encoding}); {os.fspath(vocab)!r} is not {encoding} text: "
                             f"{error}") from None
    blank = None
    for line_number, line in enumerate(lines):
        fields = line.split()
        token = fields[0] if fields else line.strip()
        if not token:
            blank = line_number if blank is None else blank
            continue
        if blank is not None:
            raise ValueError(f"`{name}` {os.fspath(vocab)!r} has a blank line (line "
                             f"{blank + 1}) before the token {token!r} (line "
                             f"{line_number + 1}): every line must hold one token, as its "
                             f"line number is its id")
        if token in tokens:
            raise ValueError(f"`{name}` {os.fspath(vocab)!r} lists the token {token!r} "
                             f"twice (lines {tokens[token] + 1} and {line_number + 1})")
        tokens[token] = line_number
    return tokens


def checked_ids(name, vocab):
    """``vocab`` (``{token: id}``) unless its ids are not exactly ``0 .. len(vocab) - 1``: a
    ``ValueError`` names ``name`` and the tokens at fault (two tokens on one id would decode
    to one of them; an id outside the size would pass the model's embedding table)."""
    size, owners = len(vocab), {}
    for token, index in vocab.items():
        if not 0 <= index < size:
            raise ValueError(f"`{name}` must number its {size} tokens 0..{size - 1}; the "
                             f"token {token!r} has the id {index}")
        if index in owners:
            raise ValueError(f"`{name}` gives the id {index} to two tokens, "
                             f"{owners[index]!r} and {token!r}; each id must name one token")
        owners[index] = token
    return vocab


def load_vocab(dict_path, encoding="utf-8", simplified=False, startswith=None):
    """``{token: id}`` from a BERT ``vocab.txt`` (or a dict), as bert4keras reads it.

    With ``simplified=True`` it returns ``(token_dict, keep_tokens)``: the tokens of
    ``startswith`` first, then, in id order, every token that tokenization can produce
    (multi-character tokens holding CJK or punctuation characters are dropped), renumbered
    from 0; ``keep_tokens[i]`` is the original id of new id ``i``, for
    ``build_transformer_model(..., keep_tokens=keep_tokens)``.

    Example:

        >>> import os, tempfile
        >>> from keraformer.tokenizers import load_vocab
        >>> path = os.path.join(tempfile.mkdtemp(), "vocab.txt")
        >>> with open(path, "w") as f:
        ...     _ = f.write("[PAD]\\n[UNK]\\n[CLS]\\n[SEP]\\n好\\n##好\\n你好\\n")
        >>> load_vocab(path)["你好"]
        6
        >>> specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        >>> tokens, keep_tokens = load_vocab(path, simplified=True, startswith=specials)
        >>> keep_tokens          # CJK text splits into single characters: "##好", "你好" dropped
        [0, 1, 2, 3, 4]
    """
    token_dict = checked_vocab(dict_path, "dict_path", encoding)
    if not simplified:
        return token_dict
    startswith = list(startswith or [])
    for token in startswith:
        if token not in token_dict:
            raise ValueError(f"`startswith` token {token!r} is not in the vocabulary")
    if len(set(startswith)) != len(startswith):
        raise ValueError(f"`startswith` must not repeat a token; received {startswith}")
    new_dict, keep_tokens = {}, []
    for token in startswith:
        new_dict[token] = len(new_dict)
        keep_tokens.append(token_dict[token])
    for token, index in sorted(token_dict.items(), key=lambda item: item[1]):
        if token not in new_dict and not is_redundant(token):
            new_dict[token] = len(new_dict)
            keep_tokens.append(index)
    return new_dict, keep_tokens


CJK_PUNCTUATION_RANGES = (
    (0x00B7, 0x00B7), (0x2013, 0x2014), (0x2018, 0x2019), (0x201B, 0x201F), (0x2026, 0x2027),
    (0x3000, 0x3003), (0x3008, 0x3011), (0x3014, 0x301F), (0x3030, 0x3030), (0x303E, 0x303F),
    (0xFE4F, 0xFE4F), (0xFE51, 0xFE51), (0xFE54, 0xFE54), (0xFF01, 0xFF0D), (0xFF0F, 0xFF0F),
    (0xFF1A, 0xFF20), (0xFF3B, 0xFF40), (0xFF5B, 0xFF64))
NO_SPACE_AFTER = "".join(chr(c) for low, high in CJK_PUNCTUATION_RANGES
                         for c in range(low, high + 1)) + "+-/={(<["
NO_SPACE_AFTER_PATTERN = re.compile("(" + "|".join(re.escape(c) for c in NO_SPACE_AFTER) + ") ")


def readable_text(tokens):
    """bert4keras' readable text of WordPiece ``tokens`` (bracketed ``[...]`` tokens dropped).

    ``##`` pieces are glued on, CJK characters written without spaces, a space follows every
    punctuation character except CJK punctuation and ``+-/={(<[``, and ``' s`` and
    ``3. 5`` are joined back to ``'s`` and ``3.5``.
    """
    tokens = [t for t in tokens if not (t and t[0] == "[" and t[-1] == "]")]
    text = ""
    for i, token in enumerate(tokens):
        if token.startswith("##"):
            text += token[2:]
        elif len(token) == 1 and is_cjk(token):
            text += token
        elif len(token) == 1 and is_punctuation(token):
            text += token + " "
        elif i > 0 and text and is_cjk(text[-1]):
            text += token
        else:
            text += " " + token
    text = re.sub(" +", " ", text)
    text = re.sub("' (re|m|s|t|ve|d|ll) ", "'\\1 ", text)
    text = NO_SPACE_AFTER_PATTERN.sub("\\1", text)
    text = re.sub(r"(\d\.) (\d)", "\\1\\2", text)
    return text.strip()


class Tokenizer(TokenizerBase):
    """WordPiece tokenizer for BERT-family vocabularies, with bert4keras' API.

    ``Tokenizer(vocab_path, do_lower_case=False)``: ``vocab_path`` is a ``vocab.txt`` or a
    ``{token: id}`` dict (``load_vocab(..., simplified=True)``'s). ``do_lower_case=False`` is
    bert4keras' default: pass ``True`` for uncased vocabularies. Words longer than
    ``word_maxlen`` characters become ``[UNK]`` (bert4keras: 200; Hugging Face: 100).
    ``token_start``/``token_end`` frame every text (``None`` leaves the side open).
    ``pre_tokenize(text)`` may split the text into words first (e.g. ``jieba.cut``); a word
    found in the vocabulary is then kept whole. ``token_translate`` (``{token: token}``)
    replaces tokens after splitting.

    ``tokenize(text, maxlen=None)`` gives the framed tokens, ``encode(first, second=None,
    maxlen=None)`` ``(token_ids, segment_ids)`` for ``[CLS] first [SEP] second [SEP]``
    (segments 0 then 1). ``maxlen`` cuts as bert4keras does: one token at a time leaves the
    end of the currently longer text (the first on a tie); the frame is never cut. ``decode``
    gives bert4keras' readable text, ``rematch(text, tokens)`` the indices of the characters
    of ``text`` each token came from.

    The ids equal bert4keras' ``Tokenizer`` and Hugging Face's Python ``BertTokenizer``
    (with ``word_maxlen=100``), except where those two differ: literal ``[CLS]``/``[SEP]``/...
    written in the text are split into ordinary pieces (as bert4keras: Hugging Face keeps
    them whole, so text could forge a special id; its ``split_special_tokens=True`` splits
    them too); text is NFC-composed, private-use and unassigned characters are dropped (as
    Hugging Face); a word without a WordPiece split is the token ``[UNK]`` (bert4keras keeps
    the word, whose id is ``[UNK]``'s). A ``pre_tokenize`` word that is a special token is
    split too (bert4keras would keep it whole).
    The ids equal Hugging Face's Python ``BertTokenizer`` (with ``word_maxlen=100``) and
    bert4keras' ``Tokenizer``, except where those two differ: literal ``[CLS]``/``[MASK]``/...
    written in the text are kept whole, text is NFC-composed, private-use and unassigned
    characters are dropped (all as Hugging Face); a word without a WordPiece split is the
    token ``[UNK]`` (bert4keras keeps the word, whose id is ``[UNK]``'s).

    Example:

        >>> vocab = {token: i for i, token in enumerate(
        ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "film", "bad", "##s", "a"])}
        >>> from keraformer.tokenizers import Tokenizer
        >>> tokenizer = Tokenizer(vocab, do_lower_case=True)
        >>> tokenizer.tokenize("A good films!")
        ['[CLS]', 'a', 'good', 'film', '##s', '[UNK]', '[SEP]']
        >>> tokenizer.encode("good film", "bad")
        ([2, 5, 6, 3, 7, 3], [0, 0, 0, 0, 1, 1])
        >>> token_ids, segment_ids = tokenizer.encode_batch(["good film", "a bad film"])
        >>> token_ids.tolist()                              # padded int32 ids
        [[2, 5, 6, 3, 0], [2, 9, 7, 6, 3]]
    """

    def __init__(self, vocab_path, do_lower_case=False, word_maxlen=200, token_start="[CLS]",
                 token_end="[SEP]", pre_tokenize=None, token_translate=None):
        self.vocab = checked_vocab(vocab_path)
        self.inverse = {i: token for token, i in self.vocab.items()}
        check_bools(do_lower_case=do_lower_case)  # "false" would be truthy: lower-casing
        self.do_lower_case = bool(do_lower_case)
        if isinstance(word_maxlen, bool) or not isinstance(word_maxlen, numbers.Integral) \
                or word_maxlen < 1:
            raise ValueError(f"`word_maxlen` must be an int >= 1; received {word_maxlen!r}")
        self.word_maxlen = int(word_maxlen)
        if "[UNK]" not in self.vocab:
            raise ValueError("`vocab_path` must hold the special token [UNK]; the vocabulary "
                             "lacks it")
        for name, token in (("token_start", token_start), ("token_end", token_end)):
            if token is not None and token not in self.vocab:
                raise ValueError(f"`{name}` {token!r} is not in the vocabulary of "
                                 f"`vocab_path`; pass a token it holds or None")
        self.token_start, self.token_end = token_start, token_end
        self.set_hooks(pre_tokenize, token_translate)

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
        """Id of ``[CLS]``, or ``None`` when the vocabulary has none."""
        return self.vocab.get("[CLS]")

    @property
    def sep_id(self):
        """Id of ``[SEP]``, or ``None`` when the vocabulary has none."""
        return self.vocab.get("[SEP]")

    @property
    def mask_id(self):
        """Id of ``[MASK]``, or ``None`` when the vocabulary has none."""
        return self.vocab.get("[MASK]")

    # bert4keras' attribute names (None where the vocabulary lacks the token)
    _token_pad_id = property(lambda self: self.vocab.get("[PAD]"))
    _token_unk_id = property(lambda self: self.vocab["[UNK]"])
    _token_mask_id = property(lambda self: self.vocab.get("[MASK]"))
    _token_cls_id = property(lambda self: self.vocab.get("[CLS]"))
    _token_sep_id = property(lambda self: self.vocab.get("[SEP]"))
    _token_dict = property(lambda self: self.vocab)
    _token_dict_inv = property(lambda self: self.inverse)
    _vocab_size = property(lambda self: len(self.vocab))
    _do_lower_case = property(lambda self: self.do_lower_case)

    def token_to_id(self, token):
        """Id of ``token``; the ``[UNK]`` id for a token outside the vocabulary; ``TypeError``
        unless ``token`` is a str (an id or ``None`` is not a token)."""
        if not isinstance(token, str):
            raise TypeError(f"`token` must be a str; received {token!r} of type "
                            f"{type(token).__name__}")
        return self.vocab.get(token, self.vocab["[UNK]"])

    def id_to_token(self, token_id):
        """Token of ``token_id``; ``TypeError`` for a non-integer (a float is not truncated),
        ``ValueError`` for an id outside the vocabulary."""
        token_id = integer_id(token_id, "token_id")
        if token_id not in self.inverse:
            raise ValueError(f"`token_id` must be an id of the vocabulary (size "
                             f"{len(self.vocab)}); received {token_id!r}")
        return self.inverse[token_id]

    def pieces(self, text):
        """WordPiece tokens of ``text``, without ``token_start``/``token_end``."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str; received {type(text).__name__}")
        if self.pre_tokenize is None:
            return self.word_pieces_of(text)
        if self.do_lower_case:
            text = strip_accents(text.lower())
        tokens = []
        for word in self.pre_tokenize(text):
            if word in self.vocab and word not in SPECIAL_TOKENS:  # never a forged [SEP]
                tokens.append(word)
            else:
                tokens.extend(self.word_pieces_of(word))
        return tokens

    def word_pieces_of(self, text):
        tokens = []
        for word in basic_words(text, self.do_lower_case):
            tokens.extend(word_pieces(word, self.vocab, max_chars=self.word_maxlen))
        return tokens

    def decode(self, ids, tokens=None):
        """bert4keras' readable text of ``ids`` (or of ``tokens`` when given).

        Bracketed tokens (``[CLS]``, ``[UNK]``, ``[unused1]``...) are dropped, ``##`` pieces
        glued on, CJK characters joined without spaces; see :func:`readable_text`.
        """
        if tokens is None:
            tokens = self.ids_to_tokens(integer_ids(ids, name="ids"))
        return readable_text(tokens)

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
        """For each token, the indices of the characters of ``text`` it came from.

        ``tokens`` is ``tokenize(text)`` or ``pieces(text)`` (or a prefix of them); the
        ``token_start``/``token_end`` framing them get ``[]``, as do special tokens not
        written in ``text``; ``[UNK]`` gets the characters of the word it replaced. As in
        bert4keras, with ``do_lower_case`` a character that lower-cases and decomposes into
        several characters (a Hangul syllable into its jamo) is listed once per character.
        """
        chars, origins, starts = self.comparable_characters(text)
        framed_start = self.token_start is not None and bool(tokens) \
            and tokens[0] == self.token_start
        framed_end = self.token_end is not None and len(tokens) > framed_start \
            and tokens[-1] == self.token_end
        if self.token_start is not None and self.token_end is not None:
            framed_start = framed_end = framed_start and framed_end
        mapping, offset = [], 0
        for position, token in enumerate(tokens):
            if (framed_start and position == 0) or (framed_end and position == len(tokens) - 1):
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
                mapping.append(self.indices(origins[offset:end]))
                offset = end
                continue
            piece = self.comparable(stem(token))
            start = chars.find(piece, offset) if piece else -1
            if start < 0:
                mapping.append([])
                continue
            mapping.append(self.indices(origins[start:start + len(piece)]))
            offset = start + len(piece)
        return mapping

    def indices(self, origins):
        """bert4keras' index list: one entry per lower-cased character when lowering, else
        one per character of ``text`` (the NFD split made for comparing is undone)."""
        return list(origins) if self.do_lower_case else sorted(set(origins))

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
        from keraformer.tokenizers.batch import batch_encoder

        return batch_encoder(self)(texts, second, maxlen)
