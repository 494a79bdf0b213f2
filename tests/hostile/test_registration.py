"""``import keraformer`` registers every serializable class: a fresh Python process that runs
only ``import keraformer`` loads saved ``.keras`` models (layers, losses, optimizers) with
``keras.saving.load_model`` in safe mode and gets identical outputs.

One child process loads everything saved here and reports back, so the suite pays for one
interpreter start; each model, each registered class and the import's footprint are separate
cases.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from keraformer.losses import EMOLoss
from keraformer.models import build_transformer_model
from keraformer.optimizers import AdamW
from tests.references import config_for

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE_FOLDERS = ("src/keraformer", "attentions", "positions", "losses", "optimizers", "models")
REGISTERED = re.compile(r"@keras\.saving\.register_keras_serializable\(package=\"keraformer\"\)"
                        r"\s*\n(?:@[^\n]*\n)*\s*(?:class|def)\s+(\w+)")
ENCODER = dict(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=16, attention_key_size=4, dropout_rate=0.0)
T5 = dict(vocab_size=30, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2,
          relative_attention_num_buckets=8, relative_attention_max_distance=20,
          dropout_rate=0.0)


def registered_names_in_source():
    """Every ``package="keraformer"`` registration in the package sources, by file."""
    names = {}
    for folder in PACKAGE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name in REGISTERED.findall(path.read_text(encoding="utf-8")):
                names[name] = str(path.relative_to(ROOT))
    return names


SOURCE_NAMES = registered_names_in_source()


def saved_models():
    """name -> a function building the model to save."""
    def trained_with_keraformer_objects():
        model = keras.Sequential([keras.Input((3, 2)), keras.layers.Dense(5)])
        cost = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
        model.compile(optimizer=AdamW(1e-3, accumulation_steps=2),
                      loss=EMOLoss(cost, ignore_index=-100))
        rng = np.random.default_rng(1)
        model.fit(rng.normal(size=(4, 3, 2)).astype("float32"), rng.integers(0, 5, (4, 3)),
                  verbose=0)
        return model

    return {
        "bert-pool-mlm": lambda: build_transformer_model(model="bert", with_pool=True,
                                                         with_mlm=True, **ENCODER),
        "bert-unilm": lambda: build_transformer_model(model="bert", application="unilm",
                                                      with_mlm="linear", **ENCODER),
        "roformer-lm": lambda: build_transformer_model(model="roformer", application="lm",
                                                       **ENCODER),
        "gau_alpha": lambda: build_transformer_model(model="gau_alpha",
                                                     **config_for("gau_alpha", ENCODER)),
        "t5": lambda: build_transformer_model(model="t5", **T5),
        "compiled-adamw-emo": trained_with_keraformer_objects,
    }


MODEL_NAMES = sorted(saved_models())

CHILD = r"""
import json, sys
import keras
before = {m.split(".")[0] for m in sys.modules}
import keraformer
report = {"new_packages": sorted({m.split(".")[0] for m in sys.modules} - before),
          "modules": sorted(sys.modules)}
import numpy as np
folder, names = sys.argv[1], sys.argv[2:]
report.update({
          "registry": sorted(k for k in keras.saving.get_custom_objects()
                             if k.startswith("keraformer>"))})
for name in names:
    try:
        model = keras.saving.load_model(f"{folder}/{name}.keras")  # safe mode
        inputs = [np.load(f"{folder}/{name}.input{i}.npy") for i in range(len(model.inputs))]
        outputs = keras.tree.flatten(model.predict(
            inputs[0] if len(inputs) == 1 else inputs, verbose=0))
        for i, out in enumerate(outputs):
            np.save(f"{folder}/{name}.loaded{i}.npy", np.asarray(out))
        optimizer = getattr(model, "optimizer", None)
        loss = getattr(model, "loss", None)
        report[name] = {"outputs": len(outputs),
                        "optimizer": None if optimizer is None else
                        [type(optimizer).__module__, type(optimizer).__name__,
                         optimizer.get_config().get("accumulation_steps")],
                        "loss": None if loss is None or isinstance(loss, str) else
                        [type(loss).__module__, type(loss).__name__]}
    except Exception as error:
        report[name] = {"error": f"{type(error).__name__}: {error}"}
print("REPORT" + json.dumps(report))
"""


def model_inputs(model, rng):
    """Token ids in [1, 30), segment ids in {0, 1}, normal floats for float inputs."""
    def one(x):
        if "int" not in str(x.dtype):
            return rng.normal(size=(2,) + tuple(x.shape[1:])).astype("float32")
        high = 2 if "segment" in x.name.lower() else 30
        return rng.integers(1 if high == 30 else 0, high, size=(2, 5)).astype("int32")
    return [one(x) for x in model.inputs]


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    """Save every model here, then load them all in one fresh process: its report and the
    outputs computed in this process."""
    folder = tmp_path_factory.mktemp("saved")
    rng = np.random.default_rng(2)
    expected = {}
    for name, make in saved_models().items():
        model = make()
        inputs = model_inputs(model, rng)
        for i, x in enumerate(inputs):
            np.save(folder / f"{name}.input{i}.npy", x)
        expected[name] = [np.asarray(y) for y in keras.tree.flatten(model.predict(
            inputs[0] if len(inputs) == 1 else inputs, verbose=0))]
        model.save(folder / f"{name}.keras")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", CHILD, str(folder), *MODEL_NAMES],
                            capture_output=True, text=True, env=env, cwd=folder, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[-1][len("REPORT"):]), folder, expected


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fresh_process_loads_the_saved_model_with_identical_outputs(child, name):
    report, folder, expected = child
    assert "error" not in report[name], report[name].get("error")
    assert report[name]["outputs"] == len(expected[name])
    for i, want in enumerate(expected[name]):
        got = np.load(folder / f"{name}.loaded{i}.npy")
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # same float32 graph


def test_fresh_process_restores_keraformer_optimizer_and_loss(child):
    entry = child[0]["compiled-adamw-emo"]
    assert entry["optimizer"] == ["keraformer.optimizers.accumulation", "AdamW", 2]
    assert entry["loss"] == ["keraformer.losses.emo", "EMOLoss"]


def test_source_scan_finds_the_known_registrations():
    # guards the scan itself: these must be found, or the parametrized cases below are empty
    for name in ("Embedding", "MultiHeadAttention", "EMOLoss", "AdamW", "TransformerBlock"):
        assert name in SOURCE_NAMES


@pytest.mark.parametrize("name", sorted(SOURCE_NAMES),
                         ids=[f"{n}@{SOURCE_NAMES[n]}" for n in sorted(SOURCE_NAMES)])
def test_every_registered_class_is_registered_by_import_keraformer(child, name):
    assert f"keraformer>{name}" in child[0]["registry"], (
        f"{name} ({SOURCE_NAMES[name]}) is registered only when its module is imported; "
        f"import that module in src/keraformer/__init__.py")


def test_import_keraformer_adds_no_heavy_package_to_import_keras(child):
    """Registration costs ``import keras`` and keraformer's own modules, nothing more: no
    second backend, no torch or transformers."""
    new = set(child[0]["new_packages"])
    assert "keraformer" in new
    assert not new & {"tensorflow", "jax", "torch", "transformers", "huggingface_hub"}, new
    assert "keraformer.models.bert" in child[0]["modules"]
