"""``docs/settings.md``: every recipe key with its default and meaning, generated.

The analysis keys come from :func:`awch_scale.settings.settings_markdown`; the
``data``, ``model``, ``train`` and ``runs`` sections from the recipe schema
(:mod:`awch_scale.run.recipe`), read off each section's ``Attributes:`` docstring and
field defaults. ``tests/test_docs.py`` checks that the file is current; regenerate it
with ``python -m awch_scale.run.recipe_docs``.
"""

from __future__ import annotations

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
from awch_scale.settings import _attribute_docs, settings_markdown

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


if __name__ == "__main__":  # pragma: no cover
    target = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
    target.write_text(settings_reference() + "\n")
    print(f"{target}: written")
