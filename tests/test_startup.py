"""Start-up and help: ``import awch_scale.cli`` (what ``awch-scale --help`` loads) imports
none of torch, xarray, zarr, matplotlib, scipy; the library's names still load on first
use; help paragraphs are never broken mid-sentence by the source's line breaks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from awch_scale.cli import app
from awch_scale.results.format import paragraphs

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "xarray", "zarr", "matplotlib", "scipy", "numpy", "dask")
COMMANDS = ["analyze", "verify", "validate", "show", "plot", "report", "table", "sweep"]


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, check=True)
    return done.stdout


def test_cli_import_is_light():
    out = _python("import sys, awch_scale.cli\n"
                  f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    assert out.split() == []


def test_help_imports_nothing_heavy():
    out = _python("import sys\nfrom typer.testing import CliRunner\n"
                  "from awch_scale.cli import app\n"
                  f"for c in {[[], *([c] for c in COMMANDS)]!r}:\n"
                  "    assert CliRunner().invoke(app, [*c, '--help']).exit_code == 0\n"
                  f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    assert out.split() == []


def test_library_names_load_on_first_use():
    out = _python("import awch_scale, sys\nprint('torch' in sys.modules)\n"
                  "from awch_scale import analyze_checkpoint, Recipe, load_recipe\n"
                  "print(analyze_checkpoint.__module__, Recipe.__name__, 'torch' in sys.modules)")
    assert out.split() == ["False", "awch_scale.analysis.checkpoint", "Recipe", "True"]
    with pytest.raises(AttributeError):
        import awch_scale

        awch_scale.no_such_name  # noqa: B018


def test_paragraphs():
    text = """First line
        goes on.

        Second paragraph
        continues ``here``.

        - an item
          wrapped
        - another"""
    assert paragraphs(text) == ("First line goes on.\n\nSecond paragraph continues 'here'."
                                "\n\n- an item wrapped\n- another")


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_help_does_not_break_mid_sentence(command):
    """A help line that ends well before the width, followed by a line that goes on with
    the sentence, is a break the source made, not the terminal."""
    width = 160
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for line, after in zip(lines, lines[1:], strict=False):
        text, nxt = line.strip(" │"), after.strip(" │")
        if line.startswith(("╭", "╰")) or not text or not nxt:
            continue
        if text.endswith((".", ":", "]")) or nxt.startswith(("-", "[", "*")):
            continue
        if nxt[:1].islower():  # the sentence goes on: this line was full
            end = len(line.rstrip().rstrip("│").rstrip())
            assert end >= width - 30, (command, line, after)
