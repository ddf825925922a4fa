"""Benchmark 5 (issue 10): the wide analysis, its eigen-stage breakdown, and 2 processes.

- ``wide``: FC 784-w-w-10, target fc2 (D = w^2), N = 2000, k = 50, AWD on (T = 20 draws,
  100 probes, R = 10), stage by stage as ``bench_scaling`` (each stage's time and peak
  RSS), plus the share of the eigen stage spent in operator products (``matmat`` timed).
- ``dist``: the Hessian eigenpairs + per-sample projections + covariances of one
  problem on 1 and on 2 gloo processes (:func:`awch_scale.distributed.run_distributed`),
  wall time of each and the largest relative difference of the results.

Run one piece: ``python -m benchmarks.bench_issue10 wide 1000`` / ``... dist 300``
(results appended to benchmarks/results/cpu-issue10.json).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from .common import RESULTS, StagePeak, machine_info, trained_problem

AWD_DEFAULTS = {"n_draws": 20, "n_probe": 100, "n_partner_batches": 10}


def wide_worker(width: int, n: int = 2000, k: int = 50, batch_size: int = 50,
                awd: bool = True) -> dict:
    import torch

    from awch_scale.analysis import hessian_operator
    from awch_scale.awd import awd_analysis
    from awch_scale.covariance import covariance, minibatch_covariance, second_moment
    from awch_scale.eigen import top_eigenpairs
    from awch_scale.per_sample import projected_gradients
    from awch_scale.problem import make_problem

    model, x, y = trained_problem(width, n)
    stages = {}
    with StagePeak() as s:
        problem = make_problem(model, "fc2", x, y, "ce")
        t0 = time.perf_counter()
        op = hessian_operator(problem, "auto")
        build = time.perf_counter() - t0
        spent = [0.0]
        inner = op.matmat

        def timed(V):
            t = time.perf_counter()
            out = inner(V)
            spent[0] += time.perf_counter() - t
            return out

        op.matmat = timed
        t0 = time.perf_counter()
        basis = top_eigenpairs(op, k, seed=0)
        solve = time.perf_counter() - t0
    stages["eigenpairs"] = {"seconds": s.seconds, "peak_rss_mib": s.peak_mib,
                            "operator_build_seconds": build, "solver_seconds": solve,
                            "product_seconds": spent[0],
                            "product_share_of_solver": spent[0] / solve,
                            "n_products": basis.n_products, "operator": type(op).__name__,
                            "q_cached": bool(getattr(op, "cached", False)),
                            "max_residual": float(basis.residuals.max())}
    with StagePeak() as s:
        P = projected_gradients(problem, basis.vectors, layer=getattr(op, "layer", None))
        covariance(P, batch_size), second_moment(P), minibatch_covariance(P, batch_size, 0)
    stages["covariance"] = {"seconds": s.seconds, "peak_rss_mib": s.peak_mib}
    if awd:
        with StagePeak() as s:
            awd_analysis(problem, basis.vectors, basis.values, batch_size=batch_size, seed=0,
                         **AWD_DEFAULTS)
        stages["awd"] = {"seconds": s.seconds, "peak_rss_mib": s.peak_mib}
    return {"width": width, "D": problem.D, "N": n, "k": k, "threads": torch.get_num_threads(),
            "stages": stages, "eigvals_head": basis.values[:5].tolist(),
            "seconds": sum(st["seconds"] for st in stages.values()),
            "peak_rss_mib": max(st["peak_rss_mib"] for st in stages.values())}


def dist_job(world, width: int, n: int, k: int) -> dict:
    from awch_scale.covariance import covariance
    from awch_scale.eigen import top_eigenpairs
    from awch_scale.operators import KroneckerHessianOperator
    from awch_scale.per_sample import projected_gradients
    from awch_scale.problem import make_problem

    model, x, y = trained_problem(width, n)
    t0 = time.perf_counter()
    problem = make_problem(model, "fc2", x, y, "ce")
    op = KroneckerHessianOperator(problem, world=world)
    basis = top_eigenpairs(op, k, seed=0)
    P = projected_gradients(problem, basis.vectors, layer=op.layer, world=world)
    C = covariance(P, 50)
    return {"seconds": time.perf_counter() - t0, "values": basis.values,
            "covar": C.numpy(), "n_products": basis.n_products}


def dist_compare(width: int, n: int = 2000, k: int = 50) -> dict:
    from awch_scale.distributed import run_distributed

    trained_problem(width, n)  # train/cache once, outside the timings
    out = {"width": width, "D": width * width, "N": n, "k": k}
    res = {}
    for nproc in (1, 2):
        t0 = time.perf_counter()
        res[nproc] = run_distributed(dist_job, nproc, width, n, k, backend="gloo")
        out[f"wall_{nproc}proc"] = time.perf_counter() - t0
        out[f"analysis_seconds_{nproc}proc"] = res[nproc]["seconds"]
    for name in ("values", "covar"):
        a, b = res[1][name], res[2][name]
        out[f"max_rel_diff_{name}"] = float(np.abs(a - b).max() / np.abs(a).max())
    return out


def run(cfg: dict, run_worker) -> dict:
    c = cfg.get("issue10", {"widths": [1000]})
    rows = [run_worker("benchmarks.bench_issue10:wide_worker", timeout=c.get("timeout", 3600),
                       width=w) for w in c["widths"]]
    return {"rows": rows}


def main(argv: list[str]) -> int:
    import torch

    from .common import run_worker

    kind, width = argv[0], int(argv[1])
    torch.set_num_threads(1)
    load0 = list(os.getloadavg())
    if kind == "wide":
        res = run_worker("benchmarks.bench_issue10:wide_worker", timeout=3600, threads=1,
                         width=width)
    else:
        res = dist_compare(width)
    res.update(kind=kind, loadavg_start=load0, loadavg_end=list(os.getloadavg()),
               git_commit=machine_info()["git_commit"])
    path = RESULTS / "cpu-issue10.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    rows.append(res)
    path.write_text(json.dumps(rows, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
