"""Issue 10: the default path gives the numbers of the previous one, on a smaller D.

FC 784-100-100-10 (target fc2, D = 1e4), N = 2000, k = 50, float64, AWD on. Two paths:

- *previous*: ARPACK (``eigsh``), per-sample Q_i recomputed (``q_form="none"``), AWD's h2
  pass recomputing Q_p (no ``q_source``);
- *default*: ``top_eigenpairs(method="auto")`` (at this D the timing rule takes the block
  solver), exact Q_i factors shared by the operator and the AWD h2 pass;
- *lanczos*: the same with the thick-restart ``lanczos`` solver (auto's choice at
  D = 1e6).

Each stored quantity is compared entry by entry, relative to itself: eigenvalues, the
covariance diagonal, and the AWD h2 diagonal, plus the subspace distance of the two
eigenbases. Writes ``results/cpu-same-numbers.md``. Run: ``python -m benchmarks.same_numbers``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .common import RESULTS, machine_info, trained_problem


def _path(problem, k, method, q_form, share_q):
    from awch_scale.analysis.awd import awd_analysis
    from awch_scale.analysis.covariance import covariance
    from awch_scale.linalg.eigen import top_eigenpairs
    from awch_scale.model.operators import KroneckerHessianOperator
    from awch_scale.model.per_sample import projected_gradients

    t0 = time.perf_counter()
    op = KroneckerHessianOperator(problem, q_form=q_form)
    basis = top_eigenpairs(op, k, method=method, seed=0)
    P = projected_gradients(problem, basis.vectors, layer=op.layer)
    covar = covariance(P, 50)
    awd = awd_analysis(problem, basis.vectors, basis.values, batch_size=50, seed=0,
                       q_source=op if share_q else None, n_draws=4, n_probe=50,
                       n_partner_batches=4)
    return {"values": basis.values, "V": basis.vectors.numpy(),
            "covar_diag": np.diag(covar.numpy()), "h2_diag": awd["h2_diag"][1],
            "method": basis.method, "q_form": op.q_form,
            "seconds": time.perf_counter() - t0}


def main(width: int = 100, n: int = 2000, k: int = 50) -> str:
    from awch_scale.model.problem import make_problem

    torch.set_num_threads(1)
    model, x, y = trained_problem(width, n)
    problem = make_problem(model, "fc2", x, y, "ce", dtype=torch.float64)
    old = _path(problem, k, "eigsh", "none", False)
    info = machine_info()
    text = [f"# Same numbers, previous path against the new ones (D = {problem.D}, N = {n}, "
            f"k = {k}, float64)\n",
            f"commit {info['git_commit']}; previous: {old['method']}, Q_i recomputed, "
            f"{old['seconds']:.1f} s (one thread). Maximal relative difference, each entry "
            "to itself, and the subspace distance ||(I - V_a V_a^T) V_b||_2.\n",
            "| path | solver, Q_i | seconds | values | covar_diag | h2_diag | subspace |",
            "|---|---|---|---|---|---|---|"]
    for label, method in (("default", "auto"), ("lanczos", "lanczos")):
        new = _path(problem, k, method, "auto", True)
        diffs = [float(np.max(np.abs(old[n] - new[n]) / np.abs(old[n])))
                 for n in ("values", "covar_diag", "h2_diag")]
        Va, Vb = old["V"], new["V"]
        sub = float(np.linalg.norm(Va @ (Va.T @ Vb) - Vb, 2))
        text.append(f"| {label} | {new['method']}, {new['q_form']} | {new['seconds']:.1f} | "
                    + " | ".join(f"{d:.1e}" for d in diffs) + f" | {sub:.1e} |")
    out = "\n".join(text) + "\n"
    (RESULTS / "cpu-same-numbers.md").write_text(out)
    print(out)
    return out


if __name__ == "__main__":
    main()
