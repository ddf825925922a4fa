"""Benchmark 2: top-k Hessian eigenpairs of the target block, every method in its own process.

- ``ours_block`` / ``ours_eigsh``: :func:`awch_scale.linalg.eigen.top_eigenpairs` on the
  :class:`KroneckerHessianOperator` (time = operator build + solve, residual check included).
- ``dense_kron``: the dense H built by our batched products with the identity (D columns),
  then ``torch.linalg.eigh`` (float64). One run serves every k.
- ``dense_func_hessian``: the dense H built as ``torch.func.hessian`` of the summed loss of
  each chunk of samples (summed over chunks, divided by N), then ``eigh``; timed on a subset
  of the samples and extrapolated linearly in N to the full set (marked).
- ``curvlinops``: ``HessianLinearOperator(...).to_scipy()`` + ``scipy.sparse.linalg.eigsh``
  (which='LA', same tol and start vector as ours).
- ``pyhessian``: ``hessian(model, CrossEntropyLoss(), data=(x, y)).eigenvalues(top_n=k)``,
  deflated power iteration (its defaults maxIter=100, tol=1e-3), single-batch mode (all N
  samples as one batch: the exact mean-loss Hessian, the fastest PyHessian mode).

Accuracy: max_i |lambda_i - lambda_i^dense| / lambda_1^dense over the k values, against
``dense_kron``. Runs longer than their cap (or at k beyond the configured full-run k) are
estimated and marked: ARPACK's product count at each k is measured exactly on the dense H
(same v0, tol, ncv), times the method's measured seconds per product; PyHessian's time is
extrapolated linearly in k from its seconds per eigenpair at the largest k it ran.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .common import median, timed, trained_problem

TOL = 1e-6


def _v0(D: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(D)


def _top(values, k: int) -> list[float]:
    return sorted((float(v) for v in values), reverse=True)[:k]


def ours_eigen(width: int, n: int, k: int, method: str, tol: float = TOL) -> dict:
    from awch_scale.linalg.eigen import top_eigenpairs
    from awch_scale.model.operators import KroneckerHessianOperator
    from awch_scale.model.problem import make_problem

    model, x, y = trained_problem(width, n)
    (problem, op), build = timed(
        lambda: (p := make_problem(model, "fc2", x, y, "ce"), KroneckerHessianOperator(p)))
    basis, solve = timed(top_eigenpairs, op, k, method=method, tol=tol, seed=0)
    return {"seconds": build + solve, "seconds_build": build, "seconds_solve": solve,
            "n_products": basis.n_products, "n_passes": op.n_passes,
            "max_residual": float(basis.residuals.max()), "values": basis.values[:k]}


def _arpack_counts(H: np.ndarray, ks: list[int]) -> dict:
    """Products ARPACK eigsh needs at each k on this H (same v0 and tol as the runs)."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    out = {}
    for k in ks:
        count = [0]

        def mv(v, count=count):
            count[0] += 1 if v.ndim == 1 else v.shape[1]
            return H @ v

        op = LinearOperator(H.shape, matvec=mv, matmat=mv, dtype=np.float64)
        _, seconds = timed(eigsh, op, k=k, which="LA", v0=_v0(H.shape[0]), tol=TOL)
        out[str(k)] = {"n_products": count[0], "seconds_dense_products": seconds}
    return out


