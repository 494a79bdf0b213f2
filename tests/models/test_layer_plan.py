"""The builders' options for long inputs and deep stacks (``attention_window``,
``rerope_window``/``rerope_leak``, ``layer_plan="hwfa"``, ``deepnorm``): the layers they plan,
their ties to the plain model on the same weights, padding and leak invariance, refusals by
name, and the ``.keras`` and keraformer-format round trips. The numerics of each option are
proven against NumPy in ``tests/attentions/test_window.py``, ``tests/positions/test_rerope.py``
and ``tests/core/test_deepnorm.py``.

Tolerances: 1e-5 between float32 computations of the same function.
"""

import keras
import numpy as np
import pytest

from keraformer.models import build_transformer_model, load_pretrained
from keraformer.models.layer_plan import layer_plan
from keraformer.normalization import deepnorm_constants
from tests.references import (assert_builder_no_leak, assert_builder_padding_invariant,
                              builder_outputs, segment_batch, tiny_configs)

# weights large enough for positions to move the attention weights visibly
CONFIG = {**tiny_configs(40, layers=3)[0], "initializer_range": 0.5}


def build(model="roformer", application="encoder", **options):
    return build_transformer_model(model=model, application=application,
                                   return_keras_model=False, **CONFIG, **options)


def same_weights(builder, reference):
    builder.model.set_weights(reference.model.get_weights())
    return builder


def test_layer_plans():
    assert layer_plan("uniform", 2, 5, True, False) == [
        {"window": 5, "rotary": True, "entropy_scaling": False}] * 2
    assert layer_plan("hwfa", 3, 4) == [
        {"window": 4, "rotary": True, "entropy_scaling": False},
        {"window": 4, "rotary": True, "entropy_scaling": False},
        {"window": None, "rotary": False, "entropy_scaling": True}]


@pytest.mark.parametrize("args, error, name", [
    (("hwfa", 3, None), ValueError, "attention_window"),
    (("hwfa", 1, 4), ValueError, "at least 2 layers"),
    (("local", 3, 4), ValueError, "layer_plan"),
    (("hwfa", 3, 0), ValueError, "attention_window")])
def test_bad_plans_are_refused(args, error, name):
    with pytest.raises(error, match=name):
        layer_plan(*args)


def test_builders_plan_their_blocks():
    hwfa = build(layer_plan="hwfa", attention_window=3, rerope_window=2)
    planned = [(b.attention.window, b.attention.rerope_window, b.attention.rotary is not None,
                b.entropy_scaling) for b in hwfa.blocks]
    assert planned == [(3, 2, True, False), (3, 2, True, False), (None, None, False, True)]
    alpha, beta = deepnorm_constants(encoder_layers=3)["encoder"]
    assert {tuple(b.deepnorm) for b in build(deepnorm=True).blocks} == {(alpha, beta)}
    alpha, beta = deepnorm_constants(decoder_layers=3)["decoder"]
    lm = build(application="lm", deepnorm=True)
    assert [b.norm for b in lm.blocks] == ["deepnorm"] * 3
    assert tuple(lm.blocks[0].deepnorm) == pytest.approx((alpha, beta))


@pytest.mark.parametrize("application", ["encoder", "lm", "unilm"])
def test_long_window_and_rerope_equal_the_plain_model(application):
    tokens, segments = segment_batch(0, 40)
    plain = build(application=application)
    want = builder_outputs(plain.model, tokens, segments)
    for options in ({"attention_window": 9}, {"rerope_window": 9},
                    {"rerope_window": 2, "rerope_leak": 1}, {"attention_window": 20,
                                                             "rerope_window": 30}):
        got = builder_outputs(same_weights(build(application=application, **options),
                                           plain).model, tokens, segments)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    for options in ({"attention_window": 2}, {"rerope_window": 2},
                    {"rerope_window": 2, "rerope_leak": 4.0}):
        got = builder_outputs(same_weights(build(application=application, **options),
                                           plain).model, tokens, segments)
        assert np.abs(got - want).max() > 1e-3


@pytest.mark.parametrize("options", [{"attention_window": 2}, {"rerope_window": 2},
                                     {"layer_plan": "hwfa", "attention_window": 2},
                                     {"deepnorm": True}])
