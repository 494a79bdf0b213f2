"""Checkpoint readers and writers: Google TF bundles, safetensors and HDF5, all as NumPy.

Every reader returns ``{variable_name: np.ndarray}`` and never executes code from the file
(no pickle). Readers check a file before they use it: it must be a regular file (a FIFO or a
device is refused before it is opened for reading, so nothing blocks), a safetensors header is
validated completely (sizes, dtypes, offsets, names) before any tensor is mapped, and a
sharded index may only name shards inside its own directory. Errors are ``ValueError`` naming
the file and the tensor. Safetensors data is memory-mapped: the arrays returned are read-only
views of the file, so loading costs no copy.

Every writer is atomic: the files are written in a fresh staging folder inside the target
directory, fsynced, then renamed over the old ones in an order that keeps a multi-file
checkpoint consistent (:func:`atomic_write`). A process killed at any moment leaves the
previous files or the new ones, never a half-written file (its staging folder, named after its
host and process, is removed by the next successful save into that directory once that process
is gone: :func:`remove_stale_staging`), and a target that is a symlink is replaced by the new
file; the file it pointed to is never written.
"""

import contextlib
import glob
import json
import math
import mmap
import os
import re
import shutil
import socket
import stat
import struct
import tempfile
import time

import numpy as np

from keraformer.checks import check_not_read_only, check_save_path

SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}
# Read back as float32: NumPy has no arithmetic of its own for these ml_dtypes types.
WIDENED_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2")
# The safetensors format's own bound on the JSON header (the reference reader's limit).
MAX_HEADER_BYTES = 100_000_000
STAGING_PREFIX = ".keraformer-staging-"
# A staging folder is named STAGING_PREFIX + "<host>+<pid>+<random>": its owner, see
# remove_stale_staging. One whose owner cannot be told is stale once untouched this long.
STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"(?P<host>[A-Za-z0-9._-]*)\+(?P<pid>\d+)\+")
STALE_STAGING_SECONDS = 24 * 3600

# keraformer's own format: a description and the Keras weights file it names. Saves alternate
# between the two weights names, so the file the current description names is never rewritten.
OWN_CONFIG = "keraformer.json"
OWN_WEIGHTS = ("model.weights.h5", "model.alt.weights.h5")


# --- atomic writing -------------------------------------------------------------------------