def dense_eigen(width: int, n: int, ks: list[int], build: str, n_sub: int | None = None) -> dict:
    from awch_scale.model.operators import KroneckerHessianOperator
    from awch_scale.model.problem import make_problem

    model, x, y = trained_problem(width, n)
    if build == "kron_identity":
        problem = make_problem(model, "fc2", x, y, "ce")
        (op, H), seconds_build = timed(
            lambda: (o := KroneckerHessianOperator(problem), o.matmat(torch.eye(problem.D))))
        scale = 1.0
    elif build == "func_hessian":
        problem = make_problem(model, "fc2", x[:n_sub], y[:n_sub], "ce")
        H, seconds_build = timed(_func_hessian, problem)
        scale = n / n_sub
        v = torch.randn(problem.D, dtype=torch.float64)
        ref = KroneckerHessianOperator(problem).matmat(v)
        check = ((H @ v - ref).abs().max() / ref.abs().max()).item()
    else:
        raise ValueError(build)
    (vals, _), seconds_eigh = timed(torch.linalg.eigh, H)
    out = {"build": build, "seconds_build": seconds_build, "seconds_eigh": seconds_eigh,
           "seconds": seconds_build + seconds_eigh, "n_products": problem.D,
           "values": vals.flip(0)[:max(ks)].numpy()}
    if build == "kron_identity":
        out["arpack"] = _arpack_counts(H.numpy(), ks)
        _, out["seconds_eigh_float32"] = timed(torch.linalg.eigh, H.float())
    else:
        out.update(n_sub=n_sub, seconds_build_measured=seconds_build,
                   seconds_build=seconds_build * scale, extrapolated=True,
                   seconds=seconds_build * scale + seconds_eigh,
                   max_rel_diff_vs_kron=check)
    return out


def _func_hessian(problem) -> torch.Tensor:
    """sum over chunks of torch.func.hessian(summed chunk loss)(w), / N, float64."""
    H = torch.zeros(problem.D, problem.D, dtype=torch.float64)
    for xc, yc in problem.chunks():
        H += torch.func.hessian(lambda w, xc=xc, yc=yc: problem.per_sample_loss(w, xc, yc)
                                .sum())(problem.w).to(torch.float64)
    return H / problem.N


def curvlinops_eigen(width: int, n: int, k: int, chunk: int = 512) -> dict:
    from curvlinops import HessianLinearOperator
    from scipy.sparse.linalg import LinearOperator, eigsh

    model, x, y = trained_problem(width, n)
    for name, p in model.named_parameters():
        p.requires_grad_(name == "fc2.weight")
    batches = list(zip(x.split(chunk), y.split(chunk), strict=True))

    def solve():
        lin = HessianLinearOperator(model, nn.CrossEntropyLoss(), [model.fc2.weight], batches,
                                    check_deterministic=False, num_data=n).to_scipy()
        count = [0]

        def mv(v):
            count[0] += 1 if v.ndim == 1 else v.shape[1]
            return lin @ v

        op = LinearOperator(lin.shape, matvec=mv, matmat=mv, dtype=np.float64)
        vals, _ = eigsh(op, k=k, which="LA", v0=_v0(lin.shape[0]), tol=TOL)
        return vals, count[0]

    (vals, count), seconds = timed(solve)
    return {"seconds": seconds, "n_products": count, "n_passes": count,
            "seconds_per_product": seconds / count, "values": _top(vals, k)}


def pyhessian_eigen(width: int, n: int, k: int, max_iter: int = 100, tol: float = 1e-3) -> dict:
    import importlib

    ph = importlib.import_module("pyhessian.hessian")  # the module (the package exports a class)

    model, x, y = trained_problem(width, n)
    for name, p in model.named_parameters():
        p.requires_grad_(name == "fc2.weight")
    count = [0]
    plain = ph.hessian_vector_product

    def counted(*args):
        count[0] += 1
        return plain(*args)

    torch.manual_seed(0)

    def solve():
        h = ph.hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        return h.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)[0]

    ph.hessian_vector_product = counted
    try:
        vals, seconds = timed(solve)
    finally:
        ph.hessian_vector_product = plain
    return {"seconds": seconds, "n_products": count[0], "n_passes": count[0],
            "seconds_per_eigenpair": seconds / k, "max_iter": max_iter, "tol": tol,
            "values": _top(vals, k)}


# ----------------------------------------------------------------------------- driver


def _accuracy(values, dense_values) -> float:
    v, d = np.asarray(values), np.asarray(dense_values)[:len(values)]
    return float(np.max(np.abs(v - d)) / d[0])


def _repeat(run_worker, target, repeats, timeout, **kw) -> dict:
    runs = [run_worker(target, timeout=timeout, **kw) for _ in range(repeats)]
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    res = dict(ok[0])
    for key in ("seconds", "seconds_build", "seconds_solve", "seconds_eigh", "peak_rss_mib"):
        if key in res:
            res[key] = median([r[key] for r in ok])
    res["seconds_runs"] = [r["seconds"] for r in ok]
    return res


