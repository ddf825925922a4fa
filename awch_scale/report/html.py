"""One ``index.html`` for a report: no scripts, no network; the figures (PNG, SVG or PDF)
lie beside it and are referenced by relative file name, so the folder can be copied or
zipped as it is."""

from __future__ import annotations

import datetime as _dt
import html
from dataclasses import dataclass
from pathlib import Path

from awch_scale._version import __version__

_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:90%}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:85%}
figure{margin:1.5em 0}img{max-width:100%;border:1px solid #eee}
figcaption{font-size:90%;color:#444}.skipped li{color:#666}"""


@dataclass(frozen=True)
class Section:
    """A drawn figure: ``name``, the PNG's file name beside index.html, its caption."""

    name: str
    file: str
    caption: str


def markdown_table_html(text: str) -> str:
    """The pipe tables of ``text`` as HTML tables; other lines as paragraphs."""
    out, rows = [], []

    def flush():
        if rows:
            head, *body = rows
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head)
                       + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>"
                                                            for c in r) + "</tr>"
                                           for r in body) + "</table>")
            rows.clear()

    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|"):
            cells = [c.strip() for c in s.strip("|").split("|")]
            if not all(set(c) <= {"-", ":", " "} for c in cells):
                rows.append(cells)
            continue
        flush()
        if s:
            out.append(f"<p>{html.escape(s)}</p>")
    flush()
    return "\n".join(out)


def _embed(fig: Section) -> str:
    """A PNG or SVG as an image; a PDF as an embedded object with a link to the file."""
    e = html.escape
    if fig.file.endswith(".pdf"):
        return (f"<object data='{e(fig.file)}' type='application/pdf' width='100%' "
                f"height='600'><a href='{e(fig.file)}'>{e(fig.file)}</a></object>")
    return f"<img src='{e(fig.file)}' alt='{e(fig.name)}'>"


def write_index(out: Path, *, title: str, source: str, recipe: str,
                tables: list[tuple[str, str]], figures: list[Section],
                skipped: list[str]) -> Path:
    """Write ``out/index.html`` and return its path.

    Args:
        out: the report folder (the figures are already in it).
        title: page title.
        source: the store or sweep directory it was made from.
        recipe: the recipe text (shown verbatim; for several stores, each under its name).
        tables: (heading, Markdown pipe table) pairs.
        figures: drawn figures, in order.
        skipped: one line per figure that was not drawn, saying why.
    """
    e = html.escape
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>",
             f"<p>from <code>{e(source)}</code>, awch-scale {__version__}, {now}</p>"]
    for heading, table in tables:
        parts += [f"<h2>{e(heading)}</h2>", markdown_table_html(table)]
    parts.append("<h2>Figures</h2>")
    for fig in figures:
        parts.append(f"<figure id='{e(fig.name)}'>{_embed(fig)}"
                     f"<figcaption><b>{e(fig.name)}</b>: {e(fig.caption)}</figcaption>"
                     "</figure>")
    if skipped:
        parts.append("<h2>Skipped</h2><ul class='skipped'>"
                     + "".join(f"<li>{e(s)}</li>" for s in skipped) + "</ul>")
    parts += ["<h2>Recipe</h2>", f"<pre>{e(recipe)}</pre>", "</body></html>"]
    path = out / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
