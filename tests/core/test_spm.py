"""SpTokenizer gives the same ids as transformers' T5Tokenizer on a SentencePiece model
trained here (unigram, pad 0 / end 1 / unknown 2, no BOS), sentinels included."""

import shutil

import pytest
import transformers

from keraformer.tokenizers import SpTokenizer
from tests.references import train_sentencepiece

CORPUS = ["the cat sat on the mat", "a dog ran in the park with 42 balls",
          "über café naïve résumé", "Hello, world! How are you today?",
          "numbers 0123456789 and symbols #@% (brackets)", "Translate English to German: yes"]
TEXTS = ["Hello <extra_id_0> world", "the cat<extra_id_1>sat   on  the mat",
         "Zürich 東京 $3.50 naïve!!", "x <extra_id_99> y <extra_id_5>",
         "  leading and trailing  ",
         "Translate English to German: The park has 7 dogs.\nNew line\tand tab", "",
         "<extra_id_3>", "résumé (café) #1 @home 100%"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spm")
    model = train_sentencepiece(folder, CORPUS * 30, 60)
    hf_dir = folder / "hf"
    hf_dir.mkdir()
    shutil.copy(model, hf_dir / "spiece.model")
    # transformers 5 builds T5Tokenizer from spiece.model with its SentencePiece converter
    ours = SpTokenizer(model, token_start=None, token_end="</s>")
    return ours, transformers.T5Tokenizer.from_pretrained(str(hf_dir))


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_t5_tokenizer(tokenizers, text):
    ours, theirs = tokenizers
    expected = theirs(text).input_ids
    assert ours.encode(text) == (expected, [0] * len(expected))
    assert ours.tokenize(text) == theirs.convert_ids_to_tokens(expected)
    assert ours.pieces(text) == theirs.convert_ids_to_tokens(expected)[:-1]


def test_special_ids_and_sentinels(tokenizers):
    ours, theirs = tokenizers
    assert (ours.pad_id, ours.eos_id, ours.unk_id) == (0, 1, 2)
    assert ours.vocab_size == len(theirs) == 160
    for i in (0, 1, 50, 99):
        assert ours.sentinel_id(i) == theirs.convert_tokens_to_ids(f"<extra_id_{i}>")
        assert ours.id_to_token(ours.sentinel_id(i)) == f"<extra_id_{i}>"
    with pytest.raises(ValueError, match="index"):
        ours.sentinel_id(100)


def test_decode_round_trip_and_special_tokens(tokenizers):
    ours, theirs = tokenizers
    text = "the cat sat on the mat with 42 balls"
    ids = ours.encode(text)[0]
    assert ours.decode(ids) == text == theirs.decode(ids, skip_special_tokens=True)
    with_specials = [0] + ids[:3] + [ours.sentinel_id(0), 2] + ids[3:]
    assert ours.decode(with_specials) == ours.decode(ids)
    shown = ours.decode(ids[:2] + [ours.sentinel_id(0)], skip_special=False)
    assert "<extra_id_0>" in shown
    assert ours.encode(text, maxlen=4)[0] == ids[:3] + [ours.eos_id]


def test_bad_arguments(tokenizers, tmp_path):
    ours, _ = tokenizers
    with pytest.raises(FileNotFoundError, match="model_path"):
        SpTokenizer(str(tmp_path / "missing.model"))
    with pytest.raises(TypeError, match="text"):
        ours.encode(123)
    with pytest.raises(ValueError, match="token_start"):
        SpTokenizer(ours.model_path)  # bert4keras' default frame [CLS]/[SEP]: not in T5's
    with pytest.raises(ValueError, match="maxlen"):
        ours.encode("the cat", "the mat", maxlen=1)
