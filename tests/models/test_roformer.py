"""RoFormer against Hugging Face transformers' PyTorch RoFormer, masks, long inputs, attention
swapping and checkpoint round trips."""

import json
import os

import keras
import numpy as np
import pytest

from keraformer import checkpoints
from keraformer.models import build_transformer_model, load_pretrained
from tests.references import config_for

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CONFIG = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=48, max_position_embeddings=64, type_vocab_size=2,
              hidden_act="gelu", pad_token_id=0)


def hf_directory(path, **overrides):
    """A random tiny Hugging Face RoFormerForMaskedLM saved with save_pretrained."""
    torch.manual_seed(0)
    config = transformers.RoFormerConfig(**{**CONFIG, "embedding_size": 32, **overrides})
    model = transformers.RoFormerForMaskedLM(config).eval()
    with torch.no_grad():  # LayerNorm params away from (1, 0) so they are really checked
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


def batch(rng, lengths, width, vocab=61):
    """Token ids with real tokens then padding (id 0), and segment ids (second half 1)."""
    tokens = np.zeros((len(lengths), width), "int32")
    segments = np.zeros_like(tokens)
    for row, n in enumerate(lengths):
        tokens[row, :n] = rng.integers(1, vocab, n)
        segments[row, n // 2:n] = 1
    return tokens, segments


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hf_roformer"))
    return hf_directory(path), path


def test_hidden_states_and_mlm_logits_match_transformers(hf):
    model, path = hf
    rng = np.random.default_rng(1)
    tokens, segments = batch(rng, [11, 7, 3], 11)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    token_type_ids=torch.tensor(segments, dtype=torch.long),
                    attention_mask=torch.tensor(tokens > 0, dtype=torch.long),
                    output_hidden_states=True)
    expected_hidden = out.hidden_states[-1].numpy()
    encoder = load_pretrained(path)
    hidden = keras.ops.convert_to_numpy(encoder([tokens, segments]))
    real = tokens > 0
    np.testing.assert_allclose(hidden[real], expected_hidden[real], atol=1e-4, rtol=0)
    mlm = load_pretrained(path, with_mlm="linear")
    logits = keras.ops.convert_to_numpy(mlm([tokens, segments]))
    np.testing.assert_allclose(logits[real], out.logits.numpy()[real], atol=1e-3, rtol=0)


def test_embedding_size_below_hidden_size_uses_the_projection(tmp_path):
    path = str(tmp_path)
    model = hf_directory(path, embedding_size=16)
    rng = np.random.default_rng(2)
    tokens, segments = batch(rng, [9, 5], 9)
    with torch.no_grad():
        expected = model.roformer(input_ids=torch.tensor(tokens, dtype=torch.long),
                                  token_type_ids=torch.tensor(segments, dtype=torch.long),
                                  attention_mask=torch.tensor(tokens > 0, dtype=torch.long)
                                  ).last_hidden_state.numpy()
    hidden = keras.ops.convert_to_numpy(load_pretrained(path)([tokens, segments]))
    np.testing.assert_allclose(hidden[tokens > 0], expected[tokens > 0], atol=1e-4, rtol=0)


def test_rotary_value_config_is_refused():
    with pytest.raises(ValueError, match="rotary_value"):
        build_transformer_model(model="roformer", rotary_value=True, **CONFIG)


@pytest.fixture(scope="module")
def builders():
    """One builder per application, sharing random weights (the MLM head too)."""
    built = {}
    for application in ("encoder", "lm", "unilm"):
        keras.utils.set_random_seed(3)
        built[application] = build_transformer_model(
            model="roformer", application=application, with_mlm="linear",
            return_keras_model=False, **CONFIG)
    return built


@pytest.mark.parametrize("application", ["encoder", "lm", "unilm"])
def test_padding_does_not_change_real_positions(builders, application):
    model = builders[application].model
    rng = np.random.default_rng(4)
    tokens, segments = batch(rng, [8], 8)
    padded_tokens = np.pad(tokens, ((0, 0), (0, 5)))
    padded_segments = np.pad(segments, ((0, 0), (0, 5)))
    short = keras.ops.convert_to_numpy(model([tokens, segments]))
    long = keras.ops.convert_to_numpy(model([padded_tokens, padded_segments]))
    np.testing.assert_allclose(long[:, :8], short, atol=1e-5, rtol=0)


@pytest.mark.parametrize("application", ["lm", "unilm"])
def test_causal_applications_do_not_see_the_future(builders, application):
    model = builders[application].model
    rng = np.random.default_rng(5)
    tokens = rng.integers(1, 61, (1, 10)).astype("int32")
    segments = np.zeros_like(tokens) if application == "lm" else np.array([[0] * 4 + [1] * 6])
    changed = tokens.copy()
    changed[0, 7:] = (changed[0, 7:] % 60) + 1  # new tokens at positions 7..9 only
    a = keras.ops.convert_to_numpy(model([tokens, segments]))
    b = keras.ops.convert_to_numpy(model([changed, segments]))
    np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-5, rtol=0)
    assert np.abs(a[:, 7:] - b[:, 7:]).max() > 1e-3


