"""``sequence_padding`` and ``DataGenerator`` against bert4keras 0.11.5 (run in one subprocess),
and ``DataGenerator.forfit`` driving ``model.fit`` with per-batch lengths on this backend."""

import keras
import numpy as np
import pytest

from keraformer.data import DataGenerator, open_shape, sequence_padding
from tests.references import run_bert4keras

PADDING_CASES = [
    ([[1, 2, 3], [4], [5, 6]], {}),
    ([[1, 2, 3], [4], [5, 6]], {"length": 2}),
    ([[1, 2, 3], [4], []], {"length": 5, "value": -1}),
    ([[1, 2, 3], [4], [5, 6]], {"mode": "pre"}),
    ([[1, 2, 3], [4], [5, 6]], {"mode": "pre", "length": 2, "value": 9}),
    ([[0.5, 1.5], [2.5]], {"value": 0.25}),
    ([[[1, 2], [3, 4]], [[5, 6]]], {}),  # a feature axis after the sequence axis
    ([[[1, 2], [3, 4]], [[5, 6]]], {"length": [3], "value": 7}),
    ([[[1, 2, 3], [4, 5, 6]], [[7]]], {"seq_dims": 2}),
    ([[[1, 2, 3], [4, 5, 6]], [[7]]], {"seq_dims": 2, "length": [1, 4], "mode": "pre"}),
    ([[[[1, 1]], [[2, 2]]], [[[3, 3], [4, 4]]]], {"seq_dims": 2, "value": -5}),
]

SAMPLES = [f"sample {i}" for i in range(23)]

BERT4KERAS_SCRIPT = r"""
import json, sys
import numpy as np
from bert4keras.snippets import DataGenerator, sequence_padding

inputs = json.load(open(sys.argv[1]))
arrays = {}
for i, (sequences, kwargs) in enumerate(inputs["padding"]):
    sequences = [np.array(s) for s in sequences]
    arrays[f"pad{i}"] = sequence_padding(sequences, **kwargs)

class Stream:
    def __init__(self, items):
        self.items = items
    def __iter__(self):
        return iter(self.items)

orders = {}
samples = inputs["samples"]
for name, data, kwargs in (("sized", samples, {}), ("unsized", Stream(samples),
                                                   {"buffer_size": 5})):
    generator = DataGenerator(data, batch_size=4, **kwargs)
    np.random.seed(3)
    orders[name] = [[flag, item] for flag, item in generator.sample(random=True)]
    orders[name + "_plain"] = [[flag, item] for flag, item in generator.sample()]
orders["len"] = len(DataGenerator(samples, batch_size=4))
json.dump(orders, open(sys.argv[2], "w"))
np.savez(sys.argv[3], **arrays)
"""


class Stream:
    """An iterable without a length (a file or a stream, for DataGenerator)."""

    def __init__(self, items):
        self.items = items

    def __iter__(self):
        return iter(self.items)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    inputs = {"padding": [[sequences, kwargs] for sequences, kwargs in PADDING_CASES],
              "samples": SAMPLES}
    return run_bert4keras(BERT4KERAS_SCRIPT, inputs, tmp_path_factory.mktemp("b4k_data"))


def test_sequence_padding_equals_bert4keras(reference):
    _, arrays = reference
    for i, (sequences, kwargs) in enumerate(PADDING_CASES):
        ours = sequence_padding([np.array(s) for s in sequences], **kwargs)
        expected = arrays[f"pad{i}"]
        assert ours.dtype == expected.dtype and ours.shape == expected.shape, (i, ours)
        np.testing.assert_array_equal(ours, expected, err_msg=str(i))
    # plain lists are taken as they are
    np.testing.assert_array_equal(sequence_padding([[1, 2, 3], [4]]), [[1, 2, 3], [4, 0, 0]])
    # keraformer's pad_to_multiple_of: the default length rounded up
    np.testing.assert_array_equal(sequence_padding([[1, 2, 3], [4]], pad_to_multiple_of=4),
                                  [[1, 2, 3, 0], [4, 0, 0, 0]])
    np.testing.assert_array_equal(
        sequence_padding([[[1, 2, 3]], [[4]]], seq_dims=2, pad_to_multiple_of=2),
        [[[1, 2, 3, 0], [0, 0, 0, 0]], [[4, 0, 0, 0], [0, 0, 0, 0]]])


def test_sample_order_and_length_equal_bert4keras(reference):
    orders, _ = reference
    for name, data, kwargs in (("sized", SAMPLES, {}),
                               ("unsized", Stream(SAMPLES), {"buffer_size": 5})):
        generator = DataGenerator(data, batch_size=4, **kwargs)
        np.random.seed(3)
        shuffled = [[flag, item] for flag, item in generator.sample(random=True)]
        assert shuffled == orders[name]
        assert sorted(item for _, item in shuffled) == sorted(SAMPLES)
        assert [[f, i] for f, i in generator.sample()] == orders[name + "_plain"]
    assert len(DataGenerator(SAMPLES, batch_size=4)) == orders["len"] == 6


