"""The package's layout: the import contracts of pyproject.toml hold (layers, no import
upward, no building block importing the AWD feature, no import circle)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts():
    pytest.importorskip("importlinter")
    # lint_imports reads [tool.importlinter] from the pyproject.toml in the working dir
    import os

    from importlinter.cli import lint_imports

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert lint_imports() == 0, "an import contract is broken: run `lint-imports`"
    finally:
        os.chdir(cwd)
