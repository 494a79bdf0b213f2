"""Batch encoding: a list of texts to padded ``int32`` id arrays, at compiled speed.

WordPiece: Hugging Face's ``tokenizers`` library (Rust) runs a pipeline assembled to give
exactly the pieces of the pure-Python ``Tokenizer``. Its off-the-shelf BERT normaliser does
not: it lacks Python's NFC step and its character classes come from older Unicode versions
than this Python's ``unicodedata``. So every class the Python tokenizer uses is computed from
``unicodedata`` once per process and handed to the engine as a regular expression:

1. characters the Python tokenizer drops (NUL, U+FFFD, ``C*`` other than tab and newlines)
   are removed, its whitespace becomes a space, the text is NFC-composed;
2. with ``do_lower_case``: lower-cased, NFD-decomposed, non-spacing marks (``Mn``) removed;
3. split on whitespace, then around every punctuation character and every CJK ideograph;
4. greedy longest-match WordPiece (``##`` continuations, ``[UNK]`` past ``word_maxlen``
   characters); a special token written in the text is split like any word (no added
   tokens: ``[SEP]`` in the text never becomes the separator id).

The engine's NFC, NFD and lower-case tables are then checked against ``unicodedata`` on every
character where they matter (``disagreeing_characters``); the texts holding a character on
which they disagree (a hundred recent combining marks), and the few other texts on which the
engines can differ, go through the Python tokenizer one by one (``python_only`` says why): a
capital sigma when lower-casing (``str.lower`` gives the final form ``ς`` at a word's end),
a lone surrogate (not UTF-8), and every text when the tokenizer has a ``pre_tokenize``
function. The library's own BERT normaliser and
pre-tokeniser (no regular expressions) are faster: texts made only of characters on which they
were checked to agree with the exact pipeline (``native_characters``: most of the BMP and the
emoji, not combining marks) take them. Framing, bert4keras' ``maxlen`` cut and padding are done
here on the piece ids, as ``encode`` does them.

SentencePiece: its own C++ batch encoder; texts holding a sentinel such as ``<extra_id_0>``
are encoded one by one.
"""

import functools
import numbers
import re
import sys
import unicodedata

import numpy as np

from keraformer.tokenizers import wordpiece

MAX_CODE_POINT = sys.maxunicode


MARKS = "\u0334\u0301\u0345"  # combining classes 1, 230 and 240: probes of mark order


@functools.lru_cache(maxsize=None)
def character_classes():
    """The Python tokenizer's character classes as sorted ``(first, last)`` code point runs,
    plus ``probes``: every character whose NFC/NFD, combining class or lower case is not
    trivial, for :func:`disagreeing_characters`."""
    members = {"dropped": [], "space": [], "split": [], "punctuation": [], "cjk": [],
               "mark": [], "probes": []}
    for code in range(MAX_CODE_POINT + 1):
        char = chr(code)
        category = unicodedata.category(char)
        if wordpiece.is_dropped(char):
            members["dropped"].append(code)
            continue
        if char in " \t\n\r" or category == "Zs":
            members["space"].append(code)
        elif char.isspace():  # U+2028, U+2029: kept by cleaning, split on by str.split()
            members["split"].append(code)
        if category == "Mn":
            members["mark"].append(code)
        if wordpiece.is_punctuation(char):
            members["punctuation"].append(code)
        if wordpiece.is_cjk(char):
            members["cjk"].append(code)
        if unicodedata.decomposition(char) or unicodedata.combining(char) \
                or char.lower() != char:
            members["probes"].append(code)
    probes = members.pop("probes")
    classes = {name: code_ranges(codes) for name, codes in members.items()}
    classes["probes"] = probes
    return classes


@functools.lru_cache(maxsize=None)
def disagreeing_characters(lower):
    """Characters on which the Rust engine's Unicode tables (NFC, NFD, combining classes,
    lower case) disagree with this Python's ``unicodedata``: found by running both on every
    character that has a decomposition, a combining class or a lower case, on the parts of
    each decomposition, and on each combining mark before and after marks of classes 1,
    230 and 240. Texts holding one go through the Python tokenizer."""
    from tokenizers import normalizers

    checks = [(normalizers.NFC(), "NFC"), (normalizers.NFD(), "NFD")]
    if lower:
        checks.append((normalizers.Lowercase(), None))
    cases = []  # (text, characters to blame when the engines differ on it)
    for code in character_classes()["probes"]:
        char = chr(code)
        cases.append((char, char))
        parts = unicodedata.normalize("NFD", char)
        if len(parts) > 1:
            cases.append((parts, char + parts))
        if unicodedata.combining(char):
            cases += [(f"a{char}{mark}", char) for mark in MARKS]
            cases += [(f"a{mark}{char}", char) for mark in MARKS]
    texts = [text for text, _ in cases]
    joined = "|".join(texts)
    blamed = set()
    for rust, form in checks:
        theirs = rust.normalize_str(joined).split("|")
        ours = [unicodedata.normalize(form, t) if form else t.lower() for t in texts]
        if len(theirs) != len(ours):
            raise RuntimeError("the tokenizers engine changed the probe separator '|'")
        blamed.update(c for (text, culprits), a, b in zip(cases, theirs, ours) if a != b
                      for c in culprits if c not in "a" + MARKS)
    return "".join(sorted(blamed))


