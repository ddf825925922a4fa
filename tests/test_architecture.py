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


PACKAGE = ROOT / "awch_scale"


def test_at_most_twelve_top_level_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, f"{len(top)} modules directly in awch_scale/: {top}"


def test_no_module_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 450}
    assert not long, f"modules over 450 lines (split them by job): {long}"


def test_architecture_doc_names_every_subpackage():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    subpackages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert subpackages, "no subpackages found"
    missing = [s for s in subpackages if f"{s}/" not in doc]
    assert not missing, f"docs/architecture.md does not describe {missing}"