def test_padding_and_leak(options):
    # real tokens only: a padding query whose window holds only padding is uniform over
    # the keys it cannot see, which depends on how many there are (its output is unused)
    tokens, segments = (x[:, :6] for x in segment_batch(1, 40))
    assert_builder_padding_invariant(build(**options).model, tokens, segments, extra=4)
    lm = build(application="lm", **options).model
    assert_builder_no_leak(lm, tokens, segments, split=5, vocab=40)


def test_deepnorm_block_is_alpha_residual_then_norm():
    """``LN(α·x + G(x))`` with the block's own layers, against the block's output."""
    builder = build(deepnorm=True)
    block = builder.blocks[0]
    alpha = block.deepnorm[0]
    x = np.random.RandomState(0).randn(2, 5, 16).astype("float32")
    h = block.attention_norm(alpha * x + np.asarray(block.attention(x)))
    want = block.feedforward_norm(alpha * h + block.feedforward(h))
    np.testing.assert_allclose(np.asarray(block(x)), np.asarray(want), atol=1e-5)


def test_deepnorm_scales_value_output_and_feedforward_initialisation():
    keras.utils.set_random_seed(0)
    sizes = dict(num_hidden_layers=12, hidden_size=64, intermediate_size=64,
                 num_attention_heads=2, initializer_range=0.1)
    plain = build_transformer_model(model="bert", return_keras_model=False,
                                    **{**CONFIG, **sizes})
    keras.utils.set_random_seed(0)
    deep = build_transformer_model(model="bert", return_keras_model=False, deepnorm=True,
                                   **{**CONFIG, **sizes})
    beta = deepnorm_constants(encoder_layers=12)["encoder"][1]
    block, base = deep.blocks[0], plain.blocks[0]
    for layer in (block.attention.value_dense, block.attention.output_dense,
                  block.feedforward.input_dense, block.feedforward.output_dense):
        kernel = np.asarray(layer.kernel)
        want = beta ** 2 * 2 / sum(kernel.shape)
        assert abs(kernel.var() / want - 1) < 0.15, layer.name
    # queries and keys keep the builder's initializer (truncated normal 0.1)
    for a, b in ((block.attention.query_dense, base.attention.query_dense),
                 (block.attention.key_dense, base.attention.key_dense)):
        assert abs(np.asarray(a.kernel).std() / np.asarray(b.kernel).std() - 1) < 0.1


@pytest.mark.parametrize("model", ["roformer", "bert"])
def test_random_positions_draw_in_training_only(model):
    """Inference places tokens at ``0..n−1`` (the plain model's output on the same weights);
    training draws sorted positions below ``N`` (the output moves), and ``fit`` runs."""
    tokens, segments = segment_batch(3, 40)
    plain = build(model=model)
    drawn = same_weights(build(model=model, random_positions=64), plain)
    want = builder_outputs(plain.model, tokens, segments)
    np.testing.assert_allclose(builder_outputs(drawn.model, tokens, segments), want, atol=1e-6)
    trained = np.asarray(drawn.model([tokens, segments], training=True))
    assert np.abs(trained - want).max() > 1e-3
    model_ = drawn.model
    model_.compile(optimizer="sgd", loss="mse")
    model_.fit([tokens, segments], np.zeros(want.shape, "float32"), verbose=0)