def code_ranges(codes):
    """Sorted code points as ``[(first, last), ...]`` runs."""
    ranges = []
    for code in codes:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return [tuple(r) for r in ranges]


def onig_class(ranges):
    """An Oniguruma character class (the ``tokenizers`` regex syntax) for ``ranges``."""
    return "[" + "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}"
                         for a, b in ranges) + "]"


def python_class(ranges):
    """A Python ``re`` character class for ``ranges``."""
    return "[" + "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-"
                         f"{re.escape(chr(b))}" for a, b in ranges) + "]"


def rust_wordpiece(vocab, do_lower_case, word_maxlen):
    """A ``tokenizers.Tokenizer`` whose pieces equal ``Tokenizer.pieces`` on ``vocab``,
    except on the texts ``WordPieceBatchEncoder.python_only`` names."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    classes = character_classes()
    steps = [normalizers.Replace(Regex(onig_class(classes["dropped"])), ""),
             normalizers.Replace(Regex(onig_class(classes["space"])), " "),
             normalizers.NFC()]
    if do_lower_case:
        steps += [normalizers.Lowercase(), normalizers.NFD(),
                  normalizers.Replace(Regex(onig_class(classes["mark"])), "")]
    engine = Tokenizer(models.WordPiece(dict(vocab), unk_token="[UNK]",
                                        max_input_chars_per_word=word_maxlen))
    engine.normalizer = normalizers.Sequence(steps)
    isolated = sorted(set(classes["punctuation"]) | set(classes["cjk"]))
    engine.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(onig_class(sorted(classes["space"] + classes["split"]))),
                             "removed"),
        pre_tokenizers.Split(Regex(onig_class(code_ranges(
            sorted(c for a, b in isolated for c in range(a, b + 1))))), "isolated")])
    return engine


def native_wordpiece(vocab, do_lower_case, word_maxlen):
    """The same tokenizer on the library's own BERT normaliser and pre-tokeniser (no
    regular expressions: faster), used for the texts made only of :func:`native_characters`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    engine = Tokenizer(models.WordPiece(dict(vocab), unk_token="[UNK]",
                                        max_input_chars_per_word=word_maxlen))
    engine.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=do_lower_case,
        lowercase=do_lower_case)
    engine.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return engine


NATIVE_CANDIDATES = ((0x0000, 0xFFFF), (0x1F000, 0x1FAFF))  # the BMP and the emoji blocks


def words_of(engine, text):
    return [word for word, _ in engine.pre_tokenizer.pre_tokenize_str(
        engine.normalizer.normalize_str(text))]


@functools.lru_cache(maxsize=None)
def native_characters(lower):
    """The characters on which ``native`` splits and normalises ``a?b`` as ``exact`` does,
    among :data:`NATIVE_CANDIDATES` less those whose effect may depend on their neighbours:
    combining marks (``M*``), conjoining jamo, characters NFC changes, capital sigma (its
    lower case depends on its position) and surrogates. A text made only of these gives the
    same pieces on both engines: each step of both is then character by character."""
    native = native_wordpiece({"[UNK]": 0}, lower, 100)
    exact = rust_wordpiece({"[UNK]": 0}, lower, 100)
    candidates = []
    for first, last in NATIVE_CANDIDATES:
        for code in range(first, last + 1):
            char = chr(code)
            if 0xD800 <= code <= 0xDFFF or 0x1100 <= code <= 0x11FF \
                    or 0xA960 <= code <= 0xA97F or 0xD7B0 <= code <= 0xD7FF \
                    or char == "\u03a3" and lower or unicodedata.category(char)[0] == "M" \
                    or unicodedata.normalize("NFC", char) != char:
                continue
            candidates.append(char)
    agreed, block = [], 1024
    for i in range(0, len(candidates), block):
        chars = candidates[i:i + block]
        text = " ".join(f"a{c}b" for c in chars)
        if words_of(native, text) == words_of(exact, text):
            agreed += chars
        else:
            agreed += [c for c in chars if words_of(native, f"a{c}b") == words_of(exact,
                                                                                   f"a{c}b")]
    return code_ranges(ord(c) for c in agreed)


