"""The repository root does not shadow the installed package: Python started at the root
(where ``sys.path[0]`` is the root) imports every subpackage of the installed keraformer.
Before the core moved to ``src/keraformer``, the root's ``keraformer/`` folder was found
first and ``import keraformer.models`` failed there."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPACKAGES = ("attentions", "positions", "losses", "optimizers", "models", "tokenizers")


def test_every_subpackage_imports_at_the_repository_root():
    imports = "; ".join(f"import keraformer.{name}" for name in SUBPACKAGES)
    code = f"import keraformer; {imports}; print(keraformer.__file__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    location = result.stdout.strip().splitlines()[-1]
    assert location != os.path.join(ROOT, "keraformer", "__init__.py")
    assert not os.path.exists(os.path.join(ROOT, "keraformer"))
