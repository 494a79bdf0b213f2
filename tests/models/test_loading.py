"""The one loading path (``keraformer.models.loading``): format detection, refusals, and
builders constructed directly.

Checked: a builder made as ``BERT(config)`` / ``T5(config)`` and built by hand saves and
reloads (same outputs, exactly); a directory holding two formats is an error naming both; a
Hugging Face directory with ``model.safetensors`` beside ``tf_model.h5`` and
``pytorch_model.bin`` (as on the hub) reads the safetensors; pickles are refused by name;
options of another family are refused by name.
"""

import json
import os

import h5py
import numpy as np
import pytest

from keraformer.checkpoints import write_tf_checkpoint
from keraformer.models import build_transformer_model, load_pretrained
from keraformer.models.bert import BERT
from keraformer.models.loading import detect
from keraformer.models.roformer import GAUAlpha
from keraformer.models.t5 import T5
from tests.references import config_for

CONFIG = dict(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=24, attention_key_size=8)
T5_CONFIG = dict(vocab_size=30, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2)
IDS = np.array([[5, 6, 7, 0], [8, 9, 0, 0]], "int32")


def encoder_outputs(model):
    return np.asarray(model([IDS, np.zeros_like(IDS)]))


@pytest.mark.parametrize("cls", [BERT, GAUAlpha])
def test_directly_constructed_encoder_saves_and_reloads(cls, tmp_path):
    builder = cls(config_for(cls.model_name, CONFIG), application="unilm", with_mlm="linear")
    builder.build()
    builder.save(str(tmp_path))
    again = load_pretrained(str(tmp_path), return_keras_model=False)
    assert type(again) is cls and again.application == "unilm"
    np.testing.assert_array_equal(encoder_outputs(again.model), encoder_outputs(builder.model))


def test_directly_constructed_t5_saves_and_reloads(tmp_path):
    builder = T5(T5_CONFIG)
    builder.build()
    builder.save(str(tmp_path))
    again = load_pretrained(str(tmp_path), return_keras_model=False)
    np.testing.assert_array_equal(np.asarray(again.model([IDS, IDS])),
                                  np.asarray(builder.model([IDS, IDS])))


def test_save_before_build_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="build"):
        BERT(CONFIG).save(str(tmp_path))


@pytest.fixture
def bert(tmp_path):
    return build_transformer_model(**CONFIG, return_keras_model=False)


def test_two_formats_in_one_directory_are_an_error_naming_both(bert, tmp_path):
    bert.save_pretrained(str(tmp_path))
    bert.save_weights_as_checkpoint(str(tmp_path / "bert_model.ckpt"))
    with pytest.raises(ValueError, match="two formats.*model.safetensors.*bert_model.ckpt"):
        load_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="two formats"):
        build_transformer_model(checkpoint_path=str(tmp_path), **CONFIG)


def test_own_save_beside_a_hugging_face_directory_is_an_error(bert, tmp_path):
    bert.save(str(tmp_path))
    bert.save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="keraformer.*model.safetensors"):
        load_pretrained(str(tmp_path))


def test_hub_directory_with_several_weight_files_reads_safetensors(bert, tmp_path):
    bert.save_pretrained(str(tmp_path))
    with h5py.File(tmp_path / "tf_model.h5", "w") as f:  # would not map if it were read
        f["garbage:0"] = np.zeros(3)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    assert detect(str(tmp_path)).kind == "safetensors"
    np.testing.assert_array_equal(encoder_outputs(load_pretrained(str(tmp_path))),
                                  encoder_outputs(bert.model))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth"])
def test_pickle_only_directory_is_refused(name, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / name).write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match=f"{name}.*pickle"):
        load_pretrained(str(tmp_path))


@pytest.mark.parametrize("name", ["model.bin", "lightning.ckpt", "x.pkl"])
def test_pickle_file_is_refused(name, tmp_path):
    (tmp_path / name).write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="pickle"):
        build_transformer_model(checkpoint_path=str(tmp_path / name), **CONFIG)


def test_unknown_file_and_missing_path(tmp_path):
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="weights.npz.*unknown checkpoint format"):
        detect(str(tmp_path / "weights.npz"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        detect(str(tmp_path / "nowhere"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="no weights found"):
        detect(str(tmp_path / "empty"))


@pytest.mark.parametrize("cls, option", [(BERT, {"attention": "linear"}),
                                         (BERT, {"rotary_base": 500}),
                                         (GAUAlpha, {"hierarchical_position": True}),
                                         (GAUAlpha, {"max_position": 1024})])
def test_option_of_another_family_is_refused(cls, option):
    (name,) = option
    with pytest.raises(ValueError, match=name):
        cls(config_for(cls.model_name, CONFIG), **option)


@pytest.mark.parametrize("model, cls", [("bert", "BERT"), ("roformer", "RoFormer"),
                                        ("roformer_v2", "RoFormerV2"),
                                        ("gau_alpha", "GAUAlpha"), ("t5", "T5"),
                                        ("t5.1.1", "T5v11"), ("mt5", "MT5")])
def test_google_directory_model_is_told_from_variable_names(model, cls, tmp_path):
    t5 = model in ("t5", "t5.1.1", "mt5")
    config = T5_CONFIG if t5 else config_for(model, CONFIG)
    builder = build_transformer_model(model=model, **config, return_keras_model=False)
    builder.save_weights_as_checkpoint(str(tmp_path / "model.ckpt"))
    (tmp_path / "bert_config.json").write_text(json.dumps(config))
    again = load_pretrained(str(tmp_path), return_keras_model=False)
    assert type(again).__name__ == cls
    inputs = [IDS, IDS] if t5 else [IDS, np.zeros_like(IDS)]
    np.testing.assert_array_equal(np.asarray(again.model(inputs)),
                                  np.asarray(builder.model(inputs)))


def test_google_directory_of_an_unknown_model_asks_for_model(tmp_path):
    write_tf_checkpoint({"electra/embeddings/word_embeddings": np.zeros((3, 2), "float32")},
                        str(tmp_path / "model.ckpt"))
    (tmp_path / "bert_config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(ValueError, match="cannot tell the model.*pass model="):
        load_pretrained(str(tmp_path))
