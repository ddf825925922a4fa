"""Tables that fit a terminal: :class:`Grid` holds a table's text before it meets a width;
:func:`fit` splits its value columns into as many rich tables as the width needs, each
repeating the label columns (run, epoch, layer), so that no number is ever cut (``1.…``)
and no table loses its labels. Within a table rich may wrap a cell between words (a
``mean ± stderr`` over two lines), never inside one."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.cells import cell_len
from rich.table import Table

BORDER = 3
"""Cells a column adds to a boxed rich table besides its text: padding either side and one
rule."""


@dataclass
class Grid:
    """A table's text: ``labels`` (repeated in every part) and ``columns`` headers, and
    rows of ``(label cells, value cells)``.

    Attributes:
        title: the table's title.
        labels: headers of the label columns (``run``, ``epoch``, ``layer``).
        columns: headers of the value columns.
        rows: one ``(label cells, value cells)`` pair per row.
    """

    title: str
    labels: list[str]
    columns: list[str]
    rows: list[tuple[list[str], list[str]]] = field(default_factory=list)

    def add(self, labels: list[str], cells: list[str]) -> None:
        """Append a row."""
        self.rows.append((list(labels), list(cells)))


def _longest_word(texts) -> int:
    return max((cell_len(w) for t in texts for w in str(t).split()), default=1)


def _widest(texts) -> int:
    return max((cell_len(str(t)) for t in texts), default=1)


def _label_widths(grid: Grid) -> list[int]:
    return [_widest([h, *(r[0][i] for r in grid.rows)]) for i, h in enumerate(grid.labels)]


def _bounds(grid: Grid, j: int) -> tuple[int, int]:
    """(narrowest, widest) text width of value column ``j``: its longest word, its
    longest cell or header on one line."""
    texts = [grid.columns[j], *(r[1][j] for r in grid.rows)]
    return _longest_word(texts), _widest(texts)


def parts(grid: Grid, width: int) -> list[list[int]]:
    """The value columns of ``grid`` (indices) packed in order into parts that fit
    ``width`` cells beside the label columns, each column at its narrowest (its longest
    word); a column too wide for any part is a part of its own."""
    room = width - sum(w + BORDER for w in _label_widths(grid)) - 1
    out: list[list[int]] = [[]]
    used = 0
    for j in range(len(grid.columns)):
        need = _bounds(grid, j)[0] + BORDER
        if out[-1] and used + need > room:
            out.append([])
            used = 0
        out[-1].append(j)
        used += need
    return out if out[0] else []


def widths(grid: Grid, chunk: list[int], width: int) -> list[int]:
    """Text widths of the value columns ``chunk`` in a table of at most ``width`` cells:
    each at its widest, then the widest that can still give narrowed by one cell at a
    time, never below its longest word, until the table fits."""
    room = width - sum(w + BORDER for w in _label_widths(grid)) - 1 - BORDER * len(chunk)
    lo, hi = zip(*(_bounds(grid, j) for j in chunk), strict=True) if chunk else ((), ())
    out = list(hi)
    while sum(out) > room:
        j = max(range(len(out)), key=lambda i: (out[i] > lo[i], out[i]))
        if out[j] <= lo[j]:
            break
        out[j] -= 1
    return out


def fit(grid: Grid, width: int) -> list[Table]:
    """``grid`` as rich tables no wider than ``width`` (:func:`parts`, :func:`widths`);
    the label columns never wrap, value cells wrap between words and fold rather than
    lose a character."""
    chunks = parts(grid, width) or [[]]
    tables = []
    for n, chunk in enumerate(chunks, 1):
        title = grid.title + (f" ({n}/{len(chunks)})" if len(chunks) > 1 else "")
        table = Table(title=title)
        for head, w in zip(grid.labels, _label_widths(grid), strict=True):
            table.add_column(head, justify="right", no_wrap=True, width=w)
        for j, w in zip(chunk, widths(grid, chunk, width), strict=True):
            table.add_column(grid.columns[j], justify="right", overflow="fold", width=w)
        for labels, cells in grid.rows:
            table.add_row(*labels, *(cells[j] for j in chunk))
        tables.append(table)
    return tables