def host_name():
    """This machine's name as it appears in staging folder names (``[A-Za-z0-9._-]``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())


def process_running(pid):
    """Whether a process ``pid`` exists on this machine (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or a number the OS cannot check: keep it
    return True


def newest_change(path):
    """The latest modification time of folder ``path`` and of the entries directly in it."""
    times = [os.lstat(path).st_mtime]
    with os.scandir(path) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                times.append(entry.stat(follow_symlinks=False).st_mtime)
    return max(times)


def remove_stale_staging(directory, keep=None):
    """Remove the staging folders that earlier saves into ``directory`` left behind when they
    were killed (they are never committed, so their content is worthless).

    The rule: a folder directly in ``directory`` whose name starts with ``STAGING_PREFIX``
    (a real folder: symlinks and files are left alone) is stale when

    * its name records this machine's host name and a process id that no longer runs here
      (a save running in any live process, this one included, is never touched; a dead
      save's pid reused by an unrelated process only delays the removal; machines that
      share a file system must have distinct host names, as containers do by default), or
    * its owner cannot be checked (another host's name, as on a shared file system, or a
      name without an owner, as keraformer wrote before) and neither it nor anything
      directly in it has changed for ``STALE_STAGING_SECONDS`` (24 hours).

    ``keep``: the caller's own staging folder. Errors (a folder another process removes at
    the same time, no permission) are ignored: cleaning up never fails a save.
    """
    here, now = host_name(), time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(STAGING_PREFIX) or entry.path == keep:
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            owner = STAGING_NAME.match(entry.name)
            if owner and owner["host"] == here:
                stale = not process_running(int(owner["pid"]))
            else:
                stale = now - newest_change(entry.path) > STALE_STAGING_SECONDS
        except OSError:
            continue
        if stale:
            shutil.rmtree(entry.path, ignore_errors=True)


def fsync_path(path):
    """Flush the file or directory ``path`` to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(directory, names):
    """Replace the files ``names`` of ``directory`` all at once or not at all.

    Yields a fresh staging folder inside ``directory``; write each of ``names`` there (under
    that same name). Leaving the block without an error fsyncs every staged file, renames
    them over ``directory/name`` one by one in the order of ``names`` (fsyncing the directory
    after each rename), and removes the staging folder; an error removes it and leaves the
    directory as it was. A target that is a symlink is replaced by the new file: the file it
    points to is never opened. Order ``names`` so that the last rename is the commit point
    of a multi-file checkpoint (weights before the config or index that describes them).

    The staging folder is named after this host and process; after a successful save, the
    staging folders that killed saves left in ``directory`` are removed (the rule is
    :func:`remove_stale_staging`'s: dead process on this host, or untouched for 24 hours).
    """
    directory = check_save_path(directory)
    for name in names:
        if not isinstance(name, str) or name in ("", ".", "..") or os.path.basename(name) != name:
            raise ValueError(f"`names` must be plain file names inside {directory!r}; "
                             f"received {name!r}")
        target = os.path.join(directory, name)
        if os.path.isdir(target) and not os.path.islink(target):
            raise ValueError(f"cannot write {target!r}: it is a directory")
        check_not_read_only(target)
    os.makedirs(directory, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{host_name()}+{os.getpid()}+",
                               dir=directory)
    try:
        yield staging
        for name in names:
            staged = os.path.join(staging, name)
            if os.path.islink(staged) or not os.path.isfile(staged):
                raise RuntimeError(f"the writer did not produce {name!r} for {directory!r}")
            fsync_path(staged)
        for name in names:
            target = os.path.join(directory, name)
            if os.path.isfile(target) and not os.path.islink(target):  # keep its mode bits
                os.chmod(os.path.join(staging, name), stat.S_IMODE(os.stat(target).st_mode))
            os.replace(os.path.join(staging, name), target)
            fsync_path(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    remove_stale_staging(directory, keep=staging)


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
    """``open(path, mode)`` for writing, made atomic with :func:`atomic_write`: the file
    appears at ``path`` complete, fsynced, or not at all. ``mode``: ``"w"`` or ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"`mode` must be 'w' or 'wb'; received {mode!r}")
    directory, name = os.path.split(os.path.abspath(check_save_path(path, "path")))
    with atomic_write(directory, [name]) as staging:
        with open(os.path.join(staging, name), mode.replace("w", "x")) as f:
            yield f


# --- reading files safely -------------------------------------------------------------------

def file_kind(mode):
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def check_regular_file(path, what):
    """Raise unless ``path`` is (or links to) a regular file; checked with ``os.stat`` so a
    FIFO or a device is never opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path!r} does not exist") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{what} {path!r} is {file_kind(mode)}, expected a regular file")


def open_regular_file(path, what):
    """A read-only file descriptor of the regular file ``path`` and its size. Opened
    non-blocking and checked with ``fstat`` too, so a FIFO swapped in after
    :func:`check_regular_file` cannot block either."""
    check_regular_file(path, what)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ValueError(f"{what} {path!r} is {file_kind(info.st_mode)}, expected a regular file")
    return fd, info.st_size


def read_exactly(fd, size, offset):
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def strict_json(text, source):
    """``json.loads`` that refuses repeated keys, naming ``source`` and the key."""
    def unique(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise ValueError(f"{source} repeats the key {key!r}")
            seen[key] = value
        return seen
    try:
        return json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source} is not valid JSON: {error}") from None
    except RecursionError:
        raise ValueError(f"{source} nests JSON deeper than Python can parse") from None


def is_count(value):
    """A JSON non-negative integer (``True`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --- safetensors ----------------------------------------------------------------------------

def numpy_dtype(name):
    if name in WIDENED_DTYPES:
        import ml_dtypes
        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name).newbyteorder("<")


def safetensors_layout(path, fd, size):
    """Validate the header of the safetensors file open as ``fd`` and return
    ``(metadata, {name: (dtype, shape, start, end)}, data_start)``, offsets from the file start.

    Checked: the header length fits the file (and the format's 100 MB bound); the header is a
    JSON object with unique keys; each tensor has exactly ``dtype`` (a known one), ``shape``
    (non-negative integers) and ``data_offsets`` (non-negative ``[begin, end]`` inside the
    data area, ``end - begin`` = elements × item size); the tensors tile the data area without
    overlaps, holes or trailing bytes, as the format requires.
    """
    def fail(message):
        raise ValueError(f"safetensors file {path!r}: {message}")

    if size < 8:
        fail(f"truncated: {size} bytes, fewer than the 8-byte header length")
    (header_size,) = struct.unpack("<Q", read_exactly(fd, 8, 0))
    if header_size > size - 8:
        fail(f"header length {header_size} exceeds the {size - 8} bytes after the length "
             f"field (corrupt or truncated)")
    if header_size > MAX_HEADER_BYTES:
        fail(f"header length {header_size} exceeds the format's limit of {MAX_HEADER_BYTES}")
    try:
        text = read_exactly(fd, header_size, 8).decode("utf-8")
    except UnicodeDecodeError as error:
        fail(f"header is not UTF-8 ({error})")
    header = strict_json(text, f"safetensors file {path!r}: header")
    if not isinstance(header, dict):
        fail(f"header must be a JSON object; received a {type(header).__name__}")
    data_start = 8 + header_size
    data_size = size - data_start
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(v, str) for v in metadata.values())):
        fail(f"'__metadata__' must map strings to strings; received {metadata!r}")
    layout = {}
    for name, info in header.items():
        where = f"tensor {name!r}"
        if not name:
            fail("a tensor has an empty name")
        if not isinstance(info, dict):
            fail(f"{where}: entry must be an object with dtype, shape and data_offsets; "
                 f"received {info!r}")
        keys = sorted(info)
        if keys != ["data_offsets", "dtype", "shape"]:
            fail(f"{where}: entry must have exactly the keys ['data_offsets', 'dtype', "
                 f"'shape']; received {keys}")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if code not in SAFETENSORS_DTYPES:
            fail(f"{where} has unsupported dtype {code!r}; expected one of "
                 f"{sorted(SAFETENSORS_DTYPES)}")
        if not isinstance(shape, list) or not all(is_count(d) for d in shape):
            fail(f"{where}: shape must be a list of non-negative integers; received {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
                is_count(o) for o in offsets) and offsets[0] <= offsets[1]):
            fail(f"{where}: data_offsets must be [begin, end], non-negative integers with "
                 f"begin <= end; received {offsets!r}")
        begin, end = offsets
        if end > data_size:
            fail(f"{where} needs bytes {begin}..{end} of a data area of {data_size} bytes "
                 f"(truncated or corrupt)")
        dtype = numpy_dtype(SAFETENSORS_DTYPES[code])
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected:
            fail(f"{where}: shape {shape} of {code} needs {expected} bytes but data_offsets "
                 f"{offsets} span {end - begin}")
        layout[name] = (dtype, tuple(shape), data_start + begin, data_start + end)
    position, previous = data_start, None
    for name, (_, _, begin, end) in sorted(layout.items(), key=lambda item: item[1][2:]):
        if begin < position:
            fail(f"tensor {name!r} overlaps tensor {previous!r} (bytes "
                 f"{begin - data_start}..{end - data_start} start before "
                 f"{position - data_start})")
        if begin > position:
            fail(f"bytes {position - data_start}..{begin - data_start} before tensor {name!r} "
                 f"belong to no tensor")
        position, previous = end, name
    if position != size:
        after = "the header" if previous is None else f"tensor {previous!r}"
        fail(f"{size - position} bytes after {after} belong to no tensor")
    return metadata, layout, data_start


def map_tensors(path, fd, size, layout, names=None):
    """Read-only arrays viewing the file through one memory map (widened dtypes copied)."""
    buffer = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if size else b""
    arrays = {}
    for name in layout if names is None else names:
        dtype, shape, begin, end = layout[name]
        array = np.frombuffer(buffer, dtype=dtype, count=(end - begin) // dtype.itemsize,
                              offset=begin).reshape(shape)
        arrays[name] = array.astype("float32") if dtype.name in WIDENED_DTYPES else array
    return arrays


def read_safetensors(path):
    """Tensors of one ``.safetensors`` file as read-only memory-mapped arrays (bfloat16 and
    float8 become float32 copies). The whole header is validated first; see
    :func:`safetensors_layout`.

    Example:

        >>> import os, tempfile
        >>> import numpy as np
        >>> from keraformer.checkpoints import read_safetensors, write_safetensors
        >>> path = write_safetensors(os.path.join(tempfile.mkdtemp(), "w.safetensors"),
        ...                          {"dense.weight": np.eye(2, dtype="float32")})
        >>> arrays = read_safetensors(path)
        >>> arrays["dense.weight"].tolist(), arrays["dense.weight"].flags.writeable
        ([[1.0, 0.0], [0.0, 1.0]], False)
    """
    path = os.fspath(path)
    fd, size = open_regular_file(path, "safetensors file")
    try:
        _, layout, _ = safetensors_layout(path, fd, size)
        return map_tensors(path, fd, size, layout)
    finally:
        os.close(fd)


def read_safetensors_metadata(path):
    """The ``__metadata__`` of a ``.safetensors`` file (``{}`` when it has none), validated."""
    path = os.fspath(path)
    fd, size = open_regular_file(path, "safetensors file")
    try:
        return safetensors_layout(path, fd, size)[0] or {}
    finally:
        os.close(fd)


def write_safetensors(path, arrays, metadata=None):
    """Write ``{name: array}`` as one ``.safetensors`` file, atomically, and return ``path``.

    The format: an 8-byte little-endian header length, a JSON header ``{name: {"dtype",
    "shape", "data_offsets"}}`` (plus ``"__metadata__"``, string to string) padded with
    spaces to a multiple of 8 bytes, then each tensor's little-endian bytes in C order, back
    to back in header order. Names are sorted so the same arrays always give the same file.

    Example:

        >>> import os, tempfile
        >>> import numpy as np
        >>> from keraformer.checkpoints import read_safetensors_metadata, write_safetensors
        >>> path = write_safetensors(os.path.join(tempfile.mkdtemp(), "w.safetensors"),
        ...                          {"b": np.zeros(3, "float16"), "a": np.ones((2, 2))},
        ...                          metadata={"format": "pt"})
        >>> read_safetensors_metadata(path)
        {'format': 'pt'}
    """
    write = safetensors_writer(arrays, metadata)
    with atomic_file(path) as f:
        write(f)
    return path


def safetensors_writer(arrays, metadata=None):
    """Check ``arrays`` and ``metadata`` and return ``write(file)``, which writes them to an
    open binary file in the safetensors format (see :func:`write_safetensors`)."""
    codes = {SAFETENSORS_DTYPES[code]: code for code in SAFETENSORS_DTYPES}
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
        code = codes.get(array.dtype.name)
        if code is None:
            raise ValueError(f"tensor {name!r} has dtype {array.dtype.name!r}, which "
                             f"safetensors cannot store; expected one of {sorted(codes)}")
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        header[name] = {"dtype": code, "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        tensors.append(array)
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)

    def write(f):
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for array in tensors:
            f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
    return write


def write_hf_directory(directory, arrays, config):
    """Write a Hugging Face model directory: ``config`` as ``config.json`` and the PyTorch-named
    ``{name: array}`` as ``model.safetensors`` (metadata ``format: pt``, which
    ``transformers`` expects). Both are staged, then the weights are renamed into place and
    the config last. Returns ``directory``.

    Example:

        >>> import json, os, tempfile
        >>> import numpy as np
        >>> from keraformer.checkpoints import write_hf_directory
        >>> folder = write_hf_directory(tempfile.mkdtemp(), {"w": np.zeros(2, "float32")},
        ...                             {"model_type": "bert"})
        >>> sorted(os.listdir(folder)), json.load(open(os.path.join(folder, "config.json")))
        (['config.json', 'model.safetensors'], {'model_type': 'bert'})
    """
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    write = safetensors_writer(arrays, metadata={"format": "pt"})
    with atomic_write(directory, ["model.safetensors", "config.json"]) as staging:
        with open(os.path.join(staging, "model.safetensors"), "xb") as f:
            write(f)
        with open(os.path.join(staging, "config.json"), "x") as f:
            f.write(text)
    return directory


def shard_roots(folder):
    """Real directories a shard of an index in ``folder`` may resolve into: ``folder`` and,
    in a ``huggingface_hub`` cache snapshot (``.../snapshots/<revision>/``, whose files are
    symlinks to ``../../blobs/<hash>``), that repository's ``blobs`` folder."""
    roots = [os.path.realpath(folder)]
    if os.path.basename(os.path.dirname(os.path.abspath(folder))) == "snapshots":
        roots.append(os.path.realpath(os.path.join(folder, "..", "..", "blobs")))
    return roots


def shard_path(index_path, folder, shard, roots):
    """The path of ``shard`` named by ``index_path``: relative, inside ``folder`` (also after
    resolving symlinks) and a regular file."""
    where = f"sharded index {index_path!r}: shard {shard!r}"
    if not isinstance(shard, str) or not shard:
        raise ValueError(f"{where} must be a non-empty file name")
    parts = shard.replace("\\", "/").split("/")
    if os.path.isabs(shard) or shard.startswith(("/", "\\")) or ".." in parts:
        raise ValueError(f"{where} is outside the index's directory {folder!r}; shards must "
                         f"be relative paths inside it")
    path = os.path.join(folder, shard)
    real = os.path.realpath(path)
    if not any(os.path.commonpath([real, root]) == root for root in roots):
        raise ValueError(f"{where} resolves to {real!r}, outside the index's directory "
                         f"{folder!r} (a symlink out of it)")
    check_regular_file(path, f"shard {shard!r} of sharded index {index_path!r}:")
    return path


def read_sharded_safetensors(index_path):
    """Tensors of a sharded safetensors model, following its ``*.index.json`` weight map.

    Before any tensor is mapped: the index is a JSON object whose ``weight_map`` maps each
    tensor name (once) to a shard; each shard is a regular file inside the index's directory
    (no absolute path, no ``..``, no symlink out of it; see :func:`shard_roots` for the
    ``huggingface_hub`` cache); every shard header is valid; each tensor is in exactly the
    shard the index names, and no shard holds a tensor the index does not list.

    Example:

        >>> import json, os, tempfile
        >>> import numpy as np
        >>> from keraformer.checkpoints import read_sharded_safetensors, write_safetensors
        >>> folder = tempfile.mkdtemp()
        >>> for name, shard in (("x", "a.safetensors"), ("y", "b.safetensors")):
        ...     _ = write_safetensors(os.path.join(folder, shard), {name: np.zeros(2, "float32")})
        >>> index = os.path.join(folder, "model.safetensors.index.json")
        >>> with open(index, "w") as f:
        ...     json.dump({"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}, f)
        >>> {name: a.shape for name, a in sorted(read_sharded_safetensors(index).items())}
        {'x': (2,), 'y': (2,)}
    """
    index_path = os.fspath(index_path)
    fd, size = open_regular_file(index_path, "sharded index")
    try:
        text = read_exactly(fd, size, 0)
    finally:
        os.close(fd)
    try:
        index = strict_json(text.decode("utf-8"), f"sharded index {index_path!r}")
    except UnicodeDecodeError as error:
        raise ValueError(f"sharded index {index_path!r} is not UTF-8 ({error})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise ValueError(f"sharded index {index_path!r} must be a JSON object with a "
                         f"'weight_map' object; received {str(index)[:200]}")
    folder = os.path.dirname(index_path) or "."
    roots = shard_roots(folder)
    paths = {shard: shard_path(index_path, folder, shard, roots)
             for shard in sorted(set(weight_map.values()), key=str)}
    layouts, owner = {}, {}
    for shard, path in paths.items():
        fd, size = open_regular_file(path, f"shard {shard!r} of sharded index {index_path!r}:")
        try:
            layouts[shard] = (path, size, safetensors_layout(path, fd, size)[1])
        finally:
            os.close(fd)
        for name in layouts[shard][2]:
            if name in owner:
                raise ValueError(f"sharded index {index_path!r}: tensor {name!r} is in two "
                                 f"shards, {owner[name]!r} and {shard!r}")
            owner[name] = shard
            if name not in weight_map:
                raise ValueError(f"sharded index {index_path!r}: tensor {name!r} of shard "
                                 f"{shard!r} is not listed in the index's weight_map")
    for name, shard in weight_map.items():
        if name not in owner:
            raise ValueError(f"sharded index {index_path!r} lists tensor {name!r} in shard "
                             f"{shard!r}, which does not hold it")
        if owner[name] != shard:
            raise ValueError(f"sharded index {index_path!r} lists tensor {name!r} in shard "
                             f"{shard!r}, but it is in shard {owner[name]!r}")
    arrays = {}
    for shard, (path, _, layout) in layouts.items():
        fd, size = open_regular_file(path, f"shard {shard!r} of sharded index {index_path!r}:")
        try:
            arrays.update(map_tensors(path, fd, size, layout))
        finally:
            os.close(fd)
    return arrays


# --- TF checkpoints -------------------------------------------------------------------------

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
    path = os.fspath(path)
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
    """All variables of a TF checkpoint as NumPy arrays (reads with ``tf.train.load_checkpoint``).

    Example:

        >>> import os, tempfile
        >>> import numpy as np
        >>> from keraformer.checkpoints import read_tf_checkpoint, write_tf_checkpoint
        >>> folder = tempfile.mkdtemp()
        >>> _ = write_tf_checkpoint({"bert/pooler/dense/bias": np.arange(3, dtype="float32")},
        ...                         os.path.join(folder, "bert_model.ckpt"))
        >>> read_tf_checkpoint(folder)["bert/pooler/dense/bias"].tolist()   # a folder or a prefix
        [0.0, 1.0, 2.0]
    """
    prefix = find_tf_checkpoint(path)
    for file in [prefix + ".index"] + sorted(glob.glob(glob.escape(prefix) + ".data-*")):
        check_regular_file(file, "TF checkpoint file")
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
        names = reader.get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as error:
        raise ValueError(f"cannot read TF checkpoint {prefix!r}: it is corrupt or "
                         f"truncated ({error.__class__.__name__}: {error})") from None
    arrays = {}
    for name in names:
        try:
            arrays[name] = np.asarray(reader.get_tensor(name))
        except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as error:
            raise ValueError(f"cannot read variable {name!r} of TF checkpoint {prefix!r}: "
                             f"it is corrupt or truncated ({error.__class__.__name__}: "
                             f"{error})") from None
    return arrays


def write_tf_checkpoint(arrays, path):
    """Write ``{name: array}`` as a TF (V2 bundle) checkpoint with exactly those names, and a
    ``checkpoint`` file naming it as the latest. Written atomically: the bundle is saved in a
    staging folder, then its data file, its index and the ``checkpoint`` file are renamed into
    place in that order. Returns ``path``.

    Example:

        >>> import os, tempfile
        >>> import numpy as np
        >>> from keraformer.checkpoints import write_tf_checkpoint
        >>> folder = tempfile.mkdtemp()
        >>> prefix = os.path.join(folder, "m.ckpt")
        >>> _ = write_tf_checkpoint({"w": np.zeros((2, 3), "float32")}, prefix)
        >>> sorted(os.listdir(folder))
        ['checkpoint', 'm.ckpt.data-00000-of-00001', 'm.ckpt.index']
    """
    import tensorflow as tf

    path = check_save_path(path, "path")
    directory, prefix = os.path.split(os.path.abspath(path))
    if path.endswith(("/", os.sep)):
        raise ValueError(f"`path` must be a checkpoint prefix such as 'folder/model.ckpt', "
                         f"not a folder; received {path!r}")
    names = sorted(arrays)
    tensors = [tf.convert_to_tensor(np.asarray(arrays[name])) for name in names]
    state = (f"model_checkpoint_path: {json.dumps(prefix)}\n"
             f"all_model_checkpoint_paths: {json.dumps(prefix)}\n")
    files = [prefix + ".data-00000-of-00001", prefix + ".index", "checkpoint"]
    with atomic_write(directory, files) as staging:
        tf.raw_ops.SaveV2(prefix=os.path.join(staging, prefix), tensor_names=names,
                          shape_and_slices=[""] * len(names), tensors=tensors)
        with open(os.path.join(staging, "checkpoint"), "x") as f:
            f.write(state)
    return path


# --- HDF5 -----------------------------------------------------------------------------------

def read_h5_weights(path):
    """Datasets of an HDF5 weights file (e.g. Hugging Face ``tf_model.h5``), keyed by path.

    Keys drop the ``:0`` suffix that TF appends to variable names.

    Example:

        >>> import os, tempfile
        >>> import h5py, numpy as np
        >>> from keraformer.checkpoints import read_h5_weights
        >>> path = os.path.join(tempfile.mkdtemp(), "tf_model.h5")
        >>> with h5py.File(path, "w") as f:
        ...     _ = f.create_dataset("bert/embeddings/weight:0", data=np.ones((2, 2), "float32"))
        >>> list(read_h5_weights(path))                     # TF's ":0" suffix dropped
        ['bert/embeddings/weight']
    """
    import h5py

    path = os.fspath(path)
    check_regular_file(path, "HDF5 file")
    arrays, current = {}, [None]
    try:
        with h5py.File(path, "r") as f:
            def visit(name, item):
                if isinstance(item, h5py.Dataset):
                    current[0] = name
                    arrays[name[:-2] if name.endswith(":0") else name] = np.asarray(item)
            f.visititems(visit)
    except (OSError, RuntimeError, KeyError, ValueError) as error:
        what = f"dataset {current[0]!r} of " if current[0] else ""
        raise ValueError(f"cannot read {what}HDF5 file {path!r}: it is corrupt or truncated "
                         f"({error.__class__.__name__}: {error})") from None
    return arrays


# --- keraformer's own format ----------------------------------------------------------------

def own_weights_name(description, directory):
    """The weights file a keraformer description (``keraformer.json`` contents) names; one of
    ``OWN_WEIGHTS`` (descriptions written before the ``weights`` key name the first)."""
    name = description.get("weights", OWN_WEIGHTS[0])
    if name not in OWN_WEIGHTS:
        raise ValueError(f"{os.path.join(directory, OWN_CONFIG)!r}: 'weights' must be one of "
                         f"{list(OWN_WEIGHTS)}; received {name!r}")
    return name


def write_keraformer_directory(directory, description, save_weights):
    """Save keraformer's own format: ``description`` (a JSON-able dict) as ``keraformer.json``
    plus a Keras weights file written by ``save_weights(path)``.

    The weights go to the one of ``OWN_WEIGHTS`` that the current ``keraformer.json`` does not
    name, and the new ``keraformer.json`` (naming it) is renamed into place last, so a save
    killed at any moment leaves a description naming complete weights that match it. The
    weights file of the previous save is then removed. Returns ``directory``.
    """
    directory = check_save_path(directory)
    for name in OWN_WEIGHTS:  # the save replaces one and removes the other
        check_not_read_only(os.path.join(directory, name))
    try:
        with open(os.path.join(directory, OWN_CONFIG)) as f:
            current = own_weights_name(json.load(f), directory)
    except (OSError, ValueError, AttributeError):
        current = None
    name = OWN_WEIGHTS[1] if current == OWN_WEIGHTS[0] else OWN_WEIGHTS[0]
    text = json.dumps({**description, "weights": name}, indent=2)
    with atomic_write(directory, [name, OWN_CONFIG]) as staging:
        save_weights(os.path.join(staging, name))
        with open(os.path.join(staging, OWN_CONFIG), "x") as f:
            f.write(text)
    stale = os.path.join(directory, OWN_WEIGHTS[1] if name == OWN_WEIGHTS[0] else OWN_WEIGHTS[0])
    if os.path.lexists(stale):
        os.remove(stale)
    return directory