def run(cfg: dict, run_worker) -> dict:
    c = cfg["eigen"]
    w, n, ks, cap = c["width"], c["n"], c["ks"], c["timeout"]
    mod = "benchmarks.bench_eigen:"
    dense = _repeat(run_worker, mod + "dense_eigen", c["repeats"], cap, width=w, n=n, ks=ks,
                    build="kron_identity")
    if "error" in dense:
        return {"error": "dense reference failed: " + dense["error"]}
    dense_values = dense.pop("values")
    arpack = dense.pop("arpack")
    func = run_worker(mod + "dense_eigen", timeout=cap, width=w, n=n, ks=ks,
                      build="func_hessian", n_sub=c["n_sub"])
    func.pop("values", None)  # eigenvalues of the subset's H: not comparable
    rows: dict[str, dict] = {}
    per_product: dict[str, float] = {}
    per_pair: dict[str, float] = {}
    for k in ks:
        rows[f"dense_kron/k={k}"] = dict(dense, k=k, accuracy=0.0)
        rows[f"dense_func_hessian/k={k}"] = dict(func, k=k, accuracy=None)
        for method in ("block", "eigsh"):
            name = f"ours_{method}"
            repeats = c["repeats"] if method == "block" else 1  # eigsh: slow at large k
            res = _repeat(run_worker, mod + "ours_eigen", repeats, cap, width=w, n=n, k=k,
                          method=method)
            if "error" not in res:
                per_product[name] = res["seconds_solve"] / res["n_products"]
            elif method == "eigsh" and name in per_product:
                res.update(_arpack_estimate(arpack, k, per_product[name]))
            rows[f"{name}/k={k}"] = dict(res, k=k)
        if k <= c["curvlinops_full_k"]:
            res = run_worker(mod + "curvlinops_eigen", timeout=cap, width=w, n=n, k=k)
            if "error" not in res:
                per_product["curvlinops"] = res["seconds_per_product"]
        else:
            res = {"skipped": f"k > {c['curvlinops_full_k']}"}
        if "error" in res or "skipped" in res:
            if "curvlinops" in per_product:
                res.update(_arpack_estimate(arpack, k, per_product["curvlinops"]))
        rows[f"curvlinops/k={k}"] = dict(res, k=k)
        loose = c["loose_tol"]
        res = run_worker(mod + "ours_eigen", timeout=cap, width=w, n=n, k=k, method="block",
                         tol=loose)
        rows[f"ours_block(tol={loose:g})/k={k}"] = dict(res, k=k)
        for name, settings in (("pyhessian", {}), ("pyhessian(tol=1e-6)", c["pyhessian_tight"])):
            if k <= c["pyhessian_full_k"]:
                res = run_worker(mod + "pyhessian_eigen", timeout=cap, width=w, n=n, k=k,
                                 **settings)
                if "error" not in res:
                    per_pair[name] = res["seconds_per_eigenpair"]
            else:
                res = {"skipped": f"k > {c['pyhessian_full_k']}"}
            if ("error" in res or "skipped" in res) and name in per_pair:
                res.update(seconds=per_pair[name] * k, estimated=True,
                           estimate="seconds per eigenpair at the largest k run x k (linear; "
                                    "a lower bound: later eigenpairs have smaller gaps)")
            rows[f"{name}/k={k}"] = dict(res, k=k)
    for row in rows.values():
        if "values" in row:
            row["accuracy"] = _accuracy(row.pop("values"), dense_values)
    return {"D": w * w, "N": n, "tol": TOL, "arpack_products_on_dense_H": arpack,
            "lambda_1": dense_values[0], "rows": rows}


def _arpack_estimate(arpack: dict, k: int, seconds_per_product: float) -> dict:
    count = arpack[str(k)]["n_products"]
    return {"seconds": count * seconds_per_product, "n_products": count, "estimated": True,
            "estimate": "ARPACK products at this k (counted on the dense H, same v0/tol) x "
                        "measured seconds per product"}
