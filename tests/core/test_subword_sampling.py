"""``SpTokenizer.encode(..., sample=True)``: SentencePiece's subword regularisation, draw for
draw equal to SentencePiece's own sampling under the same seed, several segmentations of
one text that all decode back to it, plain encoding untouched, bad options refused."""

import os

import pytest
import sentencepiece

from keraformer.tokenizers import SpTokenizer
from tests.references import train_sentencepiece

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "texts.txt")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    with open(DATA, encoding="utf-8") as f:
        texts = [t for t in f.read().splitlines() if t.isascii()][:1000]
    model = train_sentencepiece(tmp_path_factory.mktemp("spm"), texts, 400,
                                character_coverage=0.995)
    return SpTokenizer(model, token_start=None, token_end="</s>")


TEXT = "the weather is unbelievable this morning"


def test_sampling_equals_sentencepiece_draw_for_draw(tokenizer):
    reference = sentencepiece.SentencePieceProcessor(model_file=tokenizer.model_path)
    sentencepiece.set_random_generator_seed(7)
    ours = [tokenizer.encode(TEXT, sample=True, alpha=0.5, nbest_size=-1)[0]
            for _ in range(20)]
    sentencepiece.set_random_generator_seed(7)
    theirs = [reference.encode(TEXT, enable_sampling=True, alpha=0.5, nbest_size=-1)
              + [tokenizer.eos_id] for _ in range(20)]
    assert ours == theirs
    assert len({tuple(ids) for ids in ours}) > 3  # several segmentations
    assert all(tokenizer.decode(ids) == TEXT for ids in ours)


def test_plain_encoding_is_unchanged_after_sampling(tokenizer):
    plain = tokenizer.encode(TEXT)
    tokenizer.encode(TEXT, sample=True, nbest_size=4)
    assert tokenizer.encode(TEXT) == plain
    assert plain[0][:-1] == tokenizer.processor.encode(TEXT)


@pytest.mark.parametrize("kwargs,error,name", [
    ({"alpha": 0.1}, ValueError, "alpha"), ({"sample": 1}, TypeError, "sample"),
    ({"sample": True, "alpha": 0.0}, ValueError, "alpha"),
    ({"sample": True, "nbest_size": 1}, ValueError, "nbest_size"),
    ({"sample": True, "nbest_size": 0}, ValueError, "nbest_size"),
])
def test_bad_sampling_options_are_refused(tokenizer, kwargs, error, name):
    with pytest.raises(error, match=name):
        tokenizer.encode(TEXT, **kwargs)


def test_text_dataset_samples_new_segmentations_every_epoch(tokenizer):
    import numpy as np

    from keraformer.data import text_dataset
    texts = [TEXT, "unbelievable weather this morning again"] * 4
    dataset = text_dataset(texts, [0, 1] * 4, tokenizer, batch_size=8,
                           subword_sampling={"alpha": 0.5, "nbest_size": -1})
    epochs = [np.asarray(next(iter(dataset))[0][0]) for _ in range(3)]
    rows = {tuple(r[r != tokenizer.pad_id]) for epoch in epochs for r in epoch}
    assert len(rows) > 4  # new draws each epoch (and each row)
    for epoch in epochs:
        for row, text in zip(epoch, texts):
            assert tokenizer.decode(row[row != tokenizer.pad_id].tolist()) == text
    with pytest.raises(ValueError, match="nbest_size"):
        text_dataset(texts, None, tokenizer, subword_sampling={"nbest_size": 1})
    with pytest.raises(TypeError, match="subword_sampling"):
        text_dataset(texts, None, tokenizer, subword_sampling={"temperature": 1})
