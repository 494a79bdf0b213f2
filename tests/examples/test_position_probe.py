"""``examples/position_probe.py``'s argument, checked on untrained models: with every input
token the same, a position encoding inside the softmax leaves every position's hidden state
equal (so no weights can map ``[0, …, 0]`` to ``[1, …, n]``), while one added to the input
does not. Tolerance: a spread below 1e-5 (float32 rounding of values of size ~1) against above 1e-3."""

import os
import sys

import keras
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "examples"))
import position_probe  # noqa: E402

ARGS = position_probe.parse_args(["--length", "8", "--width", "8", "--layers", "2"])


@pytest.mark.parametrize("name, kind_where", sorted(position_probe.ENCODINGS.items()))
def test_inside_the_softmax_every_position_is_the_same(name, kind_where):
    kind, where = kind_where
    keras.utils.set_random_seed(0)
    model = position_probe.build_model(ARGS, kind)
    for layer in model.layers:  # large random weights, so that any asymmetry would show
        layer.set_weights([np.random.RandomState(1).randn(*w.shape).astype("float32")
                           for w in layer.get_weights()])
    _, hidden = model.predict(np.zeros((1, ARGS.length), "int32"), verbose=0)
    spread = hidden[0].std(axis=0).max()
    if where == "inside the softmax" or kind == "none":
        assert spread < 1e-5, name
    else:
        assert spread > 1e-3, name