def test_encoder_sees_the_whole_sequence(builders):
    model = builders["encoder"].model
    tokens = np.arange(1, 11, dtype="int32")[None]
    changed = tokens.copy()
    changed[0, -1] = 50
    a = keras.ops.convert_to_numpy(model([tokens, np.zeros_like(tokens)]))
    b = keras.ops.convert_to_numpy(model([changed, np.zeros_like(tokens)]))
    assert np.abs(a[:, 0] - b[:, 0]).max() > 1e-5  # float32 noise here is ~1e-7


def test_inputs_longer_than_max_position_embeddings(builders):
    model = builders["encoder"].model
    rng = np.random.default_rng(6)
    tokens, segments = batch(rng, [150], 150)  # > max_position_embeddings = 64
    logits = keras.ops.convert_to_numpy(model([tokens, segments]))
    assert logits.shape == (1, 150, 61) and np.isfinite(logits).all()


def test_google_checkpoint_round_trip_and_load(builders, tmp_path):
    builder = builders["lm"]
    prefix = builder.save_weights_as_checkpoint(str(tmp_path / "model.ckpt"))
    saved = checkpoints.read_tf_checkpoint(str(tmp_path))
    names = set(saved)
    assert "bert/encoder/layer_1/attention/self/query/kernel" in names
    assert "cls/predictions/output_bias" in names
    assert not any("position_embeddings" in n for n in names)
    for name, value in builder.checkpoint_arrays().items():
        np.testing.assert_array_equal(saved[name], value)
    with open(tmp_path / "bert_config.json", "w") as f:
        json.dump(CONFIG, f)
    loaded = load_pretrained(str(tmp_path), model="roformer", application="lm",
                             with_mlm="linear")
    tokens = np.arange(1, 9, dtype="int32")[None]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded([tokens, np.zeros_like(tokens)])),
        keras.ops.convert_to_numpy(builder.model([tokens, np.zeros_like(tokens)])))
    assert os.path.exists(str(prefix) + ".index")


def test_with_pool_entropy_scaling_and_recompute_build():
    model = build_transformer_model(model="roformer", with_pool=True, entropy_scaling=True,
                                    recompute=True, **CONFIG)
    tokens = np.arange(1, 6, dtype="int32")[None]
    pooled = keras.ops.convert_to_numpy(model([tokens, np.zeros_like(tokens)]))
    assert pooled.shape == (1, 32) and np.abs(pooled).max() <= 1.0


def test_unknown_attention_is_refused():
    with pytest.raises(ValueError, match="attention"):
        build_transformer_model(model="roformer", attention="sparse", **CONFIG)


def test_unilm_with_linear_attention_is_refused():
    with pytest.raises(ValueError, match="unilm"):
        build_transformer_model(model="roformer", application="unilm", attention="linear",
                                **CONFIG)


SMALL = dict(vocab_size=12, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
             intermediate_size=32, hidden_act="relu", hidden_dropout_prob=0.0,
             attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module", params=["linear", "vq"])
def swapped(request):
    """A RoFormerV2 language model whose attention is swapped, trained for a few steps on
    ``next = current % 10 + 1`` sequences; returns the model and the loss history."""
    keras.utils.set_random_seed(7)
    builder = build_transformer_model(model="roformer_v2", application="lm",
                                      attention=request.param, with_mlm="linear",
                                      return_keras_model=False, **SMALL)
    rng = np.random.default_rng(8)
    tokens = (rng.integers(0, 10, (32, 1)) + np.arange(17)) % 10 + 1
    x, y = tokens[:, :-1].astype("int32"), tokens[:, 1:].astype("int32")
    builder.model.compile(keras.optimizers.Adam(1e-2),
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = builder.model.fit([x, np.zeros_like(x)], y, batch_size=16, epochs=6, verbose=0)
    return request.param, builder, history.history["loss"]


def test_swapped_attention_trains(swapped):
    attention, builder, losses = swapped
    kind = type(builder.blocks[0].attention).__name__
    assert kind == {"linear": "LinearAttention", "vq": "VQAttention"}[attention]
    assert losses[-1] < 0.7 * losses[0], losses


def test_swapped_attention_stays_causal(swapped):
    _, builder, _ = swapped
    rng = np.random.default_rng(9)
    tokens = rng.integers(1, 12, (1, 10)).astype("int32")
    changed = tokens.copy()
    changed[0, 6:] = changed[0, 6:] % 11 + 1
    a = keras.ops.convert_to_numpy(builder.model([tokens, np.zeros_like(tokens)]))
    b = keras.ops.convert_to_numpy(builder.model([changed, np.zeros_like(tokens)]))
    np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-5, rtol=0)
    assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-4


def test_swapped_attention_checkpoint_round_trip(swapped, tmp_path):
    attention, builder, _ = swapped
    builder.save_weights_as_checkpoint(str(tmp_path / "model.ckpt"))
    saved = checkpoints.read_tf_checkpoint(str(tmp_path))
    assert "bert/encoder/layer_0/attention/query/kernel" in saved
    fresh = build_transformer_model(checkpoint_path=str(tmp_path / "model.ckpt"),
                                    model="roformer_v2", application="lm",
                                    attention=attention, with_mlm="linear",
                                    return_keras_model=False, **SMALL)
    tokens = np.arange(1, 9, dtype="int32")[None]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fresh.model([tokens, np.zeros_like(tokens)])),
        keras.ops.convert_to_numpy(builder.model([tokens, np.zeros_like(tokens)])),
        atol=1e-6, rtol=0)


