"""Hostile checkpoints for the loading path: tensors the model does not use are an error
listing them (``strict=False``: a warning) unless the checkpoint holds them legitimately
(heads not asked for, optimizer state); non-float data, wrong shapes and missing variables
are errors naming the tensor; a TF checkpoint folder loads the checkpoint its ``checkpoint``
file names as the latest.
"""

import json
import os
import warnings

import numpy as np
import pytest

from keraformer.checkpoints import read_tf_checkpoint, write_safetensors, write_tf_checkpoint
from keraformer.models import build_transformer_model, load_pretrained

CONFIG = dict(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=24)
T5_CONFIG = dict(vocab_size=30, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2)
IDS = np.array([[5, 6, 7, 0]], "int32")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Google arrays of a 2-layer BERT with pooler, NSP and MLM heads."""
    builder = build_transformer_model(**{**CONFIG, "num_hidden_layers": 2}, with_nsp=True,
                                      with_mlm=True, return_keras_model=False)
    return builder.checkpoint_arrays()


def one_layer(arrays):
    return {k: v for k, v in arrays.items() if "layer_1/" not in k}


def google_dir(tmp_path, arrays, name="bert_model.ckpt"):
    write_tf_checkpoint(arrays, str(tmp_path / name))
    return str(tmp_path / name)


def build(path, strict=True, **options):
    return build_transformer_model(checkpoint_path=path, strict=strict, **CONFIG, **options)


def test_extra_layer_is_an_error_listing_it(full, tmp_path):
    path = google_dir(tmp_path, full)
    with pytest.raises(ValueError, match=r"does not use: \['bert/encoder/layer_1/.*strict=False"):
        build(path)


def test_extra_layer_with_strict_false_warns_and_loads(full, tmp_path):
    path = google_dir(tmp_path, full)
    with pytest.warns(UserWarning, match="bert/encoder/layer_1/"):
        builder = build(path, strict=False, return_keras_model=False)
    np.testing.assert_array_equal(builder.token_embedding.embeddings.numpy(),
                                  full["bert/embeddings/word_embeddings"])


def test_strict_false_reaches_load_pretrained_and_the_builder(full, tmp_path):
    hf, google = tmp_path / "hf", tmp_path / "google"
    build_transformer_model(**CONFIG, return_keras_model=False).save_pretrained(str(hf))
    os.makedirs(google)
    google_dir(google, full)
    with pytest.warns(UserWarning, match="layer_1"):
        load_pretrained(str(hf), return_keras_model=False
                        ).load_weights_from_checkpoint(str(google), strict=False)
    with pytest.raises(ValueError, match="layer_1"):
        load_pretrained(str(hf), return_keras_model=False
                        ).load_weights_from_checkpoint(str(google))
    (google / "config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(ValueError, match="layer_1"):
        load_pretrained(str(google))
    with pytest.warns(UserWarning, match="layer_1"):
        load_pretrained(str(google), strict=False)


@pytest.mark.parametrize("name", ["foo/bar", "bert/encoder/layer_0/attention/self/query/kernelx",
                                  "cls/predictions/transform/dense/kernel_extra"])
def test_unknown_tensor_is_an_error(full, tmp_path, name):
    arrays = {**one_layer(full), name: np.zeros(3, "float32")}
    with pytest.raises(ValueError, match=name):
        build(google_dir(tmp_path, arrays), with_mlm=True, with_nsp=True)


@pytest.mark.parametrize("options", [{}, {"with_pool": True}, {"with_mlm": "linear"},
                                     {"with_nsp": True}])
def test_heads_not_asked_for_are_allowed(full, tmp_path, options):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a warning
        build(google_dir(tmp_path, one_layer(full)), **options)


@pytest.mark.parametrize("slot", ["global_step", "bert/embeddings/word_embeddings/adam_m",
                                  "bert/embeddings/word_embeddings/adam_v",
                                  "bert/pooler/dense/kernel/Adam_1",
                                  "bad_steps/good_steps", "beta1_power"])
def test_optimizer_state_is_allowed(full, tmp_path, slot):
    arrays = {**one_layer(full), slot: np.zeros(2, "float32")}
    build(google_dir(tmp_path, arrays))


def test_nsp_head_loads_in_google_layout(full, tmp_path):
    builder = build(google_dir(tmp_path, one_layer(full)), with_nsp=True,
                    return_keras_model=False)
    np.testing.assert_array_equal(builder.nsp.kernel.numpy(),
                                  full["cls/seq_relationship/output_weights"].T)
    probs = np.asarray(builder.model([IDS, np.zeros_like(IDS)]))
    assert probs.shape == (1, 2)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool", "uint8"])
def test_integer_or_boolean_data_for_a_float_variable(full, tmp_path, dtype):
    arrays = one_layer(full)
    name = "bert/embeddings/LayerNorm/gamma"
    arrays[name] = np.ones(arrays[name].shape, dtype)
    with pytest.raises(ValueError, match=rf"{name}.*{dtype}"):
        build(google_dir(tmp_path, arrays))


def test_integer_data_in_safetensors(tmp_path):
    builder = build_transformer_model(**CONFIG, return_keras_model=False)
    builder.save_pretrained(str(tmp_path))
    arrays = {k: v for k, v in builder.hf_arrays().items()}
    arrays["bert.embeddings.LayerNorm.weight"] = np.ones(16, "int64")
    write_safetensors(str(tmp_path / "model.safetensors"), arrays)
    with pytest.raises(ValueError, match="bert/embeddings/LayerNorm/gamma.*int64"):
        load_pretrained(str(tmp_path))


def test_wrong_shape_names_the_variable_and_both_shapes(full, tmp_path):
    arrays = one_layer(full)
    arrays["bert/pooler/dense/bias"] = np.zeros(15, "float32")
    with pytest.raises(ValueError, match=r"bert/pooler/dense/bias.*\(15,\).*\(16,\)"):
        build(google_dir(tmp_path, arrays), with_pool=True)


def test_missing_variable_is_named(full, tmp_path):
    arrays = {k: v for k, v in one_layer(full).items() if "intermediate/dense/bias" not in k}
    with pytest.raises(ValueError, match="missing.*intermediate/dense/bias"):
        build(google_dir(tmp_path, arrays))


def test_t5_extra_decoder_layer_is_an_error(tmp_path):
    two = build_transformer_model(model="t5", **{**T5_CONFIG, "num_layers": 2},
                                  return_keras_model=False)
    arrays = {k: v for k, v in two.checkpoint_arrays().items()
              if not k.startswith("encoder/block_001")}
    with pytest.raises(ValueError, match=r"does not use: \['decoder/block_001/"):
        build_transformer_model(model="t5", checkpoint_path=google_dir(tmp_path, arrays),
                                **T5_CONFIG)


def test_t5_adafactor_slots_are_allowed(tmp_path):
    t5 = build_transformer_model(model="t5", **T5_CONFIG, return_keras_model=False)
    arrays = t5.checkpoint_arrays()
    arrays["shared/embedding_slot_vc"] = np.zeros(30, "float32")
    arrays["shared/embedding_slot_vr"] = np.zeros(8, "float32")
    build_transformer_model(model="t5", checkpoint_path=google_dir(tmp_path, arrays),
                            **T5_CONFIG)


# -- TF checkpoint folders ---------------------------------------------------------------------
def checkpoint_state(folder, latest):
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{latest}"\n'
                                       f'all_model_checkpoint_paths: "model.ckpt-1"\n'
                                       f'all_model_checkpoint_paths: "model.ckpt-2"\n')


@pytest.mark.parametrize("latest", ["model.ckpt-1", "model.ckpt-2"])
def test_checkpoint_file_picks_the_latest(full, tmp_path, latest):
    arrays = one_layer(full)
    for step in (1, 2):
        changed = dict(arrays)
        changed["bert/embeddings/LayerNorm/beta"] = np.full(16, float(step), "float32")
        write_tf_checkpoint(changed, str(tmp_path / f"model.ckpt-{step}"))
    checkpoint_state(tmp_path, latest)
    builder = build(str(tmp_path), return_keras_model=False)
    np.testing.assert_array_equal(builder.embedding_norm.beta.numpy(),
                                  np.full(16, float(latest[-1])))
    assert read_tf_checkpoint(str(tmp_path))["bert/embeddings/LayerNorm/beta"][0] == \
        float(latest[-1])


def test_several_checkpoints_without_state_file_are_an_error(full, tmp_path):
    for step in (1, 2):
        write_tf_checkpoint(one_layer(full), str(tmp_path / f"model.ckpt-{step}"))
    os.remove(tmp_path / "checkpoint")  # the writer names the last one as the latest
    with pytest.raises(ValueError, match=r"several TF checkpoints.*model.ckpt-1.*model.ckpt-2"):
        build(str(tmp_path))


def test_state_file_naming_a_missing_checkpoint(full, tmp_path):
    write_tf_checkpoint(one_layer(full), str(tmp_path / "model.ckpt-1"))
    checkpoint_state(tmp_path, "model.ckpt-9")
    with pytest.raises(FileNotFoundError, match="model.ckpt-9"):
        build(str(tmp_path))


def test_state_file_without_a_latest_checkpoint(full, tmp_path):
    write_tf_checkpoint(one_layer(full), str(tmp_path / "model.ckpt-1"))
    (tmp_path / "checkpoint").write_text("garbage\n")
    with pytest.raises(ValueError, match="model_checkpoint_path"):
        build(str(tmp_path))
    assert os.path.exists(tmp_path / "model.ckpt-1.index")


def test_load_pretrained_of_a_file_names_its_directory(tmp_path):
    """``load_pretrained`` on the weights file (or config.json) itself: the error says a
    directory is expected and which one to pass."""
    builder = build_transformer_model(**CONFIG, return_keras_model=False)
    builder.save_pretrained(str(tmp_path))
    for name in ("model.safetensors", "config.json"):
        with pytest.raises(FileNotFoundError,
                           match=rf"`path` must be a checkpoint directory; '.*{name}' is a "
                                 rf"file \(pass the directory that holds it"):
            load_pretrained(str(tmp_path / name))
    np.testing.assert_array_equal(load_pretrained(str(tmp_path)).predict(
        [IDS, np.zeros_like(IDS)], verbose=0), builder.model.predict([IDS, np.zeros_like(IDS)],
                                                                     verbose=0))
