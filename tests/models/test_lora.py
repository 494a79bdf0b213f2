"""``keraformer.models.enable_lora`` on every builder.

Training: after ``fit`` (3 Adam steps: A's gradient is zero until B has left zero) every frozen
weight of the backbone is bitwise equal to its value before, while both adapter matrices of
every target layer and the user's head have moved; the adapters sit on exactly the target
layers. Export: with random non-zero adapters,
``save_pretrained`` loads in ``transformers`` (``BertModel``, ``RoFormerModel``,
``T5ForConditionalGeneration``) with the adapted model's outputs (max abs difference < 1e-4,
float32 on two frameworks), ``save_weights_as_checkpoint`` reloads into a plain keraformer
model with them (< 1e-5), and the ``.keras`` file reloads in safe mode with them (< 1e-6).
"""

import keras
import numpy as np
import pytest
import torch
import transformers

from keraformer.models import build_transformer_model, enable_lora
from keraformer.models.lora import lora_weights
from tests.references import ENCODERS, SEQ2SEQ, config_for, tiny_configs

ENCODER_CONFIG, T5_CONFIG = tiny_configs(60, max_position_embeddings=32)
TARGETS = {"gau_alpha": ("i_dense",)}  # GAU-α has no query/value projections


def token_batch(count=12, length=10, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 60, (count, length)).astype("int32")
    for row, real in zip(ids, rng.integers(3, length + 1, count)):
        row[real:] = 0
    return ids


def snapshot(model):
    return {id(v): np.array(keras.ops.convert_to_numpy(v)) for v in model.weights}


def check_only_adapters_and_head_moved(model, before, adapters, head):
    trainable = {id(v) for v in model.trainable_weights}
    assert trainable == {id(v) for v in adapters + head}
    for variable in model.weights:
        now = keras.ops.convert_to_numpy(variable)
        if id(variable) in trainable:
            assert np.abs(now - before[id(variable)]).max() > 1e-6, variable.path
        else:
            assert np.array_equal(now, before[id(variable)]), f"frozen {variable.path} moved"


def classifier(model_name, head_after):
    """A backbone with a mean-pooled 2-class head; LoRA before or after the head is added."""
    keras.utils.set_random_seed(0)
    encoder = build_transformer_model(model=model_name, **config_for(model_name, ENCODER_CONFIG))
    targets = TARGETS.get(model_name, ("query", "value"))
    if head_after:
        enable_lora(encoder, rank=2, targets=targets)
    head = keras.layers.Dense(2, activation="softmax", name="head")
    pooled = keras.layers.GlobalAveragePooling1D()(encoder.output)
    model = keras.Model(encoder.inputs, head(pooled))
    if not head_after:
        enable_lora(model, rank=2, targets=targets, backbone=encoder)
    return model, head, targets


@pytest.mark.parametrize("model_name", ENCODERS)
def test_encoder_fit_moves_only_adapters_and_head(model_name):
    model, head, targets = classifier(model_name, head_after=model_name == "bert")
    adapters = lora_weights(model)
    assert len(adapters) == 2 * ENCODER_CONFIG["num_hidden_layers"] * len(targets)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    ids = token_batch()
    before = snapshot(model)
    model.fit([ids, np.zeros_like(ids)], ids[:, 0] % 2, batch_size=4, epochs=1, verbose=0)
    check_only_adapters_and_head_moved(model, before, adapters, head.weights)


@pytest.mark.parametrize("version", SEQ2SEQ)
def test_t5_fit_moves_only_adapters(version):
    keras.utils.set_random_seed(0)
    model = build_transformer_model(model=version, **T5_CONFIG)
    enable_lora(model, rank=2)
    adapters = lora_weights(model)
    layers = T5_CONFIG["num_layers"]
    assert len(adapters) == 2 * (2 * layers + 4 * layers)  # self; self and cross attention
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    sources, targets = token_batch(seed=1), token_batch(seed=2)
    decoder_ids = np.concatenate([np.zeros((12, 1), "int32"), targets[:, :-1]], axis=1)
    before = snapshot(model)
    model.fit([sources, decoder_ids], targets, sample_weight=(targets != 0) * 1.0,
              batch_size=4, epochs=1, verbose=0)
    check_only_adapters_and_head_moved(model, before, adapters, [])


