"""The generated reference pages, rewritten by ``python -m awch_scale.docgen``.

``docs/quantities.md`` comes from the variable registry (:mod:`awch_scale.variables`);
``docs/settings.md`` from the analysis settings (:mod:`awch_scale.settings`) and the
other recipe sections (:mod:`awch_scale.run.recipe`). Tests keep both current.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from awch_scale.run.recipe import (
    CosineSpec,
    DataSpec,
    GaussSpec,
    ModelSpec,
    RunsSpec,
    TrainSpec,
)
from awch_scale.settings import AnalysisSettings, Settings
from awch_scale.variables import VARIABLES, returned

ROOT = Path(__file__).resolve().parents[1]



BEGIN, END = "<!-- BEGIN variables (generated) -->", "<!-- END variables (generated) -->"
_STAGE_TITLES = {
    "eigen": "Hessian eigenbasis (SPEC 2)", "covariance": "Noise covariance (SPEC 3, Eq. 2)",
    "awd": "Activity-weight duality (SPEC 4, Eq. 8-15, 55-71)", "fisher": "Fisher (SPEC 5)",
    "statistics": "Statistics (SPEC 6)", "spectra": "Spectra beyond the top k (SPEC 6)",
    "suppression": "Suppression experiment (SPEC 7, App. B.3)",
    "provenance": "Provenance (per analysis)", "training": "Training (SPEC 8)",
    "store": "Bookkeeping (SPEC 8)",
}


def variable_tables() -> str:
    """The generated part of ``docs/quantities.md``: one table per stage."""
    out = [BEGIN, "", "_Generated from `awch_scale/variables.py` by "
           "`python -m awch_scale.docgen`; do not edit by hand. *stored*: the dtype in "
           "the store; *returned*: the dtype `analyze_checkpoint` returns (model: the "
           "model's)._", ""]
    for stage, title in _STAGE_TITLES.items():
        rows = [v for v in VARIABLES.values() if v.stage == stage]
        if not rows:
            continue
        out += [f"### {title}", "", "| name | dims | stored | returned | units | definition |",
                "| --- | --- | --- | --- | --- | --- |"]
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
            out.append(f"| `{v.name}` | {', '.join(v.dims) or '—'} | {v.dtype} | {returned(v)} | "
                       f"{v.units} | {v.long_name}: {desc}{extra} |")
        out.append("")
    out.append(END)
    return "\n".join(out)


def update_variable_docs(path: str | Path) -> bool:
    """Rewrite the generated block of ``path``; returns True if the file changed."""
    path = Path(path)
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    new = pattern.sub(lambda _m: variable_tables(), text) if pattern.search(text) else (
        text.rstrip() + "\n\n" + variable_tables() + "\n")
    if new != text:
        path.write_text(new)
    return new != text



def _attribute_docs(cls: type[BaseModel]) -> dict[str, str]:
    """``name: text`` entries of the Google-style ``Attributes:`` section of ``cls``."""
    doc = (cls.__doc__ or "").split("Attributes:", 1)
    out: dict[str, str] = {}
    if len(doc) < 2:
        return out
    current = None
    for line in doc[1].splitlines():
        text = line.strip()
        if not text:
            continue
        head, sep, rest = text.partition(": ")
        if sep and head.isidentifier() and line.startswith(" " * 8) and \
                not line.startswith(" " * 12):
            current = head
            out[current] = rest
        elif current:
            out[current] += " " + text
    return out


def settings_markdown() -> str:
    """``docs/settings.md``: every ``analysis`` key with its default and meaning."""
    lines = ["# Analysis settings", "",
             "_Generated from `awch_scale/settings.py` and `awch_scale/run/recipe.py` by "
             "`python -m awch_scale.docgen`; do not edit by hand._", "",
             "Every key below sits under `analysis:` in a recipe and is a keyword of "
             "`analyze_checkpoint` (sections take a dict, or `null` to switch the stage off).",
             ""]

    def section(cls: type[BaseModel], prefix: str) -> None:
        docs = _attribute_docs(cls)
        lines.extend([f"## `{prefix.rstrip('.') or 'analysis'}`", "",
                      (cls.__doc__ or "").strip().splitlines()[0].replace("``", "`"), "",
                      "| key | default | meaning |", "| --- | --- | --- |"])
        nested = []
        for name, f in cls.model_fields.items():
            sub = [a for a in (f.annotation, *getattr(f.annotation, "__args__", ()))
                   if isinstance(a, type) and issubclass(a, Settings)]
            default = f.get_default(call_default_factory=True)
            shown = "on" if sub and default is not None else ("`null`" if default is None
                                                                else f"`{default!r}`")
            text = docs.get(name, "").replace("``", "`").replace("|", "\\|")
            lines.append(f"| `{prefix}{name}` | {shown} | {text} |")
            if sub:
                nested.append((sub[0], f"{prefix}{name}."))
        lines.append("")
        for cls_, pre in nested:
            section(cls_, pre)

    section(AnalysisSettings, "")
    return "\n".join(lines)


RECIPE_SECTIONS: tuple[tuple[type[BaseModel], str], ...] = (
    (DataSpec, "data"), (GaussSpec, "data.gauss"), (ModelSpec, "model"),
    (TrainSpec, "train"), (CosineSpec, "train.cosine"), (RunsSpec, "runs"))
"""The recipe sections documented after the analysis keys, with their key prefix."""


def _default(cls: type[BaseModel], name: str) -> str:
    value = cls.model_fields[name].get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "on"
    return "`null`" if value is None else f"`{value!r}`"


def recipe_markdown() -> str:
    """The tables of the recipe sections other than ``analysis``."""
    lines = ["# Recipe sections", "",
             "The other sections of a recipe (`recipes/*.yaml`), validated by "
             "`awch_scale/run/recipe.py`; an unknown key or a key of another architecture "
             "or data set is refused with a message naming it.", ""]
    for cls, prefix in RECIPE_SECTIONS:
        docs = _attribute_docs(cls)
        summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        lines.extend([f"## `{prefix}`", "", summary.replace("``", "`"), "",
                      "| key | default | meaning |", "| --- | --- | --- |"])
        for name in cls.model_fields:
            text = docs.get(name, "").replace("``", "`").replace("|", "\\|")
            lines.append(f"| `{prefix}.{name}` | {_default(cls, name)} | {text} |")
        lines.append("")
    return "\n".join(lines)


def settings_reference() -> str:
    """The whole of ``docs/settings.md``: the analysis keys, then the recipe sections."""
    return settings_markdown() + "\n" + recipe_markdown()


def main() -> None:
    """Rewrite docs/quantities.md's generated block and docs/settings.md."""
    quantities = ROOT / "docs" / "quantities.md"
    print(f"{quantities}: {'updated' if update_variable_docs(quantities) else 'up to date'}")
    (ROOT / "docs" / "settings.md").write_text(settings_reference() + "\n")
    print(f"{ROOT / 'docs' / 'settings.md'}: written")


if __name__ == "__main__":  # pragma: no cover
    main()
