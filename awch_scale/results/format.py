"""How every reader (table, summary, report) prints a number: a finite value with a format
spec, and ``-`` for a value that is absent or not finite (an unfinished analysis stores NaN);
and the Markdown pipe tables the table and the report write."""

from __future__ import annotations

import math


def number(value, spec: str = ".3f") -> str:
    """``value`` formatted with ``spec``, or ``-`` when it is None, NaN or infinite.

    Args:
        value: anything ``float()`` accepts (a Python or numpy scalar, a 0-d array or
            DataArray), or None.
        spec: a format spec (``".3f"``, ``".4g"``, ...).
    """
    if value is None:
        return "-"
    x = float(value)
    return format(x, spec) if math.isfinite(x) else "-"


def plus_minus(mean, std, spec: str = ".3f") -> str:
    """``mean ± std`` formatted with ``spec``: ``-`` without a finite mean, the mean alone
    without a finite std (a single run has none)."""
    if mean is None or not math.isfinite(float(mean)):
        return "-"
    spread = number(std, spec)
    return number(mean, spec) + (f" ± {spread}" if spread != "-" else "")


def pipe_row(cells) -> str:
    """One row of a Markdown pipe table."""
    return "| " + " | ".join(cells) + " |"


def pipe_head(head) -> list[str]:
    """The header row of a Markdown pipe table and its ``--- |`` separator line."""
    return [pipe_row(head), "|" + " --- |" * len(head)]


def paragraphs(text: str | None) -> str:
    """A docstring as help text: dedented, each paragraph on one line (the terminal wraps
    it, so no sentence breaks where the source did), list items (``- ``) on lines of their
    own, RST ``literals`` in single quotes."""
    import inspect
    import re

    out = []
    for para in inspect.cleandoc(text or "").split("\n\n"):
        lines: list[str] = []
        for line in para.splitlines():
            line = line.strip()
            if lines and not line.startswith(("- ", "* ")):
                lines[-1] += " " + line
            else:
                lines.append(line)
        out.append("\n".join(lines))
    return re.sub(r"``([^`]+)``", r"'\1'", "\n\n".join(out))