def check_texts(texts, name):
    """``texts`` as a list of str; a ``TypeError`` names ``name`` otherwise."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"`{name}` must be a list of str (one per example); received a "
                        f"single {type(texts).__name__}; wrap it in a list")
    if isinstance(texts, np.ndarray):
        texts = texts.tolist()
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"`{name}` must be a list of str; received "
                        f"{type(texts).__name__}") from None
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"`{name}` must hold only str; item {i} is "
                            f"{type(text).__name__} {text!r:.50}")
    return texts


def check_maxlen(maxlen, specials):
    if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(
            maxlen, numbers.Integral) or maxlen < specials):
        raise ValueError(f"`maxlen` must be None or an int >= {specials} (room for the "
                         f"special tokens); received {maxlen!r}")


def frame_rows(first, second, start_id, end_id, maxlen):
    """``(token_ids, segment_ids)`` rows from rows of piece ids, as bert4keras' ``encode``
    frames them: ``start first end`` (segment 0) then ``second end`` (segment 1), the start
    and end ids left out where ``None``; ``maxlen`` cuts one piece at a time from the end of
    the longer text (the first on a tie), never the frame."""
    start = [] if start_id is None else [start_id]
    end = [] if end_id is None else [end_id]
    frame = len(start) + len(end) * (1 if second is None else 2)
    budget = None if maxlen is None else maxlen - frame
    tokens, segments = [], []
    for i, pieces in enumerate(first):
        if second is None:
            kept = pieces if budget is None else pieces[:budget]
            row = start + kept + end
            tokens.append(row)
            segments.append([0] * len(row))
            continue
        other = second[i]
        a, b = (len(pieces), len(other)) if budget is None else kept_lengths(
            len(pieces), len(other), budget)
        head = start + pieces[:a] + end
        tail = other[:b] + end
        tokens.append(head + tail)
        segments.append([0] * len(head) + [1] * len(tail))
    return tokens, segments


def kept_lengths(a, b, budget):
    """Lengths left of two texts of ``a`` and ``b`` pieces after removing one piece at a
    time from the longer (the first on a tie) until ``a + b <= budget``."""
    if a + b <= budget:
        return a, b
    if min(a, b) <= budget - min(a, b):  # only the longer is cut
        return (budget - b, b) if a >= b else (a, budget - a)
    return budget // 2, budget - budget // 2


def padded(tokens, segments, pad_id):
    """Rows of ids as two right-padded ``int32`` arrays (``pad_id`` and segment 0)."""
    width = max((len(row) for row in tokens), default=0)
    token_ids = np.full((len(tokens), width), pad_id, dtype=np.int32)
    segment_ids = np.zeros((len(tokens), width), dtype=np.int32)
    for i, (row, segment) in enumerate(zip(tokens, segments)):
        token_ids[i, :len(row)] = row
        segment_ids[i, :len(segment)] = segment
    return token_ids, segment_ids


def checked_batch(texts, second, maxlen, frame):
    """``texts`` and ``second`` as lists of str of one length, ``maxlen`` checked."""
    texts = check_texts(texts, "texts")
    if second is not None:
        second = check_texts(second, "second")
        if len(second) != len(texts):
            raise ValueError(f"`second` must have one text per item of `texts` "
                             f"({len(texts)}); received {len(second)}")
    check_maxlen(maxlen, frame)
    return texts, second


class BatchEncoder:
    """Shared by the WordPiece and SentencePiece batch encoders: texts to piece ids (the
    engine's ``pieces``, or the Python tokenizer's for the rows ``python_only`` names),
    then bert4keras' frame, cut and padding."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        start, end = tokenizer.token_start, tokenizer.token_end
        self.start_id = None if start is None else tokenizer.token_to_id(start)
        self.end_id = None if end is None else tokenizer.token_to_id(end)
        pad_id = tokenizer.pad_id
        self.pad_id = pad_id if pad_id is not None and pad_id >= 0 else 0
        translate = tokenizer.token_translate
        # bert4keras' token_translate, on ids; a key outside the vocabulary would share the
        # unknown id with every other unknown token, so then only the Python path is exact
        self.translatable = all(self.known(token) for token in translate)
        self.translate = {tokenizer.token_to_id(k): tokenizer.token_to_id(v)
                          for k, v in translate.items()} if self.translatable else {}

    def known(self, token):
        raise NotImplementedError

    def python_only(self, text):
        """Why ``text`` must go through the Python tokenizer, or ``None``."""
        return None

    def flagged(self, texts):
        if not self.translatable or self.tokenizer.pre_tokenize is not None:
            return list(range(len(texts)))  # a Python function: the engine cannot run it
        return [i for i, text in enumerate(texts) if self.python_only(text)]

    def python_pieces(self, text):
        raise NotImplementedError

    def pieces(self, texts):
        """Piece ids of every text (no frame), ``token_translate`` applied."""
        slow = self.flagged(texts)
        if not slow:
            rows = self.engine_pieces(texts)
        else:
            rows = self.engine_pieces(blank(texts, slow))  # a lone surrogate would not pass
            for i in slow:
                rows[i] = self.python_pieces(texts[i])
        if self.translate:
            rows = [[self.translate.get(i, i) for i in row] for row in rows]
        return rows

    def engine_pieces(self, texts):
        raise NotImplementedError

    def __call__(self, texts, second=None, maxlen=None):
        frame = (self.start_id is not None) + (self.end_id is not None) * (
            1 if second is None else 2)
        texts, second = checked_batch(texts, second, maxlen, frame)
        first = self.pieces(texts)
        other = None if second is None else self.pieces(second)
        tokens, segments = frame_rows(first, other, self.start_id, self.end_id, maxlen)
        return padded(tokens, segments, self.pad_id)