def test_bfloat16_base_trains_float32_adapters():
    """A backbone built under the "bfloat16" policy (frozen weights stored in bfloat16) gets
    float32 adapters; the head is built in float32."""
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("bfloat16")
    try:
        encoder = build_transformer_model(model="bert", **ENCODER_CONFIG)
        enable_lora(encoder, rank=2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    head = keras.layers.Dense(2, activation="softmax", name="head")
    pooled = keras.layers.GlobalAveragePooling1D()(encoder.output)
    model = keras.Model(encoder.inputs, head(pooled))
    adapters = lora_weights(model)
    assert {v.dtype for v in adapters} == {"float32"}
    frozen = [v for v in model.weights if not v.trainable]
    assert frozen and {v.dtype for v in frozen} == {"bfloat16"}
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    ids = token_batch()
    before = snapshot(model)
    model.fit([ids, np.zeros_like(ids)], ids[:, 0] % 2, batch_size=4, epochs=1, verbose=0)
    check_only_adapters_and_head_moved(model, before, adapters, head.weights)


def randomize_adapters(model, seed=0):
    """Non-zero adapters (B starts at zero), so that a merge that forgot them shows."""
    rng = np.random.default_rng(seed)
    for variable in lora_weights(model):
        variable.assign(rng.normal(0, 0.3, variable.shape).astype("float32"))


def torch_ids(ids):
    return torch.tensor(np.asarray(ids), dtype=torch.long)


@pytest.mark.parametrize("model_name", ["bert", "roformer"])
def test_merged_exports_equal_the_adapted_encoder(model_name, tmp_path):
    keras.utils.set_random_seed(1)
    builder = build_transformer_model(model=model_name, return_keras_model=False,
                                      **ENCODER_CONFIG)
    enable_lora(builder.model, rank=4, alpha=8)
    randomize_adapters(builder.model)
    ids = token_batch(6)
    segments = np.zeros_like(ids)
    adapted = builder.model.predict([ids, segments], verbose=0)
    plain = build_transformer_model(model=model_name, **ENCODER_CONFIG)
    assert np.abs(plain.predict([ids, segments], verbose=0) - adapted).max() > 1e-2
    builder.save_pretrained(str(tmp_path / "hf"))
    hf_class = transformers.BertModel if model_name == "bert" else transformers.RoFormerModel
    hf = hf_class.from_pretrained(str(tmp_path / "hf")).eval()
    with torch.no_grad():
        theirs = hf(input_ids=torch_ids(ids), attention_mask=torch_ids(ids != 0),
                    token_type_ids=torch_ids(segments)).last_hidden_state.numpy()
    real = ids != 0
    assert np.abs(theirs[real] - adapted[real]).max() < 1e-4
    builder.save_weights_as_checkpoint(str(tmp_path / "google" / "model.ckpt"))
    reloaded = build_transformer_model(checkpoint_path=str(tmp_path / "google" / "model.ckpt"),
                                       model=model_name, **ENCODER_CONFIG)
    assert not lora_weights(reloaded)
    assert np.abs(reloaded.predict([ids, segments], verbose=0) - adapted).max() < 1e-5


def test_merged_export_equals_the_adapted_t5(tmp_path):
    keras.utils.set_random_seed(2)
    builder = build_transformer_model(model="t5.1.1", return_keras_model=False, **T5_CONFIG)
    enable_lora(builder.model, rank=4, targets=("query", "value", "output"))
    randomize_adapters(builder.model)
    sources, targets = token_batch(6, seed=3), token_batch(6, 5, seed=4)
    targets[:, 0] = 0
    adapted = builder.model.predict([sources, targets], verbose=0)
    builder.save_pretrained(str(tmp_path))
    hf = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        logits = hf(input_ids=torch_ids(sources), attention_mask=torch_ids(sources != 0),
                    decoder_input_ids=torch_ids(targets)).logits
    theirs = torch.softmax(logits, -1).numpy()
    assert np.abs(theirs - adapted).max() < 1e-4


@pytest.mark.parametrize("model_name", ["bert", "t5"])
def test_keras_file_reloads_in_safe_mode_with_the_adapted_outputs(model_name, tmp_path):
    if model_name == "t5":
        keras.utils.set_random_seed(3)
        model = build_transformer_model(model="t5", **T5_CONFIG)
        enable_lora(model, rank=2)
        inputs = [token_batch(4, seed=5), token_batch(4, 5, seed=6)]
    else:
        model, _, _ = classifier("bert", head_after=False)
        ids = token_batch(4, seed=5)
        inputs = [ids, np.zeros_like(ids)]
    randomize_adapters(model)
    adapted = model.predict(inputs, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)  # safe_mode=True
    np.testing.assert_allclose(reloaded.predict(inputs, verbose=0), adapted, atol=1e-6)


def test_bad_arguments_are_named():
    keras.utils.set_random_seed(0)
    gau = build_transformer_model(model="gau_alpha", **config_for("gau_alpha", ENCODER_CONFIG))
    with pytest.raises(ValueError, match=r"`targets` \['query', 'value'\] name no Dense layer "
                                         r"of the backbone; its Dense layers are named "
                                         r"\['i_dense', 'o_dense'\]"):
        enable_lora(gau, rank=2)
    bert = build_transformer_model(model="bert", **ENCODER_CONFIG)
    with pytest.raises(ValueError, match="`rank` must be an int >= 1; received 0"):
        enable_lora(bert, rank=0)
    with pytest.raises(ValueError, match="`alpha` must be None or a number > 0"):
        enable_lora(bert, rank=2, alpha=-1)
    with pytest.raises(TypeError, match="`targets` must be a non-empty list or tuple"):
        enable_lora(bert, rank=2, targets="query")
    with pytest.raises(ValueError, match="`backbone` must be part of `model`"):
        enable_lora(bert, rank=2, backbone=gau)
    enable_lora(bert, rank=2)
    with pytest.raises(ValueError, match="LoRA is already enabled on"):
        enable_lora(bert, rank=2)
