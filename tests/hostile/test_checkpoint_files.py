"""Hostile and damaged checkpoint files: every one refused with an error naming the file and,
where one is involved, the tensor — before any tensor is mapped or allocated, and without
blocking on a FIFO.

Safetensors files are built byte by byte here (8-byte little-endian header length, JSON
header, data), so each case breaks exactly one rule of the format. Sharded indexes, HDF5
(``tf_model.h5``) files and TF checkpoints are damaged the ways a download, a full disk or a
hand-made archive damages them.
"""

import contextlib
import json
import os
import shutil
import signal
import struct

import numpy as np
import pytest

from keraformer import checkpoints


@contextlib.contextmanager
def deadline(seconds=10):
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer appears)."""
    def expire(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def raw_safetensors(path, header, data=b"", length=None):
    """A safetensors file from a header (a dict, or the raw bytes) and data bytes;
    ``length`` overrides the header length field."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def expect_error(path, *fragments, error=ValueError, read=checkpoints.read_safetensors):
    """``read(path)`` raises ``error`` whose message names ``path`` and each fragment."""
    with deadline(), pytest.raises(error) as caught:
        read(str(path))
    message = str(caught.value)
    for fragment in (str(path),) + fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


EIGHT = bytes(8)
# id: (header, data, length override, words the error must contain besides the file name)
SAFETENSORS_CASES = {
    "empty-file": (None, b"", None, ["truncated"]),
    "five-bytes": (None, b"\x01\x02\x03\x04\x05", None, ["truncated"]),
    "header-longer-than-file": ({"w": entry()}, EIGHT, 10_000, ["header length 10000"]),
    "header-length-huge": ({"w": entry()}, EIGHT, 2**64 - 1, ["header length"]),
    "header-length-short": ({"w": entry()}, EIGHT, 60, ["not valid JSON"]),
    "header-not-utf8": (b"\xff\xfe{}", b"", None, ["UTF-8"]),
    "header-not-json": (b"{'w': 1}", b"", None, ["not valid JSON"]),
    "header-nested-too-deep": (b'{"w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"", None,
                               ["nests JSON deeper"]),
    "header-json-list": ([entry()], EIGHT, None, ["JSON object", "list"]),
    "header-json-string": ("weights", b"", None, ["JSON object", "str"]),
    "header-json-null": (b"null", b"", None, ["JSON object", "NoneType"]),
    "header-json-number": (b"8", b"", None, ["JSON object", "int"]),
    "duplicate-tensor-name": (
        b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', EIGHT, None,
        ["repeats the key 'w'"]),
    "duplicate-key-inside-entry": (
        b'{"w":{"dtype":"F32","dtype":"I32","shape":[2],"data_offsets":[0,8]}}', EIGHT, None,
        ["repeats the key 'dtype'"]),
    "metadata-not-object": ({"__metadata__": ["format", "pt"], "w": entry()}, EIGHT, None,
                            ["'__metadata__'"]),
    "metadata-value-not-string": ({"__metadata__": {"format": 1}, "w": entry()}, EIGHT, None,
                                  ["'__metadata__'"]),
    "entry-not-object": ({"w": [0, 8]}, EIGHT, None, ["tensor 'w'", "object"]),
    "entry-missing-dtype": ({"w": {"shape": [2], "data_offsets": [0, 8]}}, EIGHT, None,
                            ["tensor 'w'", "exactly the keys"]),
    "entry-extra-key": ({"w": {**entry(), "scale": 2}}, EIGHT, None,
                        ["tensor 'w'", "'scale'"]),
    "empty-tensor-name": ({"": entry()}, EIGHT, None, ["empty name"]),
    "unknown-dtype": ({"w": entry(dtype="F128")}, EIGHT, None, ["tensor 'w'", "'F128'"]),
    "complex-dtype": ({"w": entry(dtype="C64", shape=(1,))}, EIGHT, None,
                      ["tensor 'w'", "'C64'"]),
    "dtype-not-string": ({"w": {**entry(), "dtype": 4}}, EIGHT, None, ["tensor 'w'", "dtype 4"]),
    "shape-not-list": ({"w": {**entry(), "shape": 2}}, EIGHT, None, ["tensor 'w'", "shape"]),
    "shape-negative": ({"w": entry(shape=(-1, 2))}, EIGHT, None, ["tensor 'w'", "[-1, 2]"]),
    "shape-float": ({"w": entry(shape=(2.0,))}, EIGHT, None, ["tensor 'w'", "[2.0]"]),
    "shape-bool": ({"w": entry(shape=(True, 2))}, EIGHT, None, ["tensor 'w'", "[True, 2]"]),
    "offsets-negative": ({"w": entry(offsets=(-8, 0))}, EIGHT, None,
                         ["tensor 'w'", "[-8, 0]"]),
    "offsets-three": ({"w": entry(offsets=(0, 4, 8))}, EIGHT, None,
                      ["tensor 'w'", "[0, 4, 8]"]),
    "offsets-reversed": ({"w": entry(offsets=(8, 0))}, EIGHT, None, ["tensor 'w'", "[8, 0]"]),
    "offsets-float": ({"w": entry(offsets=(0, 8.0))}, EIGHT, None, ["tensor 'w'", "[0, 8.0]"]),
    "offsets-string": ({"w": {**entry(), "data_offsets": "0:8"}}, EIGHT, None,
                       ["tensor 'w'", "'0:8'"]),
    "offsets-past-end": ({"w": entry(shape=(4,), offsets=(0, 16))}, EIGHT, None,
                         ["tensor 'w'", "bytes 0..16 of a data area of 8"]),
    "offsets-far-past-end": ({"w": entry(shape=(2,), offsets=(2**40, 2**40 + 8))}, EIGHT, None,
                             ["tensor 'w'", "data area of 8"]),
    "size-mismatch": ({"w": entry(shape=(3,), offsets=(0, 8))}, EIGHT, None,
                      ["tensor 'w'", "needs 12 bytes", "span 8"]),
    "size-mismatch-bf16": ({"w": entry(dtype="BF16", shape=(2,), offsets=(0, 8))}, EIGHT, None,
                           ["tensor 'w'", "needs 4 bytes"]),
    "overlapping": ({"a": entry(offsets=(0, 8)), "b": entry(offsets=(4, 12))}, bytes(12), None,
                    ["tensor 'b' overlaps tensor 'a'"]),
    "same-bytes-twice": ({"a": entry(), "b": entry()}, EIGHT, None, ["overlaps"]),
    "hole-between": ({"a": entry(shape=(1,), offsets=(0, 4)), "b": entry(offsets=(8, 16))},
                     bytes(16), None, ["bytes 4..8 before tensor 'b'", "no tensor"]),
    "hole-before-first": ({"a": entry(offsets=(4, 12))}, bytes(12), None,
                          ["bytes 0..4 before tensor 'a'"]),
    "trailing-bytes": ({"w": entry()}, bytes(12), None, ["4 bytes after tensor 'w'"]),
    "truncated-data": ({"a": entry(), "b": entry(shape=(4,), offsets=(8, 24))}, bytes(12), None,
                       ["tensor 'b'", "data area of 12"]),
}


