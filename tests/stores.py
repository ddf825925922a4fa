"""Small stores for the report, table, sweep and notebook tests.

``tiny_recipe`` is the shared tiny case (``cases.TINY``: 2-class Gaussian mixture, FC
width 6, target fc2, D = 36, k = 5) with a small AWD pass; ``make_store`` runs
``awch-scale analyze`` on it in-process (a few seconds). ``with_synthetic`` adds every
registered variable the store lacks (SPEC 5-7, being built elsewhere), with the
registry's dims and seeded positive values, so that every figure's code path runs before
those stages exist.
"""

from __future__ import annotations

from pathlib import Path

import cases
import numpy as np
import xarray as xr
import yaml
from typer.testing import CliRunner

from awch_scale.cli import app
from awch_scale.variables import VARIABLES

TINY = {**yaml.safe_load(yaml.safe_dump(cases.TINY)),
        "analysis": {**cases.TINY["analysis"],
                     "awd": {"draws": 2, "probe": 6, "partner_batches": 2},
                     "spectra": None, "suppression": None}}
"""``cases.TINY`` (2-class Gaussian mixture, FC width 6, fc2, k = 5, 2 seeds, epochs 1
and 3) with a small AWD pass, the Fisher and statistics stages, and without the spectra
and suppression stages (so the report's skipping of absent variables is exercised)."""


def tiny_recipe(folder: Path, name: str = "tiny", **changes) -> Path:
    """Write the tiny recipe (dotted-key changes applied) to ``folder/<name>.yaml``;
    its store is ``folder/<name>.zarr``."""
    recipe = yaml.safe_load(yaml.safe_dump(TINY))
    recipe["name"] = name
    recipe["store"] = str(folder / f"{name}.zarr")
    for dotted, value in changes.items():
        node = recipe
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def make_store(folder: Path, name: str = "tiny", **changes) -> Path:
    """Run ``awch-scale analyze`` on the tiny recipe; returns the store path."""
    path = tiny_recipe(folder, name, **changes)
    result = cli("analyze", path, "-q")
    assert result.exit_code == 0, result.output
    return folder / f"{name}.zarr"


SYNTHETIC_COORDS = {"term": ["c_hh", "c_hg", "c_gg", "c_awd_raw", "c_hh_sd", "c_hh_sd_wd",
                             "covar"],
                    "variant": ["kappa", "kappa_sq", "flat"]}
SYNTHETIC_SIZES = {"rank": 6, "angle": 4, "grid": 50, "mode": 4, "top": 5, "top_": 5}


def with_synthetic(store: Path, out: Path, seed: int = 0) -> list[str]:
    """Copy ``store`` to ``out`` adding every registered variable it lacks (seeded values
    in (0.05, 1], registry dims); returns the added names."""
    ds = xr.open_zarr(store, consolidated=False).load()
    rng = np.random.default_rng(seed)
    added = []
    lead = (ds.sizes["run"], ds.sizes["epoch"])
    for name, var in VARIABLES.items():
        if name in ds or var.dtype not in ("float32", "float64"):
            continue
        if "param" in var.dims or var.stage in ("provenance", "training", "store"):
            continue
        shape = []
        for d in var.dims:
            if d in ds.sizes:
                shape.append(ds.sizes[d])
            elif d in SYNTHETIC_COORDS:
                shape.append(len(SYNTHETIC_COORDS[d]))
            else:
                shape.append(SYNTHETIC_SIZES[d])
        values = rng.uniform(0.05, 1.0, size=lead + tuple(shape))
        if name == "hp_eigval_bottom":
            values = -values
        ds[name] = (("run", "epoch", *var.dims), values.astype(var.dtype))
        added.append(name)
    ds = ds.assign_coords({d: c for d, c in SYNTHETIC_COORDS.items() if d in ds.dims})
    ds = ds.assign_coords(grid=np.linspace(-0.1, 1.0, SYNTHETIC_SIZES["grid"]))
    for c in ("estimator", *SYNTHETIC_COORDS):
        if c in ds.coords:
            ds = ds.assign_coords({c: ds[c].values.astype(object)})
    for v in ds.variables.values():
        v.encoding = {}
    ds.to_zarr(out, mode="w", consolidated=False)
    return added
