"""A sweep's grid: ``--grid KEY=V1,V2`` parsed into values, the points' names, and each
point's recipe (the base recipe with its overrides, validated, including the settings
checks that need no data)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from awch_scale.analysis.validation import check_settings_alone
from awch_scale.errors import RecipeError, SettingsError


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["train.lr=0.05,0.1", ...]`` -> ``{"train.lr": [0.05, 0.1], ...}``.

    The values are read as one YAML flow sequence, so a value may itself be a list:
    ``runs.seeds=[0,1],[2,3]`` gives two points, ``runs.seeds=[0,1,2]`` one.
    """
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise RecipeError(f"--grid '{item}': expected KEY=V1,V2,... "
                              "(e.g. train.lr=0.05,0.1)")
        if key in grid:
            raise RecipeError(f"--grid key '{key}' is given twice")
        grid[key] = _grid_values(item, values)
    if not grid:
        raise RecipeError("a sweep needs at least one --grid KEY=V1,V2,...")
    return grid


def _grid_values(item: str, values: str) -> list:
    """The values of one ``--grid KEY=VALUES``: YAML scalars or flow lists, split at the
    commas outside brackets."""
    if re.search(r"(^|,)\s*(,|$)", values):
        raise RecipeError(f"--grid '{item}': an empty value between commas (write null "
                          "for a YAML null)")
    try:
        parsed = yaml.safe_load(f"[{values}]")
    except yaml.YAMLError as exc:
        raise RecipeError(f"--grid '{item}': the values are not YAML ({str(exc)[:200]}); "
                          "write scalars or lists, e.g. train.lr=0.05,0.1 or "
                          "runs.seeds=[0,1],[2,3]") from None
    bad = [v for v in parsed if isinstance(v, dict)]
    if bad:
        raise RecipeError(f"--grid '{item}': {bad[0]} is a mapping; a grid value is a "
                          "scalar or a list (quote a string with ': ' in it)")
    return parsed


def short_keys(keys: list[str]) -> dict[str, str]:
    """Dotted key -> its last part, or the whole key where last parts collide."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def point_name(values: dict, short: dict[str, str]) -> str:
    """``lr=0.1,label_noise=0``: the point's folder stem (and recipe-name suffix)."""
    return ",".join(f"{short[k]}={_fmt(v)}" for k, v in values.items())


def _fmt(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip() \
        .replace("/", "_").replace(" ", "")


def apply_overrides(text: str, values: dict, *, name: str, store: Path) -> str:
    """The recipe text with ``values`` (dotted keys) set, renamed and re-stored; validated.

    Raises:
        RecipeError: the modified recipe is not valid (the message names the field).
    """
    from awch_scale.run.recipe import parse_recipe

    recipe = yaml.safe_load(text)
    for dotted, value in values.items():
        node = recipe
        *parents, leaf = dotted.split(".")
        for p in parents:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"--grid key '{dotted}': '{p}' is not a section")
            node = child
        node[leaf] = value
    recipe["name"] = re.sub(r"[^A-Za-z0-9_.\-]", "_", f"{recipe.get('name', 'sweep')}.{name}"
                            .replace(",", "_").replace("=", "-"))
    recipe["store"] = str(store)
    data = recipe.get("data") or {}
    if data.get("root") and not Path(data["root"]).is_absolute():
        data["root"] = str(Path(data["root"]).resolve())
    out = yaml.safe_dump(recipe, sort_keys=False)
    settings = parse_recipe(out, f"sweep point {name}").analysis.settings()
    try:  # what needs no data (n_fit <= k, ...): a grid of such points is refused whole
        check_settings_alone(settings)
    except SettingsError as exc:
        raise RecipeError(f"invalid recipe sweep point {name}: {exc}") from None
    return out
