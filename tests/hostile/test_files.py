"""Hostile files: configs that are not JSON, a keraformer.json without its keys, an empty
SentencePiece model, an empty save path and read-only targets are refused naming the file or
the argument (they gave a bare ``JSONDecodeError``, ``KeyError: 'options'``, ``INTERNAL: unk
is not defined``, ``FileNotFoundError: ''``, or silently replaced a read-only file)."""

import json
import os
import stat

import numpy as np
import pytest

from keraformer import checkpoints
from keraformer.checks import ReadOnlyTargetError
from keraformer.models import build_transformer_model, load_pretrained
from keraformer.tokenizers import SpTokenizer
from tests.references import train_sentencepiece

CONFIG = dict(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=16, max_position_embeddings=16, type_vocab_size=2)


@pytest.fixture(scope="module")
def builder():
    return build_transformer_model(model="bert", return_keras_model=False, **CONFIG)


# -- configs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["{not json", "", '{"vocab_size": 30,}', "\x89PNG\x00\xff"],
                         ids=["broken", "empty", "trailing-comma", "binary"])
def test_config_that_is_not_json_names_the_file(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=f"`config_path` '{path}' is not a JSON config file"):
        build_transformer_model(str(path), model="bert")


def test_hf_directory_with_a_broken_config_names_the_file(tmp_path, builder):
    builder.save_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "bert", ')
    with pytest.raises(ValueError, match="config.json' is not a JSON config file"):
        load_pretrained(str(tmp_path))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("options"), r"lacks the key 'options'"),
    (lambda d: d.pop("model"), r"lacks the key 'model'"),
    (lambda d: d.pop("config"), r"lacks the key 'config'"),
    (lambda d: d.update(options=["with_pool"]), r"'options' must be a dict; received list"),
    (lambda d: d.update(model=3), r"'model' must be a str; received int"),
], ids=["no-options", "no-model", "no-config", "options-list", "model-int"])
def test_keraformer_description_without_its_keys_names_the_file_and_key(tmp_path, builder,
                                                                        change, message):
    builder.save(str(tmp_path))
    path = tmp_path / checkpoints.OWN_CONFIG
    description = json.loads(path.read_text())
    change(description)
    path.write_text(json.dumps(description))
    with pytest.raises(ValueError, match=f"keraformer.json'.*{message}"):
        load_pretrained(str(tmp_path))


# -- SentencePiece models ------------------------------------------------------------------------

def test_zero_byte_sentencepiece_model_names_the_file(tmp_path):
    path = tmp_path / "empty.model"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"`model_path` must be a SentencePiece \.model file; "
                                         r".*empty\.model' is empty \(0 bytes\)"):
        SpTokenizer(str(path))


def test_sentencepiece_model_that_is_not_one_names_the_file(tmp_path):
    path = tmp_path / "noise.model"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"`model_path` '.*noise\.model' is not a "
                                         r"SentencePiece model"):
        SpTokenizer(str(path))


def test_a_real_sentencepiece_model_still_loads(tmp_path):
    path = train_sentencepiece(str(tmp_path), ["a b c d e f g h"] * 20, 12)
    tokenizer = SpTokenizer(path, token_start=None, token_end="</s>")
    assert tokenizer.encode("a b")[0][-1] == tokenizer.eos_id


# -- empty save paths --------------------------------------------------------------------------

@pytest.mark.parametrize("save, name", [
    (lambda b: b.save_pretrained(""), "directory"),
    (lambda b: b.save(""), "directory"),
    (lambda b: b.save_weights_as_checkpoint(""), "path"),
    (lambda b: checkpoints.write_safetensors("", {"a": np.zeros(2, "float32")}), "path"),
    (lambda b: b.save_pretrained("   "), "directory"),
], ids=["save_pretrained", "save", "save_weights_as_checkpoint", "write_safetensors",
        "blank"])
def test_empty_save_path_is_refused_by_name(builder, save, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may appear here either
    with pytest.raises(ValueError, match=f"`{name}` must be a non-empty path"):
        save(builder)
    assert os.listdir(tmp_path) == []


def test_checkpoint_prefix_that_is_a_folder_is_refused(builder, tmp_path):
    with pytest.raises(ValueError, match="`path` must be a checkpoint prefix"):
        builder.save_weights_as_checkpoint(str(tmp_path) + "/")


# -- read-only targets ---------------------------------------------------------------------------

def read_only(path):
    os.chmod(path, 0o444)
    return path.read_bytes()


@pytest.mark.parametrize("target, save", [
    ("config.json", lambda b, d: b.save_pretrained(d)),
    ("model.safetensors", lambda b, d: b.save_pretrained(d)),
    ("keraformer.json", lambda b, d: b.save(d)),
    ("model.alt.weights.h5", lambda b, d: b.save(d)),
    ("checkpoint", lambda b, d: b.save_weights_as_checkpoint(os.path.join(d, "m.ckpt"))),
    ("w.safetensors", lambda b, d: checkpoints.write_safetensors(
        os.path.join(d, "w.safetensors"), {"a": np.ones(2, "float32")})),
], ids=["hf-config", "hf-weights", "own-description", "own-other-weights", "tf-state",
        "safetensors"])
def test_read_only_target_is_refused_naming_it_and_kept(builder, tmp_path, target, save):
    """Each writer over a directory whose target file is read-only (mode 0444; the test runs
    the check on mode bits, so it holds for root too): ``ReadOnlyTargetError`` (a
    ``PermissionError`` and a ``ValueError``) naming the file; the file keeps its bytes and
    mode, and no staging folder is left."""
    folder = str(tmp_path)
    save(builder, folder)  # a first save, then make its target read-only
    path = tmp_path / target
    if not path.exists():
        path.write_text("kept")
    before = read_only(path)
    with pytest.raises(ReadOnlyTargetError, match=f"cannot save over '{path}': the file is "
                                                  f"read-only"):
        save(builder, folder)
    assert path.read_bytes() == before
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
    assert not [n for n in os.listdir(folder) if n.startswith(checkpoints.STAGING_PREFIX)]


def test_a_writable_target_keeps_its_mode_bits(builder, tmp_path):
    builder.save_pretrained(str(tmp_path))
    os.chmod(tmp_path / "config.json", 0o640)
    builder.save_pretrained(str(tmp_path))
    assert stat.S_IMODE(os.stat(tmp_path / "config.json").st_mode) == 0o640
    assert load_pretrained(str(tmp_path)) is not None