@pytest.mark.parametrize("model, options, message", [
    ("bert", {"random_positions": 600}, "`random_positions=600` draws positions below 600, "
                                        "but the position table has 512 rows"),
    ("roformer", {"attention": "linear", "random_positions": 64},
     "attention='linear' does not support random_positions=64"),
    ("roformer", {"random_positions": 0}, "`random_positions` must be >= 1"),
    ("bert", {"rerope_window": 4}, "BERT does not support rerope_window=4: it needs rotary"),
    ("bert", {"layer_plan": "hwfa", "attention_window": 3}, "BERT does not support layer_plan"),
    ("roformer", {"attention": "linear", "attention_window": 3},
     "attention='linear' does not support attention_window=3"),
    ("gau_alpha", {"rerope_window": 3, "num_attention_heads": 1},
     "attention='gau' does not support rerope_window=3"),
    ("roformer", {"rerope_leak": 2.0}, "`rerope_leak=2.0` needs `rerope_window`"),
    ("roformer", {"layer_plan": "hwfa"}, "`layer_plan='hwfa'` needs the window"),
    ("roformer", {"attention_window": 0}, "`attention_window` must be >= 1"),
    ("roformer", {"deepnorm": "yes"}, "`deepnorm` must be True or False"),
    ("roformer", {"layer_plan": "full"}, "`layer_plan` must be one of"),
])
def test_options_are_refused_by_name(model, options, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(")):
        build_transformer_model(model=model, **{**CONFIG, **options})


def test_keras_and_keraformer_round_trips(tmp_path):
    tokens, segments = segment_batch(2, 40)
    options = dict(layer_plan="hwfa", attention_window=3, rerope_window=2, rerope_leak=3.0,
                   deepnorm=True, random_positions=30)
    builder = build(application="lm", **options)
    want = builder_outputs(builder.model, tokens, segments)
    path = str(tmp_path / "model.keras")
    builder.model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(builder_outputs(loaded, tokens, segments), want)
    builder.save(str(tmp_path / "saved"))
    again = load_pretrained(str(tmp_path / "saved"), return_keras_model=False)
    assert [b.get_config()["attention_options"] for b in again.blocks] == [
        b.get_config()["attention_options"] for b in builder.blocks]
    np.testing.assert_array_equal(builder_outputs(again.model, tokens, segments), want)


# -- cached decoding: the same layers, the cache's columns placed by position ---------------
DECODING = [{"attention_window": 3}, {"rerope_window": 2, "rerope_leak": 3.0},
            {"layer_plan": "hwfa", "attention_window": 2, "rerope_window": 1}]


@pytest.fixture(scope="module", params=DECODING, ids=lambda o: "-".join(map(str, o.values())))
def decoding_builder(request):
    from tests.models.test_decoding import CONFIG as DECODER_CONFIG, random_weights
    builder = build_transformer_model(model="roformer", application="lm",
                                      return_keras_model=False, **DECODER_CONFIG,
                                      **request.param)
    random_weights(builder)
    return builder


def test_cached_steps_follow_the_full_model(decoding_builder):
    """Random tokens and beam parents (3 beams) from right-padded prompts of 1-5 tokens:
    every cached step's log-probabilities equal the whole model's on that row's own history
    (atol 1e-4, float32 in another order)."""
    from tests.models.test_decoding import full_model_log_probs, prompts
    from keraformer.models.decoding import language_model_decoder
    decoder = language_model_decoder(decoding_builder)
    ids, beams, steps = prompts(), 3, 4
    lengths = (ids != 0).sum(1).astype("int32")
    rng = np.random.default_rng(5)
    log_probs, cache = decoder.prefill(ids, np.zeros_like(ids), lengths, steps + 1, beams)
    expected = [full_model_log_probs(decoding_builder, row, []) for row in ids]
    np.testing.assert_allclose(np.asarray(log_probs), expected, atol=1e-4, rtol=0)
    histories = [[] for _ in range(len(ids) * beams)]
    for index in range(steps):
        parents = (np.arange(len(ids))[:, None] * beams
                   + rng.integers(0, beams, (len(ids), beams))).reshape(-1).astype("int32")
        tokens = rng.integers(4, 40, len(histories)).astype("int32")
        histories = [histories[p] + [int(t)] for p, t in zip(parents, tokens)]
        log_probs, cache = decoder.step(tokens[:, None], np.int32(index), cache, parents)
        expected = [full_model_log_probs(decoding_builder, ids[row // beams], history)
                    for row, history in enumerate(histories)]
        np.testing.assert_allclose(np.asarray(log_probs), expected, atol=1e-4, rtol=0)


def test_cached_generation_equals_uncached(decoding_builder):
    from tests.models.test_decoding import END, prompts
    ids = prompts(seed=2)
    for method, options in (("greedy", {}), ("beam", {"beam_size": 3})):
        cached = decoding_builder.generate(ids, max_length=7, method=method, end_id=END,
                                           **options)
        full = decoding_builder.generate(ids, max_length=7, method=method, end_id=END,
                                         use_cache=False, **options)
        np.testing.assert_array_equal(cached, full)

