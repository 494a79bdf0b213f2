"""``load_pretrained("hf://org/name", revision=None)`` through ``huggingface_hub`` and its
cache, on a cache directory built by hand in the hub's layout (``models--org--name/blobs``,
``snapshots/<commit>/`` of symlinks to the blobs, ``refs/<branch>``) with
``HF_HUB_CACHE`` pointing at it and ``HF_HUB_OFFLINE=1`` (no network is used).

Checked: the default branch and an explicit revision (branch, commit) load the snapshot's
weights exactly; a name or revision not in the cache is a ``FileNotFoundError`` naming it
and the cache; a malformed name a ``ValueError``; without ``huggingface_hub`` an
``ImportError`` naming the package; ``revision`` for a local path is refused.
"""

import hashlib
import os
import shutil
import sys

import numpy as np
import pytest

from keraformer.models import build_transformer_model, load_pretrained

CONFIG = dict(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=24)
IDS = np.array([[5, 6, 7, 0]], "int32")
COMMITS = {"main": "a" * 40, "v1": "b" * 40}


def add_snapshot(cache, repo, commit, branch, folder):
    """Put the files of ``folder`` into ``cache`` as snapshot ``commit`` of model ``repo``,
    named by ``refs/<branch>``, as ``huggingface_hub`` lays them out."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    os.makedirs(root / "blobs", exist_ok=True)
    os.makedirs(snapshot)
    os.makedirs(root / "refs", exist_ok=True)
    for name in os.listdir(folder):
        data = open(os.path.join(folder, name), "rb").read()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.join("..", "..", "blobs", blob.name), snapshot / name)
    (root / "refs" / branch).write_text(commit)


def outputs(model):
    return np.asarray(model([IDS, np.zeros_like(IDS)]))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A cache with two snapshots of ``org/tiny`` (branches main and v1, different
    weights); returns the two builders saved there."""
    cache = tmp_path / "cache"
    builders = {}
    for branch, commit in COMMITS.items():
        builder = build_transformer_model(**CONFIG, return_keras_model=False)
        folder = tmp_path / branch
        builder.save_pretrained(str(folder))
        add_snapshot(cache, "org/tiny", commit, branch, folder)
        shutil.rmtree(folder)
        builders[branch] = builder
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache, builders


def test_default_branch_and_revisions_load_from_the_cache(hub):
    _, builders = hub
    for revision, branch in ((None, "main"), ("v1", "v1"), (COMMITS["v1"], "v1"),
                             (COMMITS["main"], "main")):
        model = load_pretrained("hf://org/tiny", revision=revision)
        np.testing.assert_array_equal(outputs(model), outputs(builders[branch].model))


def test_not_cached_offline_is_named(hub):
    cache, _ = hub
    with pytest.raises(FileNotFoundError, match=r"hf://org/missing.*HF_HUB_OFFLINE=1"):
        load_pretrained("hf://org/missing")
    with pytest.raises(FileNotFoundError, match=rf"'v2'.*{cache.name}"):
        load_pretrained("hf://org/tiny", revision="v2")


@pytest.mark.parametrize("name", ["hf://", "hf://a/b/c", "hf://org/"])
def test_malformed_names(hub, name):
    with pytest.raises(ValueError, match="hf://"):
        load_pretrained(name)


def test_missing_package_is_named(hub, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import` now fails
    with pytest.raises(ImportError, match="huggingface_hub"):
        load_pretrained("hf://org/tiny")


def test_revision_for_a_local_path_is_refused(tmp_path):
    with pytest.raises(ValueError, match="revision"):
        load_pretrained(str(tmp_path), revision="main")