def blank(texts, indices):
    """A copy of ``texts`` with the items at ``indices`` replaced by empty strings."""
    texts = list(texts)
    for i in indices:
        texts[i] = ""
    return texts


class WordPieceBatchEncoder(BatchEncoder):
    """``encode_batch`` of a WordPiece ``Tokenizer`` on the Rust engine; see the module doc."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        vocab, self.lower = tokenizer.vocab, tokenizer.do_lower_case
        self.engine = rust_wordpiece(vocab, self.lower, tokenizer.word_maxlen)
        self.native = native_wordpiece(vocab, self.lower, tokenizer.word_maxlen)
        self.native_text = re.compile(python_class(native_characters(self.lower)) + "*")
        suspects = ("\u03a3" if self.lower else "") + disagreeing_characters(self.lower)
        self.disagreeing = re.compile(f"[{re.escape(suspects)}]") if suspects else None
        # one scan of a whole batch for anything that may need the Python tokenizer
        self.suspect = re.compile("[\ud800-\udfff" + re.escape(suspects) + "]")

    def python_only(self, text):
        if "\u03a3" in text and self.lower:
            return "capital sigma: Python lower-cases it to its final form at a word end"
        if self.disagreeing is not None and self.disagreeing.search(text):
            return "a character on which the Rust and Python Unicode tables disagree"
        if re.search("[\ud800-\udfff]", text):
            return "a lone surrogate (not UTF-8)"
        return None

    def known(self, token):
        return token in self.tokenizer.vocab

    def flagged(self, texts):
        if self.translatable and self.tokenizer.pre_tokenize is None \
                and not self.suspect.search("\n".join(texts)):
            return []  # the common case: one scan, nothing to look at text by text
        return super().flagged(texts)

    def python_pieces(self, text):
        return [self.tokenizer.token_to_id(t) for t in self.tokenizer.pieces(text)]

    def engine_pieces(self, texts):
        """Pieces from the native engine when every text is made of its characters, else
        from both engines, each on its texts."""
        if self.native_text.fullmatch("".join(texts)):
            return ids_of(self.native, texts)
        native = [i for i, text in enumerate(texts) if self.native_text.fullmatch(text)]
        rows = ids_of(self.engine, blank(texts, native))
        for i, ids in zip(native, ids_of(self.native, [texts[i] for i in native])):
            rows[i] = ids
        return rows


def ids_of(engine, texts):
    return [e.ids for e in engine.encode_batch_fast(texts, add_special_tokens=False)]


class SentencePieceBatchEncoder(BatchEncoder):
    """``encode_batch`` of an ``SpTokenizer`` on SentencePiece's own (C++, multi-threaded)
    batch encoder; texts with a sentinel, or only whitespace, go through ``encode``'s path."""

    def python_only(self, text):
        if "<extra_id_" in text:
            return "a sentinel token, kept whole"
        if text.isspace():
            return "only whitespace"
        return None

    def known(self, token):
        return self.tokenizer.has_token(token)

    def python_pieces(self, text):
        return self.tokenizer.piece_ids(text)

    def engine_pieces(self, texts):
        return self.tokenizer.processor.encode(texts, out_type=int, num_threads=-1)


def batch_encoder(tokenizer):
    """The tokenizer's batch encoder, built on first use and again whenever a setting it was
    built from (vocabulary, casing, word length, frame, translations) has changed."""
    vocab = getattr(tokenizer, "vocab", None)
    key = (id(vocab), None if vocab is None else len(vocab),
           getattr(tokenizer, "do_lower_case", None), getattr(tokenizer, "word_maxlen", None),
           tokenizer.token_start, tokenizer.token_end,
           tuple(sorted(tokenizer.token_translate.items())))
    cached = tokenizer.__dict__.get("_batch_encoder")
    if cached is None or cached[0] != key:
        cls = WordPieceBatchEncoder if vocab is not None else SentencePieceBatchEncoder
        cached = tokenizer._batch_encoder = (key, cls(tokenizer))
    return cached[1]
