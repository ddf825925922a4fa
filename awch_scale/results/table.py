"""``awch-scale table``: the paper's Tables 1 and 3 for one's own stores.

One row per store (or per point of a sweep directory): dataset, model, C (number of
classes), loss, read from the recipe text the store keeps in its ``recipe`` attribute,
then gamma_emp (estimator ``covar``), gamma_AWD (``h2``) and gamma'_AWD (``c_awd_raw``)
as mean +- std over the finished runs at one epoch (SPEC 6 ``gamma``). The std is the
sample standard deviation over runs (ddof = 1), left out with a single run. When the
recipe's name is a row of ``recipes/table1/paper.csv`` the paper's values stand beside
the measured ones.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import yaml

from awch_scale.errors import AwchError
from awch_scale.results.format import pipe_head, pipe_row, plus_minus
from awch_scale.results.manifest import is_sweep_dir
from awch_scale.results.queries import done_mask, layer_views, select
from awch_scale.variables import GAMMA_ESTIMATORS, GAMMA_ROLES


def _column(role: str) -> str:
    """The CSV column of a gamma role: lower case, a prime spelled ``_prime``
    (``gamma'_AWD`` -> ``gamma_awd_prime``), as ``paper.csv`` names it."""
    return role.replace("'", "").lower() + ("_prime" if "'" in role else "")


HEADERS: dict[str, str] = {_column(role): role for role in GAMMA_ROLES}
"""Column -> the paper's name for it (the registry's ``role``)."""

GAMMA_COLUMNS: dict[str, str] = {_column(role): est for role, est in GAMMA_ROLES.items()}
"""Table column -> ``estimator`` of the store's ``gamma`` (SPEC 6 roles)."""



def gamma_columns(estimators=None) -> dict[str, str]:
    """Table column -> estimator for ``estimators`` (registry names in the order given, a
    list or comma-separated text; None: :data:`GAMMA_COLUMNS`). A named gamma keeps its
    column (``covar`` -> ``gamma_emp``); any other estimator is ``gamma_<name>``.

    Raises:
        AwchError: a name that is no power-law estimator; the message lists the allowed.
    """
    if estimators is None:
        return dict(GAMMA_COLUMNS)
    if isinstance(estimators, str):
        estimators = [e.strip() for e in estimators.split(",") if e.strip()]
    unknown = [e for e in estimators if e not in GAMMA_ESTIMATORS]
    if unknown or not estimators:
        raise AwchError(f"unknown estimator(s) {', '.join(unknown) or '(none given)'}; "
                        f"allowed: {', '.join(GAMMA_ESTIMATORS)}")
    named = {est: col for col, est in GAMMA_COLUMNS.items()}
    return {named.get(e, f"gamma_{e}"): e for e in dict.fromkeys(estimators)}


def header(column: str, estimator: str) -> str:
    """The Markdown header of a gamma column: the paper's name, or ``gamma(<estimator>)``."""
    return HEADERS.get(column, f"gamma({estimator})")


PAPER_CSV = Path(__file__).resolve().parents[2] / "recipes" / "table1" / "paper.csv"
"""The paper's Table 1 and Table 3 values, one row per ``recipes/table1`` recipe."""

_DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR-10", "gauss": "Gaussian mixture",
             "digits": "digits"}
_MODELS = {"fc": "MLP", "mlp": "MLP", "cnn": "CNN"}


def mean_std(values) -> tuple[float, float, int]:
    """(mean, sample std (ddof = 1; NaN for one value), n) of the finite values."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return np.nan, np.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else np.nan, len(v)


def read_paper(path: str | Path = PAPER_CSV) -> dict[str, dict[str, float]]:
    """recipe name -> {column: value, column_std: value} from ``paper.csv`` (NaN if blank)."""
    path = Path(path)
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    out = {}
    for r in rows:
        out[r["recipe"]] = {c: float(r[c]) if r[c] else np.nan
                            for c in r if c.startswith("gamma")}
    return out


def describe_recipe(text: str) -> dict:
    """dataset, model, C and loss of a recipe text, as the paper's tables name them."""
    r = yaml.safe_load(text or "") or {}
    data, model = r.get("data") or {}, r.get("model") or {}
    dataset = data.get("dataset", "gauss")
    return {"recipe": r.get("name", ""),
            "dataset": _DATASETS.get(dataset, dataset),
            "model": _MODELS.get(model.get("arch", "fc"), model.get("arch", "fc")),
            "C": len(data.get("classes", range(10))),
            "loss": str(r.get("loss", "ce")).upper()}


