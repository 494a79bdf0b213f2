"""Hostile ids for the tokenizers' ``decode`` and ``id_to_token``: a float, bool, string,
nested or out-of-vocabulary id is refused with an error naming it, never truncated, wrapped
or skipped; valid ids decode the same from a list, a NumPy array or a backend tensor."""

import keras
import numpy as np
import pytest

from keraformer.tokenizers import SpTokenizer, Tokenizer
from tests.references import train_sentencepiece

PIECES, EXTRA_IDS = 20, 3
SPM_SIZE = PIECES + EXTRA_IDS  # SentencePiece pieces, then the sentinels
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", ",", "!"]


@pytest.fixture(scope="module")
def wordpiece():
    return Tokenizer({token: i for i, token in enumerate(VOCAB)})


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    model = train_sentencepiece(tmp_path_factory.mktemp("spm"),
                                ["the cat sat on the mat", "a dog ran in the park"] * 40, PIECES)
    tokenizer = SpTokenizer(model, token_start=None, token_end="</s>", extra_ids=EXTRA_IDS)
    assert tokenizer.vocab_size == SPM_SIZE
    return tokenizer


# -- WordPiece -----------------------------------------------------------------------------

WORDPIECE_BAD = [
    ([2, 5, 3.0], TypeError, r"`ids\[2\]` must be an integer"),
    ([2, 5.7], TypeError, r"`ids\[1\]` must be an integer"),
    ([2, True], TypeError, r"`ids\[1\]` must be an integer id; received the bool"),
    ([2, None], TypeError, r"`ids\[1\]`"),
    ([2, "5"], TypeError, r"`ids\[1\]`"),
    ([[2, 5]], TypeError, r"`ids\[0\]`"),
    ([2, -1], ValueError, "`token_id` must be an id of the vocabulary"),
    ([2, len(VOCAB)], ValueError, "`token_id` must be an id of the vocabulary"),
    ([10 ** 12], ValueError, "`token_id` must be an id of the vocabulary"),
    ("hello", TypeError, "`ids` must be a sequence"),
    (b"\x02\x05", TypeError, "`ids` must be a sequence"),
    (5, TypeError, "`ids` must be a sequence"),
    (np.array([2.0, 5.0]), TypeError, "`ids` must be integer ids; received dtype"),
    (np.array([[2, 5]]), ValueError, r"`ids` must be one sequence of ids \(1-D\)"),
    (np.array(5), ValueError, r"`ids` must be one sequence of ids \(1-D\)"),
    (np.array([True, False]), TypeError, "`ids` must be integer ids"),
]


@pytest.mark.parametrize("ids, error, message", WORDPIECE_BAD,
                         ids=[repr(c[0]) for c in WORDPIECE_BAD])
def test_wordpiece_decode_refuses_bad_ids(wordpiece, ids, error, message):
    with pytest.raises(error, match=message):
        wordpiece.decode(ids)


@pytest.mark.parametrize("token_id, error", [(5.0, TypeError), (5.5, TypeError),
                                              (True, TypeError), ("5", TypeError),
                                              (np.float32(1), TypeError), (-1, ValueError),
                                              (len(VOCAB), ValueError)],
                         ids=["5.0", "5.5", "True", "'5'", "float32", "-1", "vocab_size"])
def test_wordpiece_id_to_token_refuses_bad_ids(wordpiece, token_id, error):
    with pytest.raises(error, match="`token_id`"):
        wordpiece.id_to_token(token_id)


