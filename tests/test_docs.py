"""Documentation matches the code: every stored variable is documented."""

from __future__ import annotations

import re
from pathlib import Path

from awch_scale.variables import VARIABLES
from awch_scale.variables_docs import markdown_tables

ROOT = Path(__file__).resolve().parents[1]


def test_every_variable_is_documented():
    text = (ROOT / "docs" / "quantities.md").read_text()
    documented = set(re.findall(r"`([a-z_0-9]+)`", text))
    missing = sorted(set(VARIABLES) - documented)
    assert not missing, f"docs/quantities.md lacks {missing}"


def test_generated_variable_tables_are_current():
    text = (ROOT / "docs" / "quantities.md").read_text()
    assert markdown_tables() in text, (
        "docs/quantities.md is out of date: run `python -m awch_scale.variables`")


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest'
    assert command in readme and command in ci


def test_settings_reference_is_current():
    from awch_scale.settings import settings_markdown

    text = (ROOT / "docs" / "settings.md").read_text()
    assert text == settings_markdown() + "\n", (
        "docs/settings.md is out of date: run `python -m awch_scale.settings`")