def test_sequence_padding_errors_name_the_argument():
    with pytest.raises(ValueError, match="mode"):
        sequence_padding([[1]], mode="middle")
    with pytest.raises(ValueError, match="inputs"):
        sequence_padding([])
    with pytest.raises(ValueError, match="rank"):
        sequence_padding([[1, 2], [[1, 2]]])
    with pytest.raises(ValueError, match="value"):
        sequence_padding([[1, 2], [3]], value=0.5)  # would be cut to 0 in an int array
    with pytest.raises(ValueError, match="length"):
        sequence_padding([[[1]], [[2]]], length=[3], seq_dims=2)
    with pytest.raises(ValueError, match="trailing"):
        sequence_padding([[[1, 2]], [[3]]])
    with pytest.raises(TypeError, match="length"):
        sequence_padding([[1]], length=2.5)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        sequence_padding([[1]], length=4, pad_to_multiple_of=8)


class PairGenerator(DataGenerator):
    """bert4keras-style: ``[token_ids, segment_ids], labels`` per batch, padded per batch."""

    def __iter__(self, random=False):
        tokens, segments, labels = [], [], []
        for is_end, (ids, label) in self.sample(random):
            tokens.append(ids)
            segments.append([0] * len(ids))
            labels.append([int(label)])
            if len(tokens) == self.batch_size or is_end:
                # a list, as bert4keras scripts write it; Keras 3 alone refuses lists
                yield [[sequence_padding(tokens), sequence_padding(segments)],
                       sequence_padding(labels)]
                tokens, segments, labels = [], [], []


def test_forfit_drives_fit_with_each_batch_at_its_own_length():
    """lr 0, so fit's epoch loss must equal the batch-size-weighted mean of the losses of the
    batches at their own lengths (the model averages over padding too, so a batch padded to
    another length would give another loss). Batches 1 and 2 share a length and 3 and 4 do
    not: Keras alone would fix the length from the first two batches on TensorFlow."""
    lengths = [3, 1, 2, 3, 4, 5, 2, 1]
    rng = np.random.default_rng(0)
    data = [(list(rng.integers(1, 20, n)), float(i % 2)) for i, n in enumerate(lengths)]
    generator = PairGenerator(data, batch_size=2)
    tokens = keras.Input((None,), dtype="int32")
    segments = keras.Input((None,), dtype="int32")
    hidden = keras.layers.Add()([keras.layers.Embedding(20, 4)(tokens),
                                 keras.layers.Embedding(2, 4)(segments)])
    output = keras.layers.Dense(2, activation="softmax")(
        keras.layers.GlobalAveragePooling1D()(hidden))
    model = keras.Model([tokens, segments], output)
    # labels (batch, 1): the loss squeezes that axis, so the spec must keep its size 1
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
    history = model.fit(generator.forfit(random=False), steps_per_epoch=len(generator),
                        epochs=2, verbose=0)
    batches = list(generator.__iter__())
    assert [b[0][0].shape[1] for b in batches] == [3, 3, 5, 2]
    losses = [-np.mean(np.log(np.take_along_axis(model.predict(b[0], verbose=0), b[1], 1)))
              for b in batches]
    np.testing.assert_allclose(history.history["loss"], [np.mean(losses)] * 2, rtol=1e-5)
    predictions = model.predict(generator.fortest(), steps=len(generator), verbose=0)
    expected = np.concatenate([model.predict(b[0], verbose=0) for b in batches])
    np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-6)


def test_open_shape_keeps_only_size_one_axes():
    assert open_shape((32, 17)) == (None, None)
    assert open_shape((32, 1)) == (None, 1)
    assert open_shape((32, 4, 17, 17)) == (None, None, None, None)
    assert open_shape((1, 9, 1)) == (None, None, 1)


def test_generator_errors():
    with pytest.raises(ValueError, match="batch_size"):
        DataGenerator([1, 2], batch_size=0)
    with pytest.raises(TypeError, match="buffer_size"):
        DataGenerator([1, 2], buffer_size=2.0)
    with pytest.raises(TypeError, match="len"):
        len(DataGenerator(Stream([1, 2])))
    with pytest.raises(NotImplementedError, match="__iter__"):
        next(iter(DataGenerator([1, 2])))

    class Silent(DataGenerator):
        def __iter__(self, random=False):
            return iter(())

    with pytest.raises(ValueError, match="no batch"):
        next(iter(Silent([1]).epochs(False)))
    assert list(DataGenerator([]).sample()) == []
