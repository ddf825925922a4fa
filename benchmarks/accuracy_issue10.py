"""Per-eigenvalue stopping rule vs the lambda_1 rule against dense eigh (issue 10).

FC 784-50-50-10 (the bench_hvp model), target fc2, D = 2500, N = 2000, float64, k = 300,
block solver at tol 1e-6 with the floor basis m = k + 2b = 364 (the default basis,
max(3k, k + 4b) = 900, converges far past tol with either rule). Prints each rule's
largest eigenvalue error relative to itself, largest residual relative to itself, and
gamma (covar diagonal vs lambda over all k) against the dense eigenbasis.

Run: ``PYTHONPATH=. OMP_NUM_THREADS=1 python -m benchmarks.accuracy_issue10``
"""

from __future__ import annotations

import time

import numpy as np
import torch

from awch_scale.analysis.covariance import covariance
from awch_scale.analysis.powerlaw import fit_power_law
from awch_scale.linalg.eigen import top_eigenpairs
from awch_scale.model.operators import KroneckerHessianOperator
from awch_scale.model.per_sample import projected_gradients
from awch_scale.model.problem import make_problem

from .common import trained_problem


def main(k: int = 300, basis: int = 364) -> None:
    torch.set_num_threads(1)
    model, x, y = trained_problem(50, 20000)
    p = make_problem(model, "fc2", x[:2000], y[:2000], "ce", dtype=torch.float64)
    op = KroneckerHessianOperator(p)
    H = op.to_dense()
    lam, U = torch.linalg.eigh(H)
    lam, U = lam.flip(0)[:k].numpy(), U.flip(1)[:, :k]
    g_dense = fit_power_law(torch.diagonal(covariance(projected_gradients(p, U), 50)).numpy(),
                            lam, k).gamma
    for rule in ("first", "self"):
        t0 = time.perf_counter()
        b = top_eigenpairs(op, k, method="block", tol=1e-6, rel_to=rule, seed=0, maxiter=300,
                           ncv=basis)
        dt = time.perf_counter() - t0
        V, vals = b.vectors, torch.from_numpy(b.values)
        r = torch.linalg.vector_norm(H @ V - V * vals, dim=0).numpy() / np.abs(b.values)
        P = projected_gradients(p, V)
        g = fit_power_law(torch.diagonal(covariance(P, 50)).numpy(), b.values, k).gamma
        print(f"{rule}: {dt:.1f} s, {b.n_products} products, "
              f"max |dlam_i|/lam_i {np.max(np.abs(b.values - lam) / np.abs(lam)):.2e}, "
              f"max res_i/|lam_i| {r.max():.2e}, lam_k/lam_1 {lam[-1] / lam[0]:.2e}, "
              f"gamma {g:.6f} (dense {g_dense:.6f}, diff {abs(g - g_dense):.2e})")


if __name__ == "__main__":
    main()
