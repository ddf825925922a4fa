"""Benchmark 3: the full ``analyze_checkpoint`` against the dense brute force (``dense.py``).

The paper's main setting shape: FC 784-50-50-10, target fc2 (D = 2500), k = 300, B = 50,
cross-entropy. ``analyze_checkpoint`` runs with its defaults (operator auto = Kronecker,
eigensolver auto = block Krylov for k >= 32), with ``awd=True`` and the recipe's AWD
defaults when its signature accepts ``awd`` (checked at run time; the computed variables
are listed in the result).

The dense approach costs about 2 D^3 operations per sample (h_p^2) and cannot run on all N
samples here: it is run fully on the first ``n_sub`` samples, its per-sample stages are
extrapolated linearly in N (marked), and ``analyze_checkpoint`` is run on the same
``n_sub`` samples, so the gamma values are compared where both ran fully.
"""

from __future__ import annotations

import numpy as np

from .common import trained_problem

AWD_DEFAULTS = {"draws": 20, "probe": 100, "partner_batches": 10}
ISSUE4_STAGES = dict(fisher=None, stats=None, spectra=None, suppression=None)
"""The stages measured before issues 8-9 (eigen, covariance, AWD): the 24 s baseline."""


def ours_analysis(width: int, n: int, k: int, batch_size: int, subset: int | None = None,
                  stages: dict | None = None) -> dict:
    from awch_scale import analyze_checkpoint

    from .common import timed

    model, x, y = trained_problem(width, n)
    if subset:
        x, y = x[:subset], y[:subset]
    kwargs = dict(awd=AWD_DEFAULTS, **(stages if stages is not None else ISSUE4_STAGES))
    ds, seconds = timed(analyze_checkpoint, model, "fc2", x, y, loss="ce",
                        batch_size=batch_size, k=k, seed=0, **kwargs)
    return {
        "seconds": seconds, "N": int(x.shape[0]), "D": int(ds.attrs["D"]), "k": k,
        "awd": bool(kwargs), "variables": sorted(str(v) for v in ds.data_vars),
        "gamma": {str(e): float(g) for e, g in zip(ds.estimator.values, ds.gamma.values,
                                                   strict=True)},
        "stage_seconds": {str(key): float(ds[key]) for key in ds.data_vars
                          if str(key).startswith("seconds_")},
        "n_hvp": int(ds["n_hvp"]), "operator": ds.attrs["operator"],
        "values": ds.hess_eigval.values,
    }


def dense_worker(width: int, n: int, k: int, batch_size: int, subset: int) -> dict:
    from .dense import dense_analysis

    model, x, y = trained_problem(width, n)
    out = dense_analysis(model, "fc2.weight", x[:subset], y[:subset], batch_size=batch_size,
                         k=k)
    out["extrapolated_seconds"] = (out["seconds_per_sample_stages"] * n / subset
                                   + out["seconds_fixed_stages"])
    return out


def run(cfg: dict, run_worker) -> dict:
    c = cfg["analysis"]
    common = dict(width=c["width"], n=c["n"], k=c["k"], batch_size=c["batch_size"])
    mod = "benchmarks.bench_analysis:"
    ours = [run_worker(mod + "ours_analysis", timeout=c["timeout"], **common)
            for _ in range(c["repeats"])]
    ok = [r for r in ours if "error" not in r]
    full = dict(ok[0]) if ok else ours[0]
    if ok:
        full["seconds_runs"] = [r["seconds"] for r in ok]
        full["seconds"] = float(np.median(full["seconds_runs"]))
        full.pop("values")
    sub = run_worker(mod + "ours_analysis", timeout=c["timeout"], subset=c["n_sub"], **common)
    dense = run_worker(mod + "dense_worker", timeout=c["timeout"], subset=c["n_sub"], **common)
    out = {"ours_full": full, "ours_subset": sub, "dense_subset": dense}
    if "error" not in sub and "error" not in dense:
        lam_o, lam_d = np.asarray(sub.pop("values")), np.asarray(dense.pop("values"))
        out["subset_eigenvalue_max_rel_diff"] = float(np.max(np.abs(lam_o - lam_d)) / lam_d[0])
        out["gamma_abs_diff"] = {e: abs(sub["gamma"][e] - g) for e, g in dense["gamma"].items()
                                 if e in sub["gamma"]}
        if "error" not in full:
            out["speedup_full_vs_dense_extrapolated"] = (dense["extrapolated_seconds"]
                                                         / full["seconds"])
    return out