@pytest.mark.parametrize("case", list(SAFETENSORS_CASES))
def test_hostile_safetensors_header(case, tmp_path):
    header, data, length, fragments = SAFETENSORS_CASES[case]
    path = tmp_path / f"{case}.safetensors"
    if header is None:
        path.write_bytes(data)
    else:
        raw_safetensors(path, header, data, length)
    expect_error(path, *fragments)


def test_header_over_the_format_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.safetensors"
    length = checkpoints.MAX_HEADER_BYTES + 8
    with open(path, "wb") as f:  # sparse: the header is never read, so never allocated
        f.write(struct.pack("<Q", length))
        f.truncate(8 + length)
    expect_error(path, f"header length {length}", "limit")


def test_a_valid_file_cut_anywhere_is_refused(tmp_path):
    arrays = {"a": np.arange(6, dtype="float32").reshape(2, 3), "b": np.ones(5, "int64")}
    whole = tmp_path / "whole.safetensors"
    checkpoints.write_safetensors(str(whole), arrays)
    content = whole.read_bytes()
    for cut in (0, 7, 8, 30, len(content) - 41, len(content) - 1):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(content[:cut])
        expect_error(path)


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_not_a_regular_file_is_refused_without_opening_it(kind, tmp_path):
    path = tmp_path / "model.safetensors"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path = "/dev/zero"
    expect_error(path, {"fifo": "a FIFO", "directory": "a directory",
                        "device": "a character device"}[kind])


def test_missing_file_is_named(tmp_path):
    expect_error(tmp_path / "absent.safetensors", error=FileNotFoundError)


# --- sharded indexes --------------------------------------------------------------------

def sharded(folder, shards, weight_map=None):
    """Write shards ``{file: {tensor: array}}`` and an index (``weight_map`` defaults to
    the true one); return the index path."""
    folder.mkdir(exist_ok=True)
    true_map = {}
    for shard, arrays in shards.items():
        checkpoints.write_safetensors(str(folder / shard), arrays)
        true_map.update({name: shard for name in arrays})
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map or true_map}))
    return index


A = {"a": np.ones(3, "float32")}
B = {"b": np.zeros((2, 2), "float16")}
TWO_SHARDS = {"model-00001-of-00002.safetensors": A, "model-00002-of-00002.safetensors": B}


