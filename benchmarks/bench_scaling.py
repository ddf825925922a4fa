"""Benchmark 4: width scaling of the matrix-free analysis, one process per width.

FC 784-w-w-10, target fc2 (D = w^2), fixed k and N. The stages of ``analyze_checkpoint``
are run one by one with the production functions, each timed with its own peak resident
memory (VmHWM reset at the start of the stage):

- ``eigenpairs``: ``make_problem`` + ``hessian_operator(problem, "auto")`` (Kronecker) +
  ``top_eigenpairs(method="auto")``;
- ``covariance``: ``projected_gradients`` + ``covariance``/``second_moment``/
  ``minibatch_covariance``;
- ``awd``: ``awd_analysis`` with the recipe defaults (T = 20 draws, 100 probes, R = 10).

Growth exponents are least-squares slopes of log(time) and log(memory) on log(D). Memory
is reported as the whole-process peak and as the peak above the process's resident memory
after imports (``base_rss_mib``: Python, torch, scipy).
"""

from __future__ import annotations

import numpy as np

from .common import StagePeak, trained_problem

AWD_DEFAULTS = {"n_draws": 20, "n_probe": 100, "n_partner_batches": 10}


def scaling_worker(width: int, n: int, k: int, batch_size: int, awd: bool = True) -> dict:
    from awch_scale.analysis.awd import awd_analysis
    from awch_scale.analysis.context import hessian_operator
    from awch_scale.analysis.covariance import covariance, minibatch_covariance, second_moment
    from awch_scale.linalg.eigen import top_eigenpairs
    from awch_scale.model.per_sample import projected_gradients
    from awch_scale.model.problem import make_problem

    model, x, y = trained_problem(width, n)
    stages = {}
    with StagePeak() as s:
        problem = make_problem(model, "fc2", x, y, "ce")
        op = hessian_operator(problem, "auto")
        basis = top_eigenpairs(op, k, seed=0)
    stages["eigenpairs"] = {"seconds": s.seconds, "peak_rss_mib": s.peak_mib,
                            "n_products": basis.n_products, "operator": type(op).__name__,
                            "max_residual": float(basis.residuals.max())}
    with StagePeak() as s:
        P = projected_gradients(problem, basis.vectors)
        covariance(P, batch_size), second_moment(P), minibatch_covariance(P, batch_size, 0)
    stages["covariance"] = {"seconds": s.seconds, "peak_rss_mib": s.peak_mib}
    if awd:
        with StagePeak() as s:
            awd_analysis(problem, basis.vectors, basis.values, batch_size=batch_size, seed=0,
                         **AWD_DEFAULTS)
        stages["awd"] = {"seconds": s.seconds, "peak_rss_mib": s.peak_mib}
    return {"width": width, "D": problem.D, "N": n, "k": k, "stages": stages,
            "seconds": sum(st["seconds"] for st in stages.values()),
            "peak_rss_mib": max(st["peak_rss_mib"] for st in stages.values())}


def dense_bytes(D: int, hess_batch: int = 64) -> dict:
    """Memory of the dense reference: H alone, and H, C, E[h^2] plus one batch of
    per-sample Hessians (float32)."""
    return {"H_gib": 4 * D**2 / 2**30, "working_set_gib": 4 * (3 + hess_batch) * D**2 / 2**30}


def slope(D, values) -> float | None:
    D, v = np.asarray(D, float), np.asarray(values, float)
    ok = v > 0
    if ok.sum() < 2:
        return None
    return float(np.polyfit(np.log(D[ok]), np.log(v[ok]), 1)[0])


def run(cfg: dict, run_worker) -> dict:
    c = cfg["scaling"]
    rows = []
    for w in c["widths"]:
        res = run_worker("benchmarks.bench_scaling:scaling_worker", timeout=c["timeout"],
                         width=w, n=c["n"], k=c["k"], batch_size=c["batch_size"])
        res.setdefault("D", w * w)
        res["dense_reference"] = dense_bytes(w * w)
        rows.append(res)
    return {"N": c["n"], "k": c["k"], "rows": rows, "exponents": exponents(rows)}


def exponents(rows: list[dict]) -> dict:
    """Log-log slopes on D: over all widths, and between the two largest D (``_top2``:
    the asymptotic growth, where fixed costs no longer dominate)."""
    ok = [r for r in rows if "error" not in r]
    D = [r["D"] for r in ok]
    fits = {
        "time_total": slope(D, [r["seconds"] for r in ok]),
        "peak_rss_total": slope(D, [r["peak_rss_mib"] for r in ok]),
        "peak_rss_above_base": slope(D, [r["peak_rss_mib"] - r["base_rss_mib"] for r in ok]),
    }
    for stage in ("eigenpairs", "covariance", "awd"):
        have = [r for r in ok if stage in r["stages"]]
        Ds = [r["D"] for r in have]
        fits[f"time_{stage}"] = slope(Ds, [r["stages"][stage]["seconds"] for r in have])
        fits[f"peak_rss_above_base_{stage}"] = slope(
            Ds, [r["stages"][stage]["peak_rss_mib"] - r["base_rss_mib"] for r in have])
    top = ok[-2:]
    fits["time_total_top2"] = slope(D[-2:], [r["seconds"] for r in top])
    fits["peak_rss_above_base_top2"] = slope(
        D[-2:], [r["peak_rss_mib"] - r["base_rss_mib"] for r in top])
    return fits
