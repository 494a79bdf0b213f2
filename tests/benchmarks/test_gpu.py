"""``benchmarks/gpu.py --tiny``: the prepared GPU run works end to end on a CPU, under the
active backend, so the device call cannot rot between the sessions that are lent a GPU."""

import json
import os
import pathlib
import subprocess
import sys

import keras

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_tiny_run_measures_every_section(tmp_path):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "gpu.json").read_text())
    sections = data["sections"]
    assert list(sections) == ["correctness", "bert", "t5", "attention", "memory"]
    assert not [name for name, s in sections.items() if "error" in s]
    assert sections["correctness"]["tests"]["collected"] > 300  # the selection still exists
    check = sections["correctness"]["bert_outputs"]
    assert check["float32_ok"] and check["bfloat16_ok"], check
    assert all(r["keraformer_tokens_per_s"] > 0 for r in sections["bert"]["rows"])
    assert all(r["tokens_equal"] for r in sections["t5"]["rows"]), sections["t5"]["rows"]
    assert all("seconds" in r for r in sections["attention"]["rows"]), sections["attention"]
    if keras.backend.backend() == "jax":
        assert all(r.get("confirmed_ran") is True for r in sections["memory"]["rows"])
    else:
        assert "skipped" in sections["memory"]
    table = (tmp_path / "gpu.md").read_text()
    assert "T5-base generation" in table and "Long sequences" in table
