"""keraformer.checkpoints: the safetensors reader against the ``safetensors`` package, reads as
memory maps, and the atomic writer's contract (commit order, cleanup, permissions)."""

import json
import mmap
import os
import subprocess
import sys
import time

import ml_dtypes
import numpy as np
import pytest

from keraformer import checkpoints


def every_dtype():
    rng = np.random.default_rng(3)
    arrays = {code: rng.normal(size=(3, 2)).astype(dtype) for code, dtype in {
        "F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64", "I32": "int32",
        "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16",
        "U8": "uint8"}.items()}
    arrays.update(BOOL=rng.normal(size=5) > 0, scalar=np.array(2.5, "float32"),
                  empty=np.zeros((0, 3), "int32"), BF16=np.arange(4, dtype=ml_dtypes.bfloat16))
    return arrays


def test_read_safetensors_matches_the_safetensors_package(tmp_path):
    """Every dtype the format has (and a scalar and an empty tensor), written by the
    ``safetensors`` package and read by ours; bfloat16 and float8 come back as float32."""
    from safetensors.numpy import save_file
    arrays = every_dtype()
    path = str(tmp_path / "all.safetensors")
    save_file(arrays, path, metadata={"format": "pt"})
    ours = checkpoints.read_safetensors(path)
    assert set(ours) == set(arrays)
    for name, value in arrays.items():
        widened = name in ("BF16", "F8_E4M3", "F8_E5M2")
        assert ours[name].dtype == (np.float32 if widened else value.dtype), name
        np.testing.assert_array_equal(ours[name], value.astype("float32") if widened else value)
    assert checkpoints.read_safetensors_metadata(path) == {"format": "pt"}


def test_float8_tensors_read_as_float32(tmp_path):
    """The ``safetensors`` package's NumPy API has no float8, so the file is built here from
    the formats' bit patterns (E4M3FN: 0.5 = 0x30, -2 = 0xC0, 448 = 0x7E; E5M2: 0.25 = 0x34,
    -3 = 0xC2, 57344 = 0x7B)."""
    header = {"a": {"dtype": "F8_E4M3", "shape": [3], "data_offsets": [0, 3]},
              "b": {"dtype": "F8_E5M2", "shape": [3], "data_offsets": [3, 6]}}
    raw = json.dumps(header).encode()
    path = tmp_path / "f8.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes([0x30, 0xC0, 0x7E,
                                                                      0x34, 0xC2, 0x7B]))
    read = checkpoints.read_safetensors(str(path))
    np.testing.assert_array_equal(read["a"], np.array([0.5, -2, 448], "float32"))
    np.testing.assert_array_equal(read["b"], np.array([0.25, -3, 57344], "float32"))
    assert read["a"].dtype == read["b"].dtype == np.float32
    again = checkpoints.write_safetensors(str(tmp_path / "again.safetensors"), {
        "a": read["a"].astype(ml_dtypes.float8_e4m3fn)})
    assert open(again, "rb").read()[-3:] == bytes([0x30, 0xC0, 0x7E])


def test_our_writer_is_read_back_by_the_safetensors_package(tmp_path):
    from safetensors.numpy import load_file
    arrays = every_dtype()
    path = checkpoints.write_safetensors(str(tmp_path / "all.safetensors"), arrays)
    theirs = load_file(path)
    for name, value in arrays.items():
        assert theirs[name].dtype == value.dtype, name
        np.testing.assert_array_equal(theirs[name], value)


def mapped_base(array):
    while array is not None and not isinstance(array, mmap.mmap):
        array = array.obj if isinstance(array, memoryview) else array.base
    return array


def test_tensors_are_read_only_views_of_a_memory_map(tmp_path):
    arrays = {"kernel": np.arange(12, dtype="float32").reshape(3, 4),
              "bias": np.ones(4, "float64")}
    path = checkpoints.write_safetensors(str(tmp_path / "m.safetensors"), arrays)
    read = checkpoints.read_safetensors(path)
    for name, value in read.items():
        assert isinstance(mapped_base(value), mmap.mmap), name
        assert not value.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            value[...] = 0
    assert mapped_base(read["kernel"]) is mapped_base(read["bias"])  # one map per file


def test_arrays_read_before_a_rewrite_keep_their_values(tmp_path):
    """An atomic rewrite replaces the file (a new inode): maps of the old one stay valid."""
    path = str(tmp_path / "m.safetensors")
    checkpoints.write_safetensors(path, {"w": np.full(1000, 1.0, "float32")})
    before = checkpoints.read_safetensors(path)
    checkpoints.write_safetensors(path, {"w": np.full(1000, 2.0, "float32")})
    np.testing.assert_array_equal(before["w"], 1.0)
    np.testing.assert_array_equal(checkpoints.read_safetensors(path)["w"], 2.0)


