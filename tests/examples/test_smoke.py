"""Each example's ``--smoke`` mode (a tiny random model on generated data) runs to its final
report on the active backend, in a fresh Python as a user would run it."""

import os
import re
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "examples")
REPORTS = {
    "sentiment_classification.py": r"test accuracy (\d\.\d+)",
    "ner_crf.py": r"test entity F1 (\d\.\d+)",
    "ner_global_pointer.py": r"test entity F1 (\d\.\d+)",
    "unilm_seq2seq.py": r"test exact match (\d\.\d+)",
    "mt5_seq2seq.py": r"test exact match (\d\.\d+)",
    "self_pretrain.py": r"listops self-pretrained: test accuracy (\d\.\d+)",
}


@pytest.mark.parametrize("script", sorted(REPORTS))
def test_example_smoke_mode_runs(script):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), "--smoke"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    match = re.search(REPORTS[script], done.stdout)
    assert match, done.stdout[-2000:]
    assert 0.0 <= float(match.group(1)) <= 1.0
