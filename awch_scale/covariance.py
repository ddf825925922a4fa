"""Empirical SGD noise covariance projected onto the Hessian eigenbasis (SPEC section 3).

All functions take P, the per-sample gradients projected onto V (P[i] = V^T g_i,
shape (N, k)), and return k x k float64 arrays, i.e. X_V = V^T X V.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def second_moment(P: Tensor) -> Tensor:
    """M_V = (1/N) sum_i (V^T g_i)(V^T g_i)^T (SPEC 3, the SGD-Dynamics M_t)."""
    P = P.to(torch.float64)
    return symmetrise(P.T @ P / P.shape[0])


def symmetrise(A: Tensor) -> Tensor:
    """(A + A^T)/2: products like P^T P are symmetric in exact arithmetic, but a BLAS
    may round the two triangles differently (MKL's AMD path does); stored matrices are
    symmetric exactly."""
    return 0.5 * (A + A.T)


def covariance(P: Tensor, batch_size: int) -> Tensor:
    """C_V = (1/B) [ M_V - g_V g_V^T ], g_V = V^T g = mean_i V^T g_i (paper Eq. 2)."""
    P = P.to(torch.float64)
    g = P.mean(dim=0)
    return symmetrise(second_moment(P) - torch.outer(g, g)) / batch_size


def minibatch_covariance(P: Tensor, batch_size: int, seed: int) -> Tensor:
    """C_mb = mean_b (g_b g_b^T) - g g^T over one shuffled pass of full minibatches.

    The AW-CH reference's estimator (rank at most N/B). The permutation is drawn from
    ``seed``; the last N mod B samples of the permutation (an incomplete batch) are
    left out, so every g_b is a mean over exactly B samples.
    """
    P = P.to(torch.float64)
    n = P.shape[0]
    n_batches = n // batch_size
    if n_batches == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {n} analysis samples")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n)).to(P.device)
    gb = P[perm[: n_batches * batch_size]].view(n_batches, batch_size, -1).mean(dim=1)
    g = P.mean(dim=0)
    return symmetrise(gb.T @ gb / n_batches - torch.outer(g, g))
