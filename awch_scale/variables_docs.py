"""The generated tables of ``docs/quantities.md``, from the variable registry
(:mod:`awch_scale.variables`): ``python -m awch_scale.variables`` (or this module) rewrites
them, and a test keeps them current."""

from __future__ import annotations

import re
from pathlib import Path

from awch_scale.variables import VARIABLES

BEGIN, END = "<!-- BEGIN variables (generated) -->", "<!-- END variables (generated) -->"
_STAGE_TITLES = {
    "eigen": "Hessian eigenbasis (SPEC 2)", "covariance": "Noise covariance (SPEC 3, Eq. 2)",
    "awd": "Activity-weight duality (SPEC 4, Eq. 8-15, 55-71)", "fisher": "Fisher (SPEC 5)",
    "statistics": "Statistics (SPEC 6)", "spectra": "Spectra beyond the top k (SPEC 6)",
    "suppression": "Suppression experiment (SPEC 7, App. B.3)",
    "provenance": "Provenance (per analysis)", "training": "Training (SPEC 8)",
    "store": "Bookkeeping (SPEC 8)",
}


def markdown_tables() -> str:
    """The generated part of ``docs/quantities.md``: one table per stage."""
    out = [BEGIN, "", "_Generated from `awch_scale/variables.py` by "
           "`python -m awch_scale.variables`; do not edit by hand._", ""]
    for stage, title in _STAGE_TITLES.items():
        rows = [v for v in VARIABLES.values() if v.stage == stage]
        if not rows:
            continue
        out += [f"### {title}", "", "| name | dims | dtype | units | definition |",
                "| --- | --- | --- | --- | --- |"]
        for v in rows:
            flags = []
            if v.diag_only:
                flags.append("diag_only allowed")
            if v.gamma:
                flags.append("gamma estimator" + (f" ({v.role})" if v.role else ""))
            extra = f" [{'; '.join(flags)}]" if flags else ""
            desc = (v.description or v.long_name).replace("|", "\\|")
            if v.accuracy:
                desc += f"; accuracy: {v.accuracy}"
            out.append(f"| `{v.name}` | {', '.join(v.dims) or '—'} | {v.dtype} | {v.units} | "
                       f"{v.long_name}: {desc}{extra} |")
        out.append("")
    out.append(END)
    return "\n".join(out)


def update_docs(path: str | Path) -> bool:
    """Rewrite the generated block of ``path``; returns True if the file changed."""
    path = Path(path)
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    new = pattern.sub(lambda _m: markdown_tables(), text) if pattern.search(text) else (
        text.rstrip() + "\n\n" + markdown_tables() + "\n")
    if new != text:
        path.write_text(new)
    return new != text


if __name__ == "__main__":  # pragma: no cover
    target = Path(__file__).resolve().parents[1] / "docs" / "quantities.md"
    print(f"{target}: {'updated' if update_docs(target) else 'up to date'}")
