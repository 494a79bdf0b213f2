"""Checkpoint readers and writers: Google TF bundles, safetensors and HDF5, all as NumPy.

Every reader returns ``{variable_name: np.ndarray}`` and never executes code from the file
(no pickle). Errors name the file and what was wrong with it. The writers produce Google TF
bundles, safetensors files and Hugging Face model directories (``config.json`` +
``model.safetensors``).
"""

import glob
import json
import os
import re
import struct

import numpy as np

SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


def latest_tf_checkpoint(directory):
    """The prefix that a TF ``checkpoint`` state file in ``directory`` names as the latest
    (``model_checkpoint_path: "..."``, relative to the directory or absolute)."""
    state = os.path.join(directory, "checkpoint")
    with open(state, encoding="utf-8", errors="replace") as f:
        match = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', f.read(), re.M)
    if match is None:
        raise ValueError(f"TF checkpoint state file {state!r} names no model_checkpoint_path")
    prefix = os.path.join(directory, match.group(1))
    if not os.path.exists(prefix + ".index"):
        raise FileNotFoundError(f"{state!r} names {match.group(1)!r} as the latest checkpoint, "
                                f"but {prefix}.index does not exist")
    return prefix


def find_tf_checkpoint(path):
    """The prefix of the TF checkpoint at ``path`` (a prefix, an ``.index`` file or a folder).

    In a folder, the latest checkpoint its ``checkpoint`` state file names, else its only
    ``*.index``; several without a state file are an error naming them."""
    if path.endswith(".index"):
        path = path[: -len(".index")]
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "checkpoint")):
            return latest_tf_checkpoint(path)
        indexes = sorted(glob.glob(os.path.join(path, "*.index")))
        if not indexes:
            raise FileNotFoundError(f"no TF checkpoint (*.index) in directory {path!r}")
        if len(indexes) > 1:
            names = [os.path.basename(name)[: -len(".index")] for name in indexes]
            raise ValueError(f"directory {path!r} holds several TF checkpoints {names} and no "
                             f"'checkpoint' file naming the latest; pass the prefix of one")
        path = indexes[0][: -len(".index")]
    if not os.path.exists(path + ".index"):
        raise FileNotFoundError(f"TF checkpoint {path!r} not found (no {path}.index)")
    return path


def read_tf_checkpoint(path):
    """All variables of a TF checkpoint as NumPy arrays (reads with ``tf.train.load_checkpoint``)."""
    import tensorflow as tf

    prefix = find_tf_checkpoint(path)
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = reader.get_variable_to_shape_map()
        return {name: np.asarray(reader.get_tensor(name)) for name in names}
    except (tf.errors.OpError, ValueError) as error:
        raise ValueError(f"cannot read TF checkpoint {prefix!r}: it is corrupt or "
                         f"truncated ({error.__class__.__name__}: {error})") from None


def write_tf_checkpoint(arrays, path):
    """Write ``{name: array}`` as a TF (V2 bundle) checkpoint with exactly those names."""
    import tensorflow as tf

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    names = sorted(arrays)
    tensors = [tf.convert_to_tensor(np.asarray(arrays[name])) for name in names]
    tf.raw_ops.SaveV2(prefix=path, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=tensors)
    return path


def read_safetensors(path):
    """Tensors of one ``.safetensors`` file, parsed directly (bfloat16 becomes float32)."""
    import ml_dtypes

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"safetensors file {path!r} is truncated: {size} bytes")
        (header_size,) = struct.unpack("<Q", head)
        if header_size > size - 8:
            raise ValueError(f"safetensors file {path!r} is corrupt or truncated: header of "
                             f"{header_size} bytes in a file of {size} bytes")
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"safetensors file {path!r} has a corrupt header: {error}") from None
        data = f.read()
    arrays = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if end > len(data):
            raise ValueError(f"safetensors file {path!r} is truncated: tensor {name!r} needs "
                             f"bytes {start}..{end} of {len(data)}")
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"tensor {name!r} in {path!r} has unsupported dtype "
                             f"{info['dtype']!r}; expected one of {sorted(SAFETENSORS_DTYPES)}")
        np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
        array = np.frombuffer(data[start:end], dtype=np_dtype).reshape(info["shape"])
        arrays[name] = array.astype("float32") if dtype == "bfloat16" else array.copy()
    return arrays


def write_safetensors(path, arrays, metadata=None):
    """Write ``{name: array}`` as one ``.safetensors`` file and return ``path``.

    The format: an 8-byte little-endian header length, a JSON header ``{name: {"dtype",
    "shape", "data_offsets"}}`` (plus ``"__metadata__"``, string to string) padded with
    spaces to a multiple of 8 bytes, then each tensor's little-endian bytes in C order, back
    to back in header order. Names are sorted so the same arrays always give the same file.
    """
    names = {SAFETENSORS_DTYPES[code]: code for code in SAFETENSORS_DTYPES}
    header, tensors, offset = {}, [], 0
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError(f"`metadata` must map strings to strings; received {metadata!r}")
        header["__metadata__"] = dict(metadata)
    for name in sorted(arrays):
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"tensor names must be non-empty strings other than "
                             f"'__metadata__'; received {name!r}")
        array = np.asarray(arrays[name])
        code = names.get(array.dtype.name)
        if code is None:
            raise ValueError(f"tensor {name!r} has dtype {array.dtype.name!r}, which "
                             f"safetensors cannot store; expected one of {sorted(names)}")
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": code, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        tensors.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for data in tensors:
            f.write(data)
    return path


def write_hf_directory(directory, arrays, config):
    """Write a Hugging Face model directory: ``config`` as ``config.json`` and the PyTorch-named
    ``{name: array}`` as ``model.safetensors`` (metadata ``format: pt``, which
    ``transformers`` expects). Returns ``directory``."""
    os.makedirs(directory, exist_ok=True)
    write_safetensors(os.path.join(directory, "model.safetensors"), arrays,
                      metadata={"format": "pt"})
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    return directory


def read_sharded_safetensors(index_path):
    """Tensors of a sharded safetensors model, following its ``*.index.json`` weight map."""
    with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
    folder = os.path.dirname(index_path)
    arrays = {}
    for shard in sorted(set(weight_map.values())):
        arrays.update(read_safetensors(os.path.join(folder, shard)))
    missing = sorted(set(weight_map) - set(arrays))
    if missing:
        raise ValueError(f"sharded checkpoint {index_path!r} lists tensors missing from its "
                         f"shards: {missing[:5]}")
    return arrays


def read_h5_weights(path):
    """Datasets of an HDF5 weights file (e.g. Hugging Face ``tf_model.h5``), keyed by path.

    Keys drop the ``:0`` suffix that TF appends to variable names.
    """
    import h5py

    arrays = {}
    try:
        with h5py.File(path, "r") as f:
            def visit(name, item):
                if isinstance(item, h5py.Dataset):
                    arrays[name[:-2] if name.endswith(":0") else name] = np.asarray(item)
            f.visititems(visit)
    except OSError as error:
        raise ValueError(f"cannot read HDF5 file {path!r}: it is corrupt or truncated "
                         f"({error})") from None
    return arrays
