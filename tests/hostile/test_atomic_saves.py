"""Saves killed mid-write, and saves into directories whose files are symlinks.

Each writer (keraformer's own ``save``, ``write_hf_directory`` behind ``save_pretrained``,
``write_tf_checkpoint`` behind ``save_weights_as_checkpoint``, ``write_safetensors``) runs in a
child process over a directory that already holds a good checkpoint (model A); the child saves
model B and is SIGKILLed part way, then the parent loads the directory and must get A's weights
exactly.

The next save into the directory removes the killed save's staging folder, and never
the staging folder of a save that is still running in another process.

Two ways of choosing the moment:
- paused: the child replaces ``os.replace`` (or h5py's ``create_dataset``) with a version that
  announces itself and sleeps at a chosen call, so the kill lands at a known point: in the
  middle of writing the Keras weights file, with every new file written but none renamed, or
  (own format) between renaming the weights and renaming the config. The old, non-atomic
  writers never call ``os.replace``, so under them the child finishes and the test fails.
- random: a NumPy-only child (no TensorFlow, so ~0.3 s to start) rewrites the file in a
  loop, alternating A and B, and is killed after a random delay; the file must then hold A
  or B exactly, read by the ``safetensors`` package as well as ours.
"""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from keraformer import checkpoints
from keraformer.models import build_transformer_model, load_pretrained

CONFIG = dict(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=16, max_position_embeddings=16, type_vocab_size=2)
CHILD_TIMEOUT = 240  # seconds for a child to reach its pause (TensorFlow import included)

PAUSED_CHILD = r"""
import json, os, sys, time
writer, target, source, pause = sys.argv[1:5]

def announce_and_wait(what):
    print("PAUSED", what, flush=True)
    time.sleep(3600)

if pause.startswith("replace:"):  # sleep instead of the n-th rename
    count, limit, real_replace = [0], int(pause.split(":")[1]), os.replace
    def replace(src, dst):
        count[0] += 1
        if count[0] == limit:
            announce_and_wait(dst)
        real_replace(src, dst)
    os.replace = replace
elif pause.startswith("h5:"):  # sleep after the n-th dataset of the Keras weights file
    import h5py
    count, limit, real_create = [0], int(pause.split(":")[1]), h5py.Group.create_dataset
    def create_dataset(self, *args, **kwargs):
        dataset = real_create(self, *args, **kwargs)
        count[0] += 1
        if count[0] == limit:
            self.file.flush()
            announce_and_wait(self.file.filename)
        return dataset
    h5py.Group.create_dataset = create_dataset

from keraformer import checkpoints
if writer == "own":
    import keras
    from keraformer.models import build_transformer_model
    keras.utils.set_random_seed(1)
    build_transformer_model(return_keras_model=False, **json.loads(source)).save(target)
else:
    import numpy as np
    with np.load(source) as data:
        arrays = {name: data[name] for name in data.files}
    if writer == "tf":
        checkpoints.write_tf_checkpoint(arrays, os.path.join(target, "bert_model.ckpt"))
    elif writer == "hf":
        with open(os.path.join(target, "config.json")) as f:
            config = json.load(f)
        checkpoints.write_hf_directory(target, arrays, config)
    else:
        checkpoints.write_safetensors(os.path.join(target, "model.safetensors"), arrays)
print("FINISHED", flush=True)
"""

LOOPING_CHILD = r"""
import json, os, sys
import numpy as np
from keraformer import checkpoints
writer, target, source = sys.argv[1:4]
with np.load(source) as data:
    versions = [{n[2:]: data[n] for n in data.files if n.startswith(p)} for p in ("a/", "b/")]
with open(os.path.join(target, "config.json")) as f:
    config = json.load(f)
print("READY", flush=True)
i = 0
while True:
    if writer == "hf":
        checkpoints.write_hf_directory(target, versions[i % 2], config)
    else:
        checkpoints.write_safetensors(os.path.join(target, "model.safetensors"), versions[i % 2])
    i += 1
"""


def build(seed):
    import keras
    keras.utils.set_random_seed(seed)
    return build_transformer_model(return_keras_model=False, **CONFIG)


@pytest.fixture(scope="module")
def models():
    return build(0), build(1)


def weights(builder):
    return [np.asarray(w) for w in builder.model.weights]


def assert_same_weights(loaded, expected):
    assert len(loaded) == len(expected)
    for a, b in zip(loaded, expected):
        np.testing.assert_array_equal(a, b)


