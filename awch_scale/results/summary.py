"""Text summaries of a store for ``awch-scale show``: one row per run, epoch (and layer),
as :class:`~awch_scale.results.terminal.Grid` that :func:`show_tables` fits to a width.

- :func:`summary_table`: train accuracy, top eigenvalues, gamma_emp and gamma_AWD.
- :func:`evidence_tables`: gamma of every estimator present, and the paper's evidence
  against chance (mu_offdiag against mu_h0 and mu_rand with its z-score; comm_err
  against comm_err_rand and comm_err_unrelated; the trace and the suppression slopes
  when stored).
- :func:`provenance_tree`: versions, device, and how each analysis was computed
  (:mod:`awch_scale.results.provenance`).
"""

from __future__ import annotations

import numpy as np

from awch_scale.results.format import number
from awch_scale.results.provenance import provenance_tree
from awch_scale.results.queries import layer_views
from awch_scale.results.terminal import Grid, fit
from awch_scale.variables import GAMMA_ROLES

__all__ = ["evidence_tables", "provenance_tree", "show_tables", "summary_table"]

EMP, AWD = "gamma_emp", "gamma_AWD"
"""The roles :func:`summary_table` shows (their estimators come from the registry)."""


def _rows(ds):
    """(label cells, selection) for every run, epoch and layer of the store."""
    for seed in ds.run.values:
        for epoch in ds.epoch.values:
            for layer, sel in layer_views(ds.sel(run=seed, epoch=epoch)):
                yield [str(seed), str(epoch), *([str(layer)] if layer is not None else [])], sel


def _label_columns(ds) -> list[str]:
    return ["run", "epoch", *(["layer"] if "layer" in ds.dims else [])]


def show_tables(ds, width: int) -> list:
    """Every table of ``awch-scale show`` as rich tables no wider than ``width``."""
    return [t for grid in (summary_table(ds), *evidence_tables(ds)) for t in fit(grid, width)]


def summary_table(ds) -> Grid:
    """Per run and epoch: train accuracy, top eigenvalues, gamma_emp (and gamma_AWD)."""
    has_awd = "gamma" in ds and GAMMA_ROLES[AWD] in list(ds.get("estimator", []).values)
    roles = [EMP, *([AWD] if has_awd else [])]
    table = Grid(f"{ds.attrs.get('recipe_name', '')}  (loss {ds.attrs.get('loss')}, "
                 f"B = {ds.attrs.get('batch_size')}, k = {ds.attrs.get('k')}; gamma ± its "
                 "fit's stderr)", _label_columns(ds),
                 ["train acc", "lambda_1..3", *roles, "done"])
    for label, sel in _rows(ds):
        done = bool(sel.done.values)
        row = [number(sel.train_acc.values, ".3f")]
        if done and "hess_eigval" in sel:
            lam = sel.hess_eigval.values[:3]
            row.append(", ".join(number(v, ".3g") for v in lam))
            for est in (GAMMA_ROLES[role] for role in roles):
                g = sel.gamma.sel(estimator=est)
                se = sel.gamma_stderr.sel(estimator=est)
                row.append(f"{number(g)} ± {number(se)}")
        else:
            row += ["-"] * (2 + has_awd)
        row.append("yes" if done else "no")
        table.add(label, row)
    return table


EVIDENCE = (
    ("mu_offdiag", ".3f"), ("mu_h0", ".3f"), ("mu_rand", ".3f"), ("z_score", ".1f"),
    ("comm_err", ".3f"), ("comm_err_rand", ".3f"), ("comm_err_unrelated", ".3f"),
)
"""Alignment and commutation statistics shown against their chance levels, when stored."""
BEYOND = (("hess_trace", ".4g"), ("hess_trace_se", ".2g"), ("comm_full", ".3f"),
          ("comm_full_se", ".2g"))
"""Whole-block quantities (SPEC 6 beyond the top k), shown with the suppression slopes."""


def evidence_tables(ds) -> list[Grid]:
    """gamma per estimator, and the alignment/commutation statistics against chance."""
    tables = []
    done = ds["done"].values.astype(bool) if "done" in ds else None
    if "gamma" in ds and "estimator" in ds.dims and done is not None and done.any():
        estimators = [str(e) for e in ds.estimator.values]
        named = ", ".join(f"{est} = {role}" for role, est in GAMMA_ROLES.items())
        t = Grid(f"gamma per estimator ({named})", _label_columns(ds), estimators)
        for label, sel in _rows(ds):
            if bool(sel.done.values):
                t.add(label, [number(sel.gamma.sel(estimator=e)) for e in estimators])
        tables.append(t)
    beyond = [(n, f) for n, f in BEYOND if n in ds]
    if "supp_gamma" in ds and "variant" in ds.dims:
        beyond += [(f"supp_gamma:{v}", ".3f") for v in ds.variant.values]
    for shown, title in (
            ([(n, f) for n, f in EVIDENCE if n in ds],
             "evidence against chance: mu_offdiag vs mu_h0 / mu_rand (z), comm_err vs "
             "comm_err_rand / comm_err_unrelated"),
            (beyond, "beyond the top k: trace, whole-block commutation, suppression slopes")):
        if shown and done is not None and done.any():
            tables.append(_scalar_table(ds, shown, title))
    return tables


def _scalar_table(ds, shown, title: str) -> Grid:
    """One row per finished analysis, one column per (possibly indexed) scalar."""
    t = Grid(title, _label_columns(ds), [n for n, _ in shown])
    for label, sel in _rows(ds):
        if not bool(sel.done.values):
            continue
        cells = []
        for name, spec in shown:
            if name.startswith("supp_gamma:"):
                value = sel.supp_gamma.sel(variant=name.split(":", 1)[1]).values
            else:
                value = sel[name].values
            cells.append(", ".join(number(v, spec) for v in np.ravel(value)))
        t.add(label, cells)
    return t
