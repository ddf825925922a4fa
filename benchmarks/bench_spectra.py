"""Cost of the SPEC 6 spectra and SPEC 7 suppression stages, and their values on the
embedded digits recipes.

- ``paper_shape``: D = 2500 (FC 784-50-50-10, target fc2), N = 20,000 Gaussian-mixture
  samples, k = 300, r = 50: seconds and peak RSS of each stage of
  :func:`awch_scale.analysis.spectra.spectra_variables` (M, C, H_p top and bottom, trace,
  comm_full, SLQ) and of :func:`awch_scale.analysis.suppression.suppression_variables`.
- ``m_top``: M's top-r eigenvalues at D = width^2 (width 1000: D = 1e6).
- ``digits``: train a digits recipe (recipes/digits_fc_ce.yaml, digits_fc_mse.yaml; seed
  0), then supp_gamma per variant and the mean of xy_corr over the top 20 directions.

Run one with ``python -m benchmarks.bench_spectra <name> [key=value ...]``; it prints JSON.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from benchmarks.common import peak_rss_mib, trained_problem


def _stage(log: dict, name: str, fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    log[name] = round(time.perf_counter() - t0, 2)
    return out


def paper_shape(width: int = 50, n: int = 20000, k: int = 300, r: int = 50,
                probes: int = 20, steps: int = 80, n_probe: int = 100) -> dict:
    from awch_scale.analysis.awd import awd_analysis
    from awch_scale.analysis.context import hessian_operator
    from awch_scale.analysis.spectra import principal_cosines
    from awch_scale.analysis.suppression import suppression_variables
    from awch_scale.linalg.density import broadened_density, lanczos_quadrature
    from awch_scale.linalg.eigen import top_eigenpairs
    from awch_scale.linalg.trace import commutation, hutchinson_trace
    from awch_scale.model.operators import (
        CovarianceOperator,
        IdentityOperator,
        SecondMomentOperator,
    )
    from awch_scale.model.problem import make_problem

    model, x, y = trained_problem(width, n)
    problem = make_problem(model, "fc2", x, y, "ce", chunk_size=2048)
    sec: dict = {}
    H = _stage(sec, "hessian_operator", hessian_operator, problem)
    basis = _stage(sec, "hess_top_k", top_eigenpairs, H, k, tol=1e-4)
    M = _stage(sec, "m_operator", SecondMomentOperator, problem)
    C = _stage(sec, "c_operator", CovarianceOperator, M, 50)
    m = _stage(sec, "m_top_r", top_eigenpairs, M, r, tol=1e-4)
    c = _stage(sec, "c_top_r", top_eigenpairs, C, r, tol=1e-4)
    sigma = float(basis.values[0])
    shifted = M - H + sigma * IdentityOperator(problem)
    hp_top = _stage(sec, "hp_top_r_shifted", top_eigenpairs, shifted, r, tol=1e-4,
                    method="eigsh")
    hp_bot = _stage(sec, "hp_bottom_r", top_eigenpairs, H - M, r, tol=1e-4)
    Vr = basis.vectors[:, :r]
    cosm, cosc = principal_cosines(Vr, m.vectors), principal_cosines(Vr, c.vectors)
    tr = _stage(sec, "trace", hutchinson_trace, H, probes, 0)
    comm = _stage(sec, "comm_full", commutation, H, C, probes, 1)
    quad = _stage(sec, "slq", lanczos_quadrature, H, probes, steps, 0)
    grid, dens = broadened_density(quad, 500, 1e-2, upper=basis.values[0])
    ds = _stage(sec, "awd_probe_spectra", awd_analysis, problem, basis.vectors, basis.values,
                batch_size=50, n_draws=1, n_probe=n_probe, n_partner_batches=1, seed=0,
                store_probe_spectra=True)
    supp, _ = _stage(sec, "suppression", suppression_variables, ds.kappa.values,
                     ds.u_proj.values)
    return {
        "D": problem.D, "N": n, "k": k, "r": r, "probes": probes, "steps": steps,
        "seconds": sec, "peak_rss_mib": round(peak_rss_mib(), 1),
        "threads": torch.get_num_threads(),
        "m_eigval_1": float(m.values[0]), "c_eigval_1": float(c.values[0]),
        "hp_top_1": float(hp_top.values[0] - sigma), "hp_bottom_1": float(-hp_bot.values[0]),
        "principal_cos_mean": float(cosm.mean()), "hc_principal_cos_mean": float(cosc.mean()),
        "hess_trace": tr, "comm_full": comm,
        "density_integral": float(np.trapezoid(dens, grid)),
        "supp_gamma": dict(zip(supp and ["original", "rank1", "rank1_bg", "homogenised"],
                               map(float, supp["supp_gamma"][1]), strict=True)),
        "n_products": {"H": H.n_products, "M": M.n_products},
    }


def hp_top(width: int = 50, n: int = 20000, k: int = 300, r: int = 50,
           tol: float = 1e-4, method: str = "eigsh") -> dict:
    """Only the top of H_p at the paper shape, shifted as in production."""
    from awch_scale.analysis.context import hessian_operator
    from awch_scale.linalg.eigen import top_eigenpairs
    from awch_scale.model.operators import IdentityOperator, SecondMomentOperator
    from awch_scale.model.problem import make_problem

    model, x, y = trained_problem(width, n)
    problem = make_problem(model, "fc2", x, y, "ce", chunk_size=2048)
    sec: dict = {}
    H, M = hessian_operator(problem), SecondMomentOperator(problem)
    lam1 = _stage(sec, "hess_top_1", top_eigenpairs, H, 1, tol=1e-8).values[0]
    shifted = M - H + float(lam1) * IdentityOperator(problem)
    out = _stage(sec, "hp_top_r_shifted", top_eigenpairs, shifted, r, tol=tol, method=method)
    return {"D": problem.D, "N": n, "r": r, "tol": tol, "method": method, "seconds": sec,
            "n_products": shifted.n_products, "hp_top": (out.values[:5] - lam1).tolist(),
            "peak_rss_mib": round(peak_rss_mib(), 1)}


def m_top(width: int = 1000, n: int = 2000, r: int = 50, tol: float = 1e-4,
          method: str = "auto") -> dict:
    from awch_scale.linalg.eigen import top_eigenpairs
    from awch_scale.model.operators import SecondMomentOperator
    from awch_scale.model.problem import make_problem

    model, x, y = trained_problem(width, n)
    problem = make_problem(model, "fc2", x, y, "ce", chunk_size=1000)
    sec: dict = {}
    M = _stage(sec, "m_operator", SecondMomentOperator, problem)
    m = _stage(sec, "m_top_r", top_eigenpairs, M, r, tol=tol, method=method)
    return {"D": problem.D, "N": n, "r": r, "tol": tol, "method": method, "seconds": sec,
            "peak_rss_mib": round(peak_rss_mib(), 1), "n_products": M.n_products,
            "max_residual": float(m.residuals.max()), "m_eigval_1": float(m.values[0])}


def digits(recipe: str = "recipes/digits_fc_ce.yaml", seed: int = 0, n_probe: int = 300,
           top: int = 20) -> dict:
    import tempfile
    from pathlib import Path

    from awch_scale.analysis.awd import awd_analysis
    from awch_scale.analysis.context import hessian_operator
    from awch_scale.analysis.spectra import spectra_variables
    from awch_scale.analysis.suppression import VARIANTS, suppression_variables
    from awch_scale.linalg.eigen import top_eigenpairs
    from awch_scale.model.architectures import build_model
    from awch_scale.model.problem import make_problem
    from awch_scale.run.data import load_data
    from awch_scale.run.recipe import load_recipe
    from awch_scale.run.training import train

    r, _ = load_recipe(recipe)
    data = load_data(r.data)
    torch.manual_seed(seed)
    model = build_model(r.model, data.input_shape)
    epoch = r.analysis.epochs[-1]
    with tempfile.TemporaryDirectory() as tmp:
        res = train(model, data, r.train, r.loss, seed, [epoch], Path(tmp),
                    torch.device("cpu"), torch.float32, progress=False)
        model.load_state_dict(torch.load(Path(tmp) / f"epoch-{epoch:05d}.pt",
                                         weights_only=True))
    target = r.analysis.targets[0]
    problem = make_problem(model, target, data.x_analysis, data.y_analysis, r.loss,
                           dtype=torch.float64)
    H = hessian_operator(problem)
    basis = top_eigenpairs(H, r.analysis.k, tol=1e-6)
    ds = awd_analysis(problem, basis.vectors, basis.values, batch_size=r.train.batch_size,
                      n_draws=1, n_probe=min(n_probe, problem.N), n_partner_batches=1,
                      seed=seed, store_probe_spectra=True)
    supp, _ = suppression_variables(ds.kappa.values, ds.u_proj.values, theta=0.05)
    xy = supp["xy_corr"][1]
    t0 = time.perf_counter()
    spec, _ = spectra_variables(problem, H, basis.vectors, basis.values, r=min(50, r.analysis.k),
                                batch_size=r.train.batch_size, seed=seed)
    seconds_spectra = time.perf_counter() - t0
    return {"recipe": recipe, "seed": seed, "epoch": epoch, "D": problem.D,
            "N": problem.N, "k": r.analysis.k, "n_probe": int(ds.sizes["probe"]),
            "train_acc_final": float(np.asarray(res.history["train_acc"])[-1]),
            "supp_gamma": dict(zip(VARIANTS, map(float, supp["supp_gamma"][1]), strict=True)),
            "xy_corr_mean_top20": float(np.nanmean(xy[:top])),
            "mode_cumfrac_1_mean_top20": float(np.nanmean(supp["mode_cumfrac"][1][0, :top])),
            "seconds_spectra": seconds_spectra,
            "spectra": {n: (float(v) if np.ndim(v) == 0 else [float(u) for u in v[:5]])
                        for n, (_, v) in spec.items() if n != "density"}}


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    kw = {}
    for a in args:
        key, val = a.split("=", 1)
        kw[key] = val if key in ("recipe", "method") else (float(val) if "." in val or "e" in val
                                               else int(val))
    print(json.dumps({name: globals()[name](**kw)}, default=float))