def test_valid_sharded_index_loads(tmp_path):
    arrays = checkpoints.read_sharded_safetensors(str(sharded(tmp_path / "m", TWO_SHARDS)))
    assert set(arrays) == {"a", "b"}
    np.testing.assert_array_equal(arrays["b"], B["b"])


@pytest.mark.parametrize("text, fragment", [
    ("{'weight_map': {}}", "not valid JSON"),
    ("[]", "'weight_map' object"),
    ('{"metadata": {}}', "'weight_map' object"),
    ('{"weight_map": ["a", "b"]}', "'weight_map' object"),
    ('{"weight_map": {"a": "x.safetensors", "a": "y.safetensors"}}', "repeats the key 'a'"),
    ('{"weight_map": {"a": 3}}', "shard 3"),
    ('{"weight_map": {"a": ""}}', "shard ''"),
], ids=["not-json", "list", "no-weight-map", "weight-map-list", "tensor-listed-twice",
        "shard-not-string", "shard-empty"])
def test_hostile_index_json(text, fragment, tmp_path):
    sharded(tmp_path / "m", TWO_SHARDS)
    index = tmp_path / "m" / "model.safetensors.index.json"
    index.write_text(text)
    expect_error(index, fragment, read=checkpoints.read_sharded_safetensors)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "sub/../../outside.safetensors",
                                   "..\\outside.safetensors", "ABSOLUTE"],
                         ids=["dotdot", "nested-dotdot", "backslash-dotdot", "absolute"])
def test_shard_outside_the_directory_is_refused(shard, tmp_path):
    outside = tmp_path / "outside.safetensors"
    checkpoints.write_safetensors(str(outside), A)
    shard = str(outside) if shard == "ABSOLUTE" else shard
    index = sharded(tmp_path / "m", TWO_SHARDS,
                    {"a": shard, "b": "model-00002-of-00002.safetensors"})
    expect_error(index, f"shard {shard!r}", "outside",
                 read=checkpoints.read_sharded_safetensors)


def test_shard_symlinked_out_of_the_directory_is_refused(tmp_path):
    outside = tmp_path / "elsewhere" / "secret.safetensors"
    outside.parent.mkdir()
    checkpoints.write_safetensors(str(outside), A)
    index = sharded(tmp_path / "m", {"model-00002-of-00002.safetensors": B},
                    {"a": "model-00001-of-00002.safetensors",
                     "b": "model-00002-of-00002.safetensors"})
    os.symlink(outside, tmp_path / "m" / "model-00001-of-00002.safetensors")
    expect_error(index, "'model-00001-of-00002.safetensors'", "symlink out",
                 read=checkpoints.read_sharded_safetensors)


def test_shard_symlinked_inside_the_directory_and_hub_cache_blobs_load(tmp_path):
    """Links that stay inside are fine, and so is the ``huggingface_hub`` cache layout
    (``snapshots/<rev>/file`` -> ``../../blobs/<hash>``)."""
    index = sharded(tmp_path / "m", TWO_SHARDS)
    os.rename(tmp_path / "m" / "model-00001-of-00002.safetensors", tmp_path / "m" / "real")
    os.symlink("real", tmp_path / "m" / "model-00001-of-00002.safetensors")
    assert set(checkpoints.read_sharded_safetensors(str(index))) == {"a", "b"}
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for name in os.listdir(tmp_path / "m"):
        source = os.path.realpath(tmp_path / "m" / name)
        shutil.copy(source, repo / "blobs" / f"hash-{name}")
        os.symlink(f"../../blobs/hash-{name}", snapshot / name)
    arrays = checkpoints.read_sharded_safetensors(str(snapshot / index.name))
    np.testing.assert_array_equal(arrays["a"], A["a"])


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_shard_that_is_not_a_regular_file_is_refused_without_blocking(kind, tmp_path):
    index = sharded(tmp_path / "m", {"model-00002-of-00002.safetensors": B},
                    {"a": "model-00001-of-00002.safetensors",
                     "b": "model-00002-of-00002.safetensors"})
    path = tmp_path / "m" / "model-00001-of-00002.safetensors"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    expect_error(index, "'model-00001-of-00002.safetensors'", f"a {kind.replace('fifo', 'FIFO')}",
                 read=checkpoints.read_sharded_safetensors)


def test_missing_shard_is_named(tmp_path):
    index = sharded(tmp_path / "m", TWO_SHARDS)
    os.remove(tmp_path / "m" / "model-00002-of-00002.safetensors")
    expect_error(index, "'model-00002-of-00002.safetensors'", error=FileNotFoundError,
                 read=checkpoints.read_sharded_safetensors)


def test_tensor_in_two_shards_is_refused(tmp_path):
    index = sharded(tmp_path / "m", {"one.safetensors": A, "two.safetensors": {**A, **B}},
                    {"a": "one.safetensors", "b": "two.safetensors"})
    expect_error(index, "tensor 'a'", "two shards", "'one.safetensors'", "'two.safetensors'",
                 read=checkpoints.read_sharded_safetensors)