def staging_folders(directory):
    return [n for n in os.listdir(directory) if n.startswith(checkpoints.STAGING_PREFIX)]


def snapshot(directory):
    """``{name: bytes}`` of the files directly in ``directory``."""
    return {n: open(os.path.join(directory, n), "rb").read() for n in os.listdir(directory)
            if os.path.isfile(os.path.join(directory, n))}


def read_line(process, timeout):
    """The child's next stdout line, or fail (with its stderr) after ``timeout`` seconds."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        process.kill()
        pytest.fail(f"child gave no line in {timeout} s: {process.stderr.read()[-3000:]}")
    line = process.stdout.readline()
    if not line:
        process.wait()
        pytest.fail(f"child exited ({process.returncode}): {process.stderr.read()[-3000:]}")
    return line


def spawn(script, *args):
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill(process):
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def write_previous(writer, builder, directory):
    """Save ``builder`` into ``directory`` with ``writer``; return a function that loads the
    directory's weights back (as a model, through the public loaders)."""
    if writer == "own":
        builder.save(directory)
        return lambda: weights(load_pretrained(directory, return_keras_model=False))
    if writer == "hf":
        builder.save_pretrained(directory)
        return lambda: weights(load_pretrained(directory, return_keras_model=False))
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(builder.hf_config(), f)
    if writer == "tf":
        builder.save_weights_as_checkpoint(os.path.join(directory, "bert_model.ckpt"))
        config = os.path.join(directory, "config.json")
        path = os.path.join(directory, "bert_model.ckpt")
        return lambda: weights(build_transformer_model(config, path, return_keras_model=False))
    checkpoints.write_safetensors(os.path.join(directory, "model.safetensors"),
                                  builder.hf_arrays(), {"format": "pt"})
    return lambda: weights(load_pretrained(directory, return_keras_model=False))


# (writer, where the child pauses): in the Keras weights file after 3 datasets; before the
# first rename (all new files complete, none in place); own format only: before the second
# rename (new weights file in place under the other name, old config still current).
PAUSES = [("own", "h5:3"), ("own", "replace:2"), ("hf", "replace:1"), ("tf", "replace:1"),
          ("safetensors", "replace:1")]


@pytest.mark.parametrize("writer, pause", PAUSES, ids=["-".join(p) for p in PAUSES])
def test_save_killed_mid_write_keeps_the_previous_checkpoint(writer, pause, models, tmp_path):
    old, new = models
    directory = str(tmp_path / "checkpoint")
    load = write_previous(writer, old, directory)
    before = snapshot(directory)
    if writer == "own":
        source = json.dumps(CONFIG)
    else:
        source = str(tmp_path / "new.npz")
        np.savez(source, **(new.checkpoint_arrays() if writer == "tf" else new.hf_arrays()))
    child = spawn(PAUSED_CHILD, writer, directory, source, pause)
    try:
        line = read_line(child, CHILD_TIMEOUT)
        assert line.startswith("PAUSED"), f"the save finished without pausing: {line!r}"
        # New content exists, but only in a staging folder; the checkpoint is untouched
        # (under "replace:2" the new weights file sits under the name the config does not use).
        staged = staging_folders(directory)
        assert staged and os.listdir(os.path.join(directory, staged[0]))
        after = snapshot(directory)
        assert {n: after[n] for n in before} == before
    finally:
        kill(child)
    assert_same_weights(load(), weights(old))
    assert not np.array_equal(weights(old)[0], weights(new)[0])  # B differs, so this can fail
    # the next save removes the killed save's staging folder (its process is gone)
    load = write_previous(writer, new, directory)
    assert not staging_folders(directory)
    assert_same_weights(load(), weights(new))


def test_a_save_leaves_the_staging_folder_of_a_running_save_alone(models, tmp_path):
    """A save while another process's save into the same directory is paused mid-write
    keeps that save's staging folder intact; once that process is killed, the next save
    removes it."""
    old, new = models
    directory = str(tmp_path / "checkpoint")
    write_previous("safetensors", old, directory)
    source = str(tmp_path / "new.npz")
    np.savez(source, **new.hf_arrays())
    child = spawn(PAUSED_CHILD, "safetensors", directory, source, "replace:1")
    try:
        assert read_line(child, CHILD_TIMEOUT).startswith("PAUSED")
        staged = {name: snapshot(os.path.join(directory, name))
                  for name in staging_folders(directory)}
        assert staged and all(staged.values())
        write_previous("safetensors", old, directory)
        assert {name: snapshot(os.path.join(directory, name))
                for name in staging_folders(directory)} == staged
    finally:
        kill(child)
    write_previous("safetensors", new, directory)
    assert not staging_folders(directory)