def random_roformer(application, with_mlm, seed=10, **overrides):
    """A tiny RoFormer builder whose every weight (norms and biases too) is random."""
    keras.utils.set_random_seed(seed)
    builder = build_transformer_model(model="roformer", application=application,
                                      with_mlm=with_mlm, return_keras_model=False,
                                      **{**CONFIG, **overrides})
    rng = np.random.default_rng(seed)
    for variable in builder.model.weights:
        variable.assign(rng.normal(0.0, 0.3, variable.shape).astype("float32"))
    return builder


EXPORTS = [("encoder", "linear", {}, "RoFormerForMaskedLM"),
           ("encoder", False, {}, "RoFormerModel"),
           ("lm", "linear", {"embedding_size": 16}, "RoFormerForCausalLM")]


@pytest.mark.parametrize("application, with_mlm, overrides, hf_class", EXPORTS)
def test_save_pretrained_loads_in_transformers_and_back(application, with_mlm, overrides,
                                                        hf_class, tmp_path):
    builder = random_roformer(application, with_mlm, **overrides)
    path = str(tmp_path)
    builder.save_pretrained(path)
    with open(os.path.join(path, "config.json")) as f:
        assert json.load(f)["architectures"] == [hf_class]
    hf, info = getattr(transformers, hf_class).from_pretrained(path, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    tokens, segments = batch(np.random.default_rng(11), [10, 6, 2], 10)
    with torch.no_grad():
        out = hf.eval()(input_ids=torch.tensor(tokens, dtype=torch.long),
                        token_type_ids=torch.tensor(segments, dtype=torch.long),
                        attention_mask=torch.tensor(tokens > 0, dtype=torch.long),
                        output_hidden_states=True)
    real = tokens > 0
    hidden = keras.Model(builder.model.inputs,
                         builder.model.get_layer("Transformer-1").output)([tokens, segments])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(hidden)[real],
                               out.hidden_states[-1].numpy()[real], atol=1e-4, rtol=0)
    ours = keras.ops.convert_to_numpy(builder.model([tokens, segments]))
    if with_mlm:
        np.testing.assert_allclose(ours[real], out.logits.numpy()[real], atol=1e-4, rtol=0)
    loaded = load_pretrained(path, application=application, with_mlm=with_mlm,
                             return_keras_model=False)
    reloaded = loaded.checkpoint_arrays()
    for name, value in builder.checkpoint_arrays().items():
        np.testing.assert_array_equal(reloaded[name], value)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded.model([tokens, segments])),
                                  ours)


@pytest.mark.parametrize("options, argument", [({"with_pool": True}, "with_pool"),
                                               ({"attention": "linear",  # no dropout
                                                 "attention_probs_dropout_prob": 0.0},
                                                "attention"),
                                               ({"application": "unilm"}, "application")])
def test_save_pretrained_refuses_what_transformers_cannot_express(options, argument, tmp_path):
    builder = build_transformer_model(model="roformer", return_keras_model=False,
                                      **{**CONFIG, **options})
    with pytest.raises(ValueError, match=argument):
        builder.save_pretrained(str(tmp_path))
    assert not os.listdir(tmp_path)  # refused before anything is written


@pytest.mark.parametrize("model", ["roformer_v2", "gau_alpha"])
def test_roformer_v2_and_gau_alpha_have_no_hugging_face_export(model, tmp_path):
    builder = build_transformer_model(model=model, return_keras_model=False,
                                      **config_for(model, SMALL))
    with pytest.raises(NotImplementedError, match="transformers has no port"):
        builder.save_pretrained(str(tmp_path))