def test_tensor_missing_from_its_shard_is_refused(tmp_path):
    index = sharded(tmp_path / "m", TWO_SHARDS,
                    {"a": "model-00001-of-00002.safetensors",
                     "b": "model-00002-of-00002.safetensors",
                     "c": "model-00002-of-00002.safetensors"})
    expect_error(index, "tensor 'c'", "'model-00002-of-00002.safetensors'", "does not hold",
                 read=checkpoints.read_sharded_safetensors)


def test_tensor_in_another_shard_than_listed_is_refused(tmp_path):
    index = sharded(tmp_path / "m", {"one.safetensors": A, "two.safetensors": B},
                    {"a": "two.safetensors", "b": "one.safetensors"})
    expect_error(index, "tensor 'a'", "in shard 'two.safetensors', but it is in shard "
                 "'one.safetensors'", read=checkpoints.read_sharded_safetensors)


def test_shard_not_in_the_index_listing_its_tensors_is_refused(tmp_path):
    index = sharded(tmp_path / "m", {"one.safetensors": {**A, **B}}, {"a": "one.safetensors"})
    expect_error(index, "tensor 'b'", "'one.safetensors'", "not listed",
                 read=checkpoints.read_sharded_safetensors)


def test_corrupt_shard_is_named(tmp_path):
    index = sharded(tmp_path / "m", TWO_SHARDS)
    shard = tmp_path / "m" / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(ValueError, match="model-00002-of-00002.safetensors.*tensor 'b'"):
        checkpoints.read_sharded_safetensors(str(index))


# --- HDF5 (tf_model.h5) -------------------------------------------------------------------

def h5_file(path):
    import h5py
    with h5py.File(path, "w") as f:
        f.create_dataset("tf_bert/embeddings/weight:0", data=np.arange(4096, dtype="float32"))
    return path


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated-half", "truncated-tail",
                                    "fifo"])
def test_damaged_h5_is_named(damage, tmp_path):
    path = tmp_path / "tf_model.h5"
    if damage == "garbage":
        path.write_bytes(b"not an HDF5 file" * 64)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "fifo":
        os.mkfifo(path)
    else:
        content = h5_file(path).read_bytes()
        path.write_bytes(content[: len(content) // 2 if damage == "truncated-half" else -100])
    expect_error(path, read=checkpoints.read_h5_weights)


# --- TF checkpoints ---------------------------------------------------------------------

def tf_checkpoint(folder, seed):
    rng = np.random.default_rng(seed)
    arrays = {"bert/kernel": rng.normal(size=(64, 32)).astype("float32"),
              "bert/bias": rng.normal(size=32).astype("float32")}
    return checkpoints.write_tf_checkpoint(arrays, str(folder / "bert_model.ckpt"))


@pytest.mark.parametrize("damage", ["index-truncated", "index-garbage", "data-truncated",
                                    "data-garbage", "torn-pair", "index-fifo"])
def test_damaged_tf_checkpoint_is_named(damage, tmp_path):
    prefix = tf_checkpoint(tmp_path / "a", 0)
    index, data = prefix + ".index", prefix + ".data-00000-of-00001"
    if damage == "index-truncated":
        content = open(index, "rb").read()
        open(index, "wb").write(content[: len(content) // 2])
    elif damage == "index-garbage":
        open(index, "wb").write(os.urandom(os.path.getsize(index)))
    elif damage == "data-truncated":
        content = open(data, "rb").read()
        open(data, "wb").write(content[:100])
    elif damage == "data-garbage":
        open(data, "wb").write(os.urandom(os.path.getsize(data)))
    elif damage == "torn-pair":  # a save interrupted between its data and index renames
        other = tf_checkpoint(tmp_path / "b", 1)
        shutil.copy(other + ".data-00000-of-00001", data)
    else:
        os.remove(index)
        os.mkfifo(index)
    # Damaged data is found when a variable is read, and that variable is named.
    named = ("variable 'bert/",) if damage.startswith(("data", "torn")) else ()
    expect_error(prefix, *named, read=checkpoints.read_tf_checkpoint)


# --- keraformer's own format ------------------------------------------------------------

@pytest.mark.parametrize("weights", ["../../outside.weights.h5", "/etc/passwd", 7])
def test_own_description_naming_another_weights_file_is_refused(weights, tmp_path):
    from keraformer.models import load_pretrained
    config = dict(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=16, max_position_embeddings=16, type_vocab_size=2)
    (tmp_path / "keraformer.json").write_text(json.dumps(
        {"model": "bert", "config": config, "options": {"application": "encoder"},
         "weights": weights}))
    expect_error(tmp_path / "keraformer.json", "'weights'", repr(weights),
                 read=lambda path: load_pretrained(os.path.dirname(path)))