@pytest.mark.parametrize("writer", ["safetensors", "hf"])
def test_rewrite_killed_at_random_moments_leaves_one_complete_version(writer, models, tmp_path):
    from safetensors.numpy import load_file

    old, new = models
    rng = np.random.default_rng(13)
    # 8 MiB a version, so that one write (with its fsyncs) takes tens of milliseconds and
    # most kills land inside one.
    versions = [dict(b.hf_arrays(), filler=np.full((2048, 1024), i, "float32"))
                for i, b in enumerate(models)]
    directory = str(tmp_path / "checkpoint")
    write_previous(writer, old, directory)
    checkpoints.write_safetensors(os.path.join(directory, "model.safetensors"), versions[0])
    source = str(tmp_path / "versions.npz")
    np.savez(source, **{f"{p}{n}": a for p, v in zip(("a/", "b/"), versions) for n, a in v.items()})
    config = json.load(open(os.path.join(directory, "config.json")))
    tries, mid_write = 6, 0
    for _ in range(tries):
        child = spawn(LOOPING_CHILD, writer, directory, source)
        try:
            assert read_line(child, CHILD_TIMEOUT).startswith("READY")
            time.sleep(rng.uniform(0.05, 0.4))
        finally:
            kill(child)
        staged = staging_folders(directory)  # killed while a version was being written
        mid_write += bool(staged)
        for name in staged:
            shutil.rmtree(os.path.join(directory, name))
        path = os.path.join(directory, "model.safetensors")
        ours, theirs = checkpoints.read_safetensors(path), load_file(path)
        matches = [all(np.array_equal(ours[n], v[n]) and np.array_equal(theirs[n], v[n])
                       for n in v) and set(ours) == set(v) for v in versions]
        assert any(matches), "the weights file holds neither the old nor the new version"
        assert json.load(open(os.path.join(directory, "config.json"))) == config
    assert mid_write >= 1, f"no kill out of {tries} landed during a write"


WRITERS = {
    "own": ["keraformer.json", "model.weights.h5"],
    "hf": ["config.json", "model.safetensors"],
    "safetensors": ["model.safetensors"],
    "tf": ["bert_model.ckpt.index", "bert_model.ckpt.data-00000-of-00001", "checkpoint"],
}
SYMLINKS = [(writer, name) for writer, names in WRITERS.items() for name in names]


@pytest.mark.parametrize("writer, name", SYMLINKS, ids=["-".join(s) for s in SYMLINKS])
def test_save_replaces_a_symlinked_file_and_leaves_its_target_alone(writer, name, models,
                                                                    tmp_path):
    old, _ = models
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    os.symlink(outside, directory / name)
    load = write_previous(writer, old, str(directory))
    assert outside.read_text() == "precious"
    assert not os.path.islink(directory / name) and os.path.isfile(directory / name)
    assert_same_weights(load(), weights(old))


def test_failed_save_leaves_the_directory_as_it_was(models, tmp_path):
    old, _ = models
    directory = str(tmp_path / "checkpoint")
    old.save(directory)
    before = snapshot(directory)

    def save_weights(path):
        with open(path, "wb") as f:
            f.write(b"half a weights file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoints.write_keraformer_directory(directory, {"model": "bert"}, save_weights)
    assert snapshot(directory) == before and not staging_folders(directory)
    assert_same_weights(weights(load_pretrained(directory, return_keras_model=False)),
                        weights(old))


def test_own_saves_alternate_weights_files_and_remove_the_stale_one(models, tmp_path):
    old, new = models
    directory = str(tmp_path / "checkpoint")
    for i, builder in enumerate([old, new, old]):
        builder.save(directory)
        name = checkpoints.OWN_WEIGHTS[i % 2]
        assert sorted(os.listdir(directory)) == sorted(["keraformer.json", name])
        assert json.load(open(os.path.join(directory, "keraformer.json")))["weights"] == name
        assert_same_weights(weights(load_pretrained(directory, return_keras_model=False)),
                            weights(builder))
