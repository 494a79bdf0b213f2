"""Hostile vocabularies and special tokens typed in text.

A vocabulary dict giving one id to two tokens, or a negative or too large id, was accepted and
encoded to those ids; a blank line inside vocab.txt shifted every later id so that the last
reached ``vocab_size``. They are refused, naming the argument and the tokens or lines.

A literal ``[SEP]`` or ``[PAD]`` in user text became the real special id, so text could forge
a segment boundary or padding. bert4keras 0.11.5 splits it into ordinary pieces (``[``,
``sep``, ``]``); keraformer now does the same on ``encode``, ``tokenize`` and the Rust
``encode_batch``, checked against bert4keras itself in a subprocess.
"""

import pytest

from keraformer.tokenizers import Tokenizer, load_vocab
from tests.references import run_bert4keras

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[", "]", "sep", "pad", "cl", "##s",
         "mask", "un", "##k", "a", "b", "x", "y", "SEP", "PAD", "MASK", "CLS", "UNK", "hello"]


@pytest.mark.parametrize("vocab, message", [
    ({"[UNK]": 0, "a": 1, "b": 1}, r"gives the id 1 to two tokens, 'a' and 'b'"),
    ({"[UNK]": 0, "a": -1}, r"must number its 2 tokens 0\.\.1; the token 'a' has the id -1"),
    ({"[UNK]": 0, "a": 10 ** 9}, r"must number its 2 tokens 0\.\.1; the token 'a' has the "
                                 r"id 1000000000"),
    ({"[UNK]": 0, "a": 2}, r"must number its 2 tokens 0\.\.1; the token 'a' has the id 2"),
], ids=["two-tokens-one-id", "negative", "huge", "gap"])
def test_vocabulary_dict_with_bad_ids_is_refused(vocab, message):
    with pytest.raises(ValueError, match=f"`vocab_path` {message}"):
        Tokenizer(vocab)
    with pytest.raises(ValueError, match=f"`dict_path` {message}"):
        load_vocab(vocab)


@pytest.mark.parametrize("lines, line", [
    (["[UNK]", "", "a"], 2), (["[UNK]", "a", "   ", "b"], 3), (["", "[UNK]"], 1),
    (["[UNK]", "\u3000", "a"], 2),
], ids=["empty", "spaces", "first", "ideographic-space"])
def test_blank_line_inside_vocab_txt_is_refused_naming_the_line(tmp_path, lines, line):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"`vocab_path` '{path}' has a blank line \\(line "
                                         f"{line}\\)"):
        Tokenizer(str(path))


def test_trailing_blank_lines_take_no_id(tmp_path):
    """Blank lines after the last token shift nothing: ids stay below the size."""
    path = tmp_path / "vocab.txt"
    path.write_text("[UNK]\n[CLS]\n[SEP]\na\n\n\n", encoding="utf-8")
    tokenizer = Tokenizer(str(path))
    assert tokenizer.vocab_size == 4 and tokenizer.encode("a")[0] == [1, 3, 2]


TEXTS = ["a [SEP] b", "[PAD][PAD] x", "x[MASK]y", "[CLS] hello [SEP]", "[UNK] [sep] [Sep]",
         "hello[SEP]", "[[SEP]]"]
PAIRS = [("a [SEP] b", "x [PAD] y")]
SCRIPT = r"""
import json, sys
from bert4keras.tokenizers import Tokenizer

inputs = json.load(open(sys.argv[1]))
out = {}
for lower in (False, True):
    t = Tokenizer(inputs["vocab"], do_lower_case=lower)
    out[str(lower)] = {"texts": [t.encode(x) for x in inputs["texts"]],
                       "pairs": [t.encode(a, b) for a, b in inputs["pairs"]]}
json.dump(out, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def bert4keras_ids(tmp_path_factory):
    folder = tmp_path_factory.mktemp("specials")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    results, _ = run_bert4keras(SCRIPT, {"vocab": str(vocab), "texts": TEXTS, "pairs": PAIRS},
                                folder)
    return str(vocab), results


@pytest.mark.parametrize("lower", [False, True])
def test_special_tokens_in_text_equal_bert4keras(bert4keras_ids, lower):
    vocab, results = bert4keras_ids
    tokenizer = Tokenizer(vocab, do_lower_case=lower)
    expected = results[str(lower)]
    for text, (ids, segments) in zip(TEXTS, expected["texts"]):
        assert list(tokenizer.encode(text)) == [ids, segments], text
    for (first, second), (ids, segments) in zip(PAIRS, expected["pairs"]):
        assert list(tokenizer.encode(first, second)) == [ids, segments]
    token_ids, segment_ids = tokenizer.encode_batch(TEXTS)  # the Rust engine too
    for row, (ids, _) in enumerate(expected["texts"]):
        assert token_ids[row, :len(ids)].tolist() == ids, TEXTS[row]


@pytest.mark.parametrize("lower", [False, True])
def test_text_never_forges_a_special_id(bert4keras_ids, lower):
    """Only the frame holds special ids: none of [SEP], [PAD], [CLS], [MASK] comes from the
    text, so the segment boundary and the padding mask are the tokenizer's alone."""
    tokenizer = Tokenizer(bert4keras_ids[0], do_lower_case=lower)
    specials = {tokenizer.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")}
    for text in TEXTS:
        ids, _ = tokenizer.encode(text)
        assert not specials & set(ids[1:-1]), text
        batch, _ = tokenizer.encode_batch([text, "a"])
        assert not specials & set(batch[0, 1:len(ids) - 1].tolist()), text


def test_pre_tokenize_words_never_become_special_tokens(bert4keras_ids):
    """A ``pre_tokenize`` function returning ``[SEP]`` whole: split like text (bert4keras
    would keep it, since it is in the vocabulary; here the special id is never forged)."""
    tokenizer = Tokenizer(bert4keras_ids[0], pre_tokenize=lambda text: text.split())
    assert tokenizer.tokenize("a [SEP] hello") == ["[CLS]", "a", "[", "SEP", "]", "hello",
                                                  "[SEP]"]