def test_wordpiece_gap_in_a_dict_vocabulary_is_refused():
    """An id past the size would pass the model's embedding table (tests/hostile/
    test_vocabularies.py has the other bad numberings)."""
    with pytest.raises(ValueError, match="`vocab_path` must number its 4 tokens 0..3; the "
                                         "token 'far' has the id 9"):
        Tokenizer({"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "far": 9})


def as_tensor(ids):
    return keras.ops.convert_to_tensor(np.array(ids, "int32"))


@pytest.mark.parametrize("convert", [list, tuple, lambda x: np.array(x, "int64"),
                                     lambda x: np.array(x, "uint16"), as_tensor,
                                     lambda x: [np.int32(i) for i in x]],
                         ids=["list", "tuple", "int64", "uint16", "tensor", "numpy-scalars"])
def test_wordpiece_valid_ids_decode_the_same_from_any_container(wordpiece, convert):
    assert wordpiece.decode(convert([2, 5, 8, 6, 7, 9, 3, 0])) == "hello, worlds!"


def test_wordpiece_empty_ids_decode_to_empty_text(wordpiece):
    assert wordpiece.decode([]) == ""
    assert wordpiece.decode(np.array([], "int32")) == ""


def test_wordpiece_zero_d_tensor_id_is_an_id(wordpiece):
    assert wordpiece.id_to_token(keras.ops.convert_to_tensor(5)) == "hello"


# -- SentencePiece -------------------------------------------------------------------------

SPM_BAD = [
    ([5, 2.5], TypeError, r"`ids\[1\]` must be an integer"),
    ([5, 6.0], TypeError, r"`ids\[1\]` must be an integer"),
    ([False], TypeError, r"`ids\[0\]` must be an integer id; received the bool"),
    ([5, -1], ValueError, r"`ids\[1\]` must lie in \[0, " + str(SPM_SIZE) + r"\)"),
    ([5, SPM_SIZE], ValueError, r"`ids\[1\]` must lie in"),
    ([SPM_SIZE + 10 ** 6], ValueError, r"`ids\[0\]` must lie in"),
    ("the cat", TypeError, "`ids` must be a sequence"),
    (7, TypeError, "`ids` must be a sequence"),
    (np.array([5.0, 6.0]), TypeError, "`ids` must be integer ids; received dtype"),
    (np.array([[5, 6], [7, 8]]), ValueError, r"`ids` must be one sequence of ids \(1-D\)"),
    (np.array([5, -3]), ValueError, r"`ids\[1\]` must lie in"),
    ([[5, 6]], TypeError, r"`ids\[0\]`"),
]


@pytest.mark.parametrize("ids, error, message", SPM_BAD, ids=[repr(c[0]) for c in SPM_BAD])
@pytest.mark.parametrize("skip_special", [True, False])
def test_spm_decode_refuses_bad_ids(spm, ids, error, message, skip_special):
    with pytest.raises(error, match=message):
        spm.decode(ids, skip_special=skip_special)


@pytest.mark.parametrize("token_id, error", [(3.0, TypeError), (True, TypeError),
                                              ("3", TypeError), (-1, ValueError),
                                              (SPM_SIZE, ValueError)],
                         ids=["3.0", "True", "'3'", "-1", "vocab_size"])
def test_spm_id_to_token_refuses_bad_ids(spm, token_id, error):
    with pytest.raises(error, match="`token_id`"):
        spm.id_to_token(token_id)


def test_spm_valid_ids_decode_the_same_from_a_list_an_array_and_a_tensor(spm):
    ids, _ = spm.encode("the cat sat on the mat")
    text = spm.decode(ids)
    assert text == "the cat sat on the mat"
    assert spm.decode(np.array(ids, "int64")) == text
    assert spm.decode(as_tensor(ids)) == text
    assert spm.decode([]) == ""


def test_spm_sentinels_at_the_top_of_the_vocabulary_are_ids(spm):
    top = spm.vocab_size - 1  # <extra_id_0>
    assert spm.id_to_token(top) == "<extra_id_0>"
    assert "<extra_id_0>" in spm.decode([5, top], skip_special=False)


# -- the other public methods that take an id, an index or a token --------------------------

@pytest.mark.parametrize("index, error", [(1.5, TypeError), (1.0, TypeError), (True, TypeError),
                                          (np.float32(1), TypeError), ("1", TypeError),
                                          (None, TypeError), (-1, ValueError),
                                          (EXTRA_IDS, ValueError), (10 ** 20, ValueError)],
                         ids=["1.5", "1.0", "True", "float32", "'1'", "None", "-1",
                              "extra_ids", "huge"])
def test_spm_sentinel_id_refuses_what_is_not_a_sentinel_index(spm, index, error):
    with pytest.raises(error, match="`index`"):
        spm.sentinel_id(index)


def test_spm_sentinel_id_takes_integers_of_any_kind(spm):
    expected = [SPM_SIZE - 1 - i for i in range(EXTRA_IDS)]  # counted down from the top
    assert [spm.sentinel_id(i) for i in range(EXTRA_IDS)] == expected
    assert spm.sentinel_id(np.int64(1)) == spm.sentinel_id(keras.ops.convert_to_tensor(1)) \
        == expected[1]


@pytest.mark.parametrize("token_id, error", [(3.0, TypeError), (1.5, TypeError),
                                              (False, TypeError), ("3", TypeError),
                                              (-1, ValueError), (SPM_SIZE, ValueError)],
                         ids=["3.0", "1.5", "False", "'3'", "-1", "vocab_size"])
def test_spm_is_special_refuses_bad_ids(spm, token_id, error):
    with pytest.raises(error, match="`token_id`"):
        spm.is_special(token_id)


def test_spm_is_special_on_valid_ids(spm):
    assert [spm.is_special(i) for i in (0, 1, 2, 5, SPM_SIZE - 1)] == [True] * 3 + [False,
                                                                                    True]
    assert spm.is_special(np.int32(5)) is False


@pytest.mark.parametrize("token", [5, 5.0, None, True, b"hello", ["hello"]],
                         ids=["5", "5.0", "None", "True", "bytes", "list"])
@pytest.mark.parametrize("which", ["wordpiece", "spm"])
def test_token_to_id_refuses_what_is_not_a_token(which, token, request):
    tokenizer = request.getfixturevalue(which)
    with pytest.raises(TypeError, match="`token` must be a str"):
        tokenizer.token_to_id(token)
    with pytest.raises(TypeError, match="`token` must be a str"):
        tokenizer.tokens_to_ids(["[CLS]" if which == "wordpiece" else "</s>", token])


@pytest.mark.parametrize("extra_ids, error", [(1.5, TypeError), (2.0, TypeError),
                                              (True, TypeError), ("3", TypeError),
                                              (-1, ValueError)],
                         ids=["1.5", "2.0", "True", "'3'", "-1"])
def test_spm_extra_ids_must_be_a_count(spm, extra_ids, error):
    with pytest.raises(error, match="`extra_ids`"):
        SpTokenizer(spm.model_path, token_start=None, token_end="</s>", extra_ids=extra_ids)
    assert SpTokenizer(spm.model_path, token_start=None, token_end="</s>",
                       extra_ids=np.int64(2)).vocab_size == PIECES + 2


# -- WordPiece construction ----------------------------------------------------------------

@pytest.mark.parametrize("flag", ["false", "True", 1, 0, None],
                         ids=["'false'", "'True'", "1", "0", "None"])
def test_wordpiece_do_lower_case_must_be_a_bool(flag):
    """``"false"`` is truthy: taken as is it would lower-case a cased vocabulary."""
    vocab = {token: i for i, token in enumerate(VOCAB)}
    with pytest.raises(TypeError, match=r"`do_lower_case` must be True or False; received "):
        Tokenizer(vocab, do_lower_case=flag)
    assert Tokenizer(vocab, do_lower_case=np.bool_(True)).tokenize("HELLO") \
        == ["[CLS]", "hello", "[SEP]"]


def test_wordpiece_vocab_that_is_not_text_is_named(tmp_path):
    """Weights passed where the vocab.txt goes: a ValueError naming the argument and file,
    not a bare UnicodeDecodeError."""
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\x90\x00\xff\xfe" * 64)
    with pytest.raises(ValueError, match=r"`vocab_path` must be a vocab.txt file .* "
                                         r"'.*model.safetensors' is not utf-8 text"):
        Tokenizer(str(weights))
    vocab = tmp_path / "vocab.txt"  # the same reader still takes a real vocab, \r\n included
    vocab.write_bytes("\r\n".join(VOCAB).encode())
    assert Tokenizer(str(vocab)).vocab == {token: i for i, token in enumerate(VOCAB)}
