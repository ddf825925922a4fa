"""The tables of docs/transformers.md from the measurement stores (issue 19).

Reads ``store/measure/<recipe>.zarr`` of the ``recipes/transformers/*_block0.yaml``
recipes (written by ``awch-scale analyze RECIPE --store store/measure/<recipe>.zarr``)
and prints, per recipe, checkpoint epoch and target Linear: gamma_emp (``covar``) and
gamma_AWD (``h2``) per seed and their mean +- std, the fits' r^2, mu_offdiag against
mu_rand and comm_err against comm_err_rand and comm_err_unrelated (means over seeds),
then the training accuracies. Only finished analyses (``done``) count.

Run: ``python -m benchmarks.transformer_table [STORE ...]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import xarray as xr

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("vit_digits_ce_block0", "vit_digits_mse_block0", "gpt_modular_ce_block0")


def _pm(values: np.ndarray) -> str:
    v = values[np.isfinite(values)]
    if not len(v):
        return "-"
    return f"{v.mean():.2f} +- {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v[0]:.2f}"


def _seeds(values: np.ndarray) -> str:
    return " / ".join("-" if not np.isfinite(x) else f"{x:.2f}" for x in values)


def store_table(path: Path) -> list[str]:
    """Markdown lines for one store."""
    ds = xr.open_zarr(path, consolidated=False)
    if "gamma" not in ds:
        return [f"`{path.name}`: no finished analysis yet.", ""]
    done = ds.done.values.astype(bool)  # (run, epoch)
    seeds = ds.run.values.tolist()
    layers = ds.layer.values.tolist() if "layer" in ds.dims else [ds.attrs.get("target")]
    out = [f"### `{path.stem}` (seeds {', '.join(map(str, seeds))})", "",
           "| epoch | target | gamma_emp per seed | gamma_emp | gamma_AWD per seed | "
           "gamma_AWD | r^2 emp / AWD | mu_offdiag / mu_rand | comm_err / rand / unrelated |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e, epoch in enumerate(ds.epoch.values.tolist()):
        ok = done[:, e]
        for layer in layers:
            sel = {"epoch": epoch} | ({"layer": layer} if "layer" in ds.dims else {})
            g = ds.gamma.sel(sel)
            emp = np.where(ok, g.sel(estimator="covar").values, np.nan)
            awd = np.where(ok, g.sel(estimator="h2").values, np.nan)
            r2 = ds.gamma_r2.sel(sel)
            r2e = np.nanmean(np.where(ok, r2.sel(estimator="covar").values, np.nan))
            r2a = np.nanmean(np.where(ok, r2.sel(estimator="h2").values, np.nan))

            def mean(name, sel=sel, ok=ok):
                return float(np.nanmean(np.where(ok, ds[name].sel(sel).values, np.nan)))

            out.append(
                f"| {epoch} | `{layer}` | {_seeds(emp)} | {_pm(emp)} | {_seeds(awd)} | "
                f"{_pm(awd)} | {r2e:.2f} / {r2a:.2f} | {mean('mu_offdiag'):.3f} / "
                f"{mean('mu_rand'):.3f} | {mean('comm_err'):.3f} / {mean('comm_err_rand'):.3f}"
                f" / {mean('comm_err_unrelated'):.3f} |")
    out.append("")
    acc = []
    for name in ("train_acc", "test_acc"):
        if name in ds:
            last = ds[name].isel(train_epoch=-1).values if "train_epoch" in ds[name].dims \
                else ds[name].values[..., -1]
            acc.append(f"{name} at the end: {_seeds(np.asarray(last, dtype=float))}")
    out += ["; ".join(acc) + ".", ""]
    return out


def main(paths: list[str]) -> str:
    """All tables as one markdown text."""
    stores = [Path(p) for p in paths] or [REPO / "store" / "measure" / f"{r}.zarr"
                                          for r in RECIPES]
    lines: list[str] = []
    for path in stores:
        lines += store_table(path) if path.exists() else [f"`{path}`: not measured.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