def store_rows(path: str | Path, epoch: int | None = None,
               paper: dict | None = None, *, runs=None, columns: dict | None = None
               ) -> list[dict]:
    """The table rows of one store (one per layer for several targets).

    Args:
        path: a store written by ``awch-scale analyze``.
        epoch: checkpoint epoch (default: the store's last).
        paper: :func:`read_paper` output (default: ``recipes/table1/paper.csv``).
        runs: the runs (seeds) to summarise (default: all).
        columns: :func:`gamma_columns` (default: :data:`GAMMA_COLUMNS`).

    Returns:
        Dicts with ``store``, the :func:`describe_recipe` fields, ``epoch``, ``runs``
        (finished runs), ``<col>_mean``, ``<col>_std`` for the ``columns`` and, for a
        Table 1 recipe, ``paper_<col>[_std]`` for the paper's named ones.
    """
    from awch_scale.results.store import ResultStore

    columns = GAMMA_COLUMNS if columns is None else columns
    ds = select(ResultStore.for_reading(path, check_arrays=False).open(), runs,
                source=f"store {path}")
    epochs = [int(e) for e in ds.epoch.values]
    epoch = epochs[-1] if epoch is None else int(epoch)
    if epoch not in epochs:
        raise AwchError(f"store {path} has no epoch {epoch}; its epochs are {epochs}")
    info = describe_recipe(ds.attrs.get("recipe", ""))
    info["recipe"] = ds.attrs.get("recipe_name", info["recipe"])
    paper = read_paper() if paper is None else paper
    rows = []
    for layer, one in layer_views(ds):
        done = done_mask(one).sel(epoch=epoch).values
        row = {"store": str(path), **info, **({"layer": str(layer)} if layer else {}),
               "epoch": epoch, "runs": int(done.sum())}
        names = [str(e) for e in one.estimator.values] if "estimator" in one.coords else []
        for col, est in columns.items():
            vals = (one.gamma.sel(epoch=epoch, estimator=est).values[done]
                    if "gamma" in one and est in names else [])
            row[f"{col}_mean"], row[f"{col}_std"], _ = mean_std(vals)
        for col in columns:
            if info["recipe"] in paper and col in GAMMA_COLUMNS:
                row[f"paper_{col}"] = paper[info["recipe"]].get(col, np.nan)
                row[f"paper_{col}_std"] = paper[info["recipe"]].get(f"{col}_std", np.nan)
        rows.append(row)
    return rows


def sweep_rows(sweep_dir: str | Path, epoch: int | None = None,
               columns: dict | None = None) -> tuple[list[dict], list[str]]:
    """One row per point of a sweep directory (``sweep.json``), the swept keys first
    (``columns``: :func:`gamma_columns`)."""
    from awch_scale.results.manifest import read_manifest

    manifest = read_manifest(sweep_dir)
    keys = list(manifest["keys"])
    paper = read_paper()
    rows = []
    for point in manifest["points"]:
        swept = {k: point["values"][k] for k in keys}
        store = Path(point["store"])
        if point["status"] == "done" and (store / "zarr.json").exists():
            for row in store_rows(store, epoch, paper, columns=columns):
                rows.append({**swept, "status": "done", **row})
        else:
            rows.append({**swept, "status": point["status"], "store": str(store),
                         "reason": point.get("reason", "")})
    return rows, keys


def rows_for(paths: list[str | Path], epoch: int | None = None,
             columns: dict | None = None) -> tuple[list[dict], list[str]]:
    """Rows for stores and sweep directories (``columns``: :func:`gamma_columns`); second
    value: the swept keys (if any)."""
    rows: list[dict] = []
    keys: list[str] = []
    paper = read_paper()
    for p in paths:
        if is_sweep_dir(p):
            r, k = sweep_rows(p, epoch, columns)
            rows += r
            keys += [x for x in k if x not in keys]
        else:
            rows += store_rows(p, epoch, paper, columns=columns)
    return rows, keys


def render(rows: list[dict], keys: list[str] = (), fmt: str = "md",
           columns: dict | None = None) -> str:
    """The table as Markdown (``mean ± std`` to 3 decimals) or CSV (full precision), with
    the gamma ``columns`` of :func:`gamma_columns` (default: :data:`GAMMA_COLUMNS`)."""
    columns = GAMMA_COLUMNS if columns is None else columns
    paper_cols = [c for c in columns if c in GAMMA_COLUMNS]
    has_paper = bool(paper_cols) and any(f"paper_{paper_cols[0]}" in r for r in rows)
    has_layer = any("layer" in r for r in rows)
    swept = list(keys)
    lead = [*swept, *(["status"] if swept else []), "recipe", "dataset", "model", "C", "loss",
            *(["layer"] if has_layer else []), "epoch", "runs"]
    if fmt == "csv":
        cols = [*lead]
        for col in columns:
            cols += [f"{col}_mean", f"{col}_std"]
        if has_paper:
            for col in paper_cols:
                cols += [f"paper_{col}", f"paper_{col}_std"]
        if swept:
            cols.append("reason")
        buf = io.StringIO()
        w = csv.DictWriter(buf, cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: _csv(r.get(c, "")) for c in cols})
        return buf.getvalue()
    if fmt != "md":
        raise AwchError(f"table format '{fmt}' is not known; allowed: md, csv")
    head = [*lead, *(header(c, e) for c, e in columns.items()),
            *([f"paper {HEADERS[c]}" for c in paper_cols] if has_paper else [])]
    lines = pipe_head(head)
    for r in rows:
        cells = [str(r.get(c, "")) for c in lead]
        cells += [plus_minus(r.get(f"{c}_mean"), r.get(f"{c}_std")) for c in columns]
        if has_paper:  # the paper prints two decimals
            cells += [plus_minus(r.get(f"paper_{c}", np.nan), r.get(f"paper_{c}_std", np.nan),
                                 ".2f") for c in paper_cols]
        lines.append(pipe_row(cells))
    failed = [r for r in rows if r.get("status") == "failed"]
    for r in failed:
        point = ", ".join(f"{k}={r[k]}" for k in swept)
        lines.append(f"\nfailed point {point}: {r.get('reason', '')}")
    return "\n".join(lines) + "\n"


def _csv(v):
    if isinstance(v, float):
        return "" if not np.isfinite(v) else repr(v)
    return json.dumps(v) if isinstance(v, list | dict) else v
