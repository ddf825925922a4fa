"""Shared test cases: the tiny recipes the CLI tests run, and helpers to run them.

Import as ``from cases import TINY, write_recipe, run_cli`` (``tests/conftest.py`` puts
this folder on ``sys.path``); test modules never import each other. The numeric case
registry (tiny models, losses, targets and their session-cached dense float64
references) is ``tests/problems.py``.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from awch_scale.cli import app

TINY = {
    "name": "tiny",
    "data": {"dataset": "gauss", "classes": [0, 1], "train_per_class": 30, "test_size": 20,
             "gauss": {"dim": 6, "separation": 2.0}},
    "model": {"arch": "fc", "width": 6},
    "loss": "ce",
    "train": {"lr": 0.1, "batch_size": 10, "epochs": 3},
    "runs": {"seeds": [0, 1]},
    "analysis": {"target": "fc2", "epochs": [1, 3], "k": 5, "chunk_size": 16},
    "dtype": "float64",
}


def write_recipe(tmp_path: Path, **changes) -> Path:
    recipe = yaml.safe_load(yaml.safe_dump(TINY))
    recipe["store"] = str(tmp_path / "out" / "tiny.zarr")
    for dotted, value in changes.items():
        node = recipe
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is _DELETE:
            node.pop(leaf)
        else:
            node[leaf] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


_DELETE = object()
"""Value of :func:`write_recipe` changes that removes the key."""
runner = CliRunner()


def run_cli(*args: str):
    return runner.invoke(app, list(args))



def analysed_recipe(folder: Path, **changes) -> tuple[Path, Path]:
    """(recipe, store): :func:`write_recipe` in ``folder`` with ``changes``, analysed by
    ``awch-scale analyze -q`` (which must exit 0); the store is
    ``folder/out/tiny.zarr``."""
    path = write_recipe(folder, **changes)
    result = run_cli("analyze", str(path), "-q")
    assert result.exit_code == 0, result.output
    return path, folder / "out" / "tiny.zarr"