def test_writers_rename_the_describing_file_last(tmp_path, monkeypatch):
    """The commit order: weights before their config, TF data before its index, the
    ``checkpoint`` state file last, own weights before ``keraformer.json``."""
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(os.path.basename(dst)),
                                                         real_replace(src, dst)))
    arrays = {"w": np.ones(3, "float32")}
    checkpoints.write_hf_directory(str(tmp_path / "hf"), arrays, {"model_type": "bert"})
    checkpoints.write_tf_checkpoint(arrays, str(tmp_path / "tf" / "model.ckpt"))
    checkpoints.write_keraformer_directory(str(tmp_path / "own"), {"model": "bert"},
                                           lambda path: open(path, "wb").close())
    assert renamed == ["model.safetensors", "config.json",
                       "model.ckpt.data-00000-of-00001", "model.ckpt.index", "checkpoint",
                       "model.weights.h5", "keraformer.json"]


def test_tf_checkpoint_state_file_names_the_new_prefix(tmp_path):
    import tensorflow as tf
    prefix = checkpoints.write_tf_checkpoint({"w": np.ones(2, "float32")},
                                             str(tmp_path / "bert_model.ckpt"))
    assert tf.train.latest_checkpoint(str(tmp_path)) == prefix
    np.testing.assert_array_equal(checkpoints.read_tf_checkpoint(str(tmp_path))["w"], 1.0)


def test_atomic_write_cleans_up_and_changes_nothing_on_error(tmp_path):
    (tmp_path / "config.json").write_text("old")
    with pytest.raises(RuntimeError, match="did not produce 'model.safetensors'"):
        with checkpoints.atomic_write(str(tmp_path), ["config.json", "model.safetensors"]) as d:
            (tmp_path / d / "config.json").write_text("new")
    assert os.listdir(tmp_path) == ["config.json"]
    assert (tmp_path / "config.json").read_text() == "old"


@pytest.mark.parametrize("name", ["../config.json", "sub/config.json", "", ".."])
def test_atomic_write_takes_plain_names_only(name, tmp_path):
    with pytest.raises(ValueError, match="`names` must be plain file names"):
        with checkpoints.atomic_write(str(tmp_path), [name]):
            pass


def test_atomic_write_refuses_to_replace_a_directory(tmp_path):
    (tmp_path / "config.json").mkdir()
    with pytest.raises(ValueError, match="config.json'.*is a directory"):
        with checkpoints.atomic_file(str(tmp_path / "config.json"), "w") as f:
            f.write("{}")


def test_saved_files_get_the_usual_permissions(tmp_path):
    """Staged files are created like any new file (mode 0666 less the umask), not with the
    private 0600 of temporary files."""
    umask = os.umask(0o022)
    os.umask(umask)
    checkpoints.write_hf_directory(str(tmp_path), {"w": np.ones(2, "float32")}, {})
    for name in ("config.json", "model.safetensors"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text()) == {}


def test_a_save_removes_the_staging_folders_of_dead_saves_only(tmp_path):
    """The rule of ``remove_stale_staging``: a staging folder of this host whose process is
    gone is removed by the next successful save; one of a live process (this one, a running
    child) is kept; one whose owner cannot be checked (another host, the old unnamed form) is
    removed only when nothing in it changed for 24 hours; symlinks and files are left."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    prefix, host = checkpoints.STAGING_PREFIX, checkpoints.host_name()
    old = time.time() - 25 * 3600
    folders = {  # name: (removed?, age the folder and its file get: None = now)
        f"{prefix}{host}+{dead.pid}+a1": (True, None),
        f"{prefix}{host}+{live.pid}+a2": (False, old),
        f"{prefix}{host}+{os.getpid()}+a3": (False, old),
        f"{prefix}other-host+{dead.pid}+a4": (False, None),
        f"{prefix}other-host+{live.pid}+a5": (True, old),
        f"{prefix}x7k2m9qa": (False, None),  # the old, unnamed form
        f"{prefix}p3v8n1zd": (True, old),
    }
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    try:
        for name, (_, age) in folders.items():
            (directory / name).mkdir()
            (directory / name / "model.safetensors").write_bytes(b"half a file")
            if age is not None:
                for path in (directory / name / "model.safetensors", directory / name):
                    os.utime(path, (age, age))
        recent = directory / f"{prefix}k4j5h6g7"  # old folder, one file still being written
        recent.mkdir()
        (recent / "a").write_text("")
        os.utime(recent / "a", (old, old))
        (recent / "b").write_text("")
        os.utime(recent, (old, old))
        os.symlink(outside, directory / f"{prefix}{host}+{dead.pid}+link")
        os.utime(outside, (old, old))
        (directory / f"{prefix}{host}+{dead.pid}+file").write_text("not a folder")
        before = set(os.listdir(directory))
        checkpoints.write_safetensors(str(directory / "model.safetensors"),
                                      {"w": np.ones(2, "float32")})
        removed = {name for name, (gone, _) in folders.items() if gone}
        assert set(os.listdir(directory)) == before - removed | {"model.safetensors"}
        assert (outside / "precious").read_text() == "keep"
        assert live.poll() is None  # the live owner ran through the whole save
    finally:
        live.kill()
        live.wait()


def test_a_failed_save_removes_no_other_staging_folder(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{checkpoints.STAGING_PREFIX}{checkpoints.host_name()}+{dead.pid}+a1"
    stale.mkdir()
    with pytest.raises(RuntimeError, match="did not produce"):
        with checkpoints.atomic_write(str(tmp_path), ["config.json"]):
            pass
    assert os.listdir(tmp_path) == [stale.name]
