"""MkDocs hook: give mkdocstrings the package tree users import.

pyproject's ``package-dir`` installs ``attentions/`` as ``keraformer.attentions`` (and so on),
but griffe, which reads the sources for mkdocstrings, finds a package by walking one folder.
Before the build this hook assembles ``build/docs-package/keraformer`` from symbolic links —
the files of ``src/keraformer`` plus one link per mapped subpackage, read from
``pyproject.toml`` — and mkdocs.yml points mkdocstrings there. Nothing is imported or copied.
"""

import os
import shutil

from mkdocs.plugins import event_priority

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

TREE = os.path.join("build", "docs-package")


@event_priority(100)  # before mkdocstrings reads its `paths`, which must exist by then
def on_config(config):
    root = os.path.dirname(config.config_file_path)
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        package_dirs = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    tree = os.path.join(root, TREE)
    shutil.rmtree(tree, ignore_errors=True)
    package = os.path.join(tree, "keraformer")
    os.makedirs(package)
    top = os.path.join(root, package_dirs["keraformer"])
    for name in os.listdir(top):
        if name != "__pycache__":
            os.symlink(os.path.join(top, name), os.path.join(package, name))
    for dotted, folder in package_dirs.items():
        if dotted != "keraformer":
            link = os.path.join(tree, *dotted.split("."))
            if not os.path.lexists(link):
                os.symlink(os.path.join(root, folder), link)
    return config
