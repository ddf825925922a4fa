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


def minibatch_covariance(P: Tensor, batch_size: int, seed: int, *,
                         last_batch: str = "drop") -> Tensor:
    """C_mb = (1/n_b) sum_b g_b g_b^T - g g^T over one shuffled pass of minibatches.

    The AW-CH reference's estimator (rank at most n_b; SPEC 3 ``covar_mb``). The
    permutation is ``numpy.random.default_rng(seed).permutation(N)``; batch b holds
    perm[bB:(b+1)B], g_b is the mean of V^T g_i over batch b and g the mean over all N
    samples. No 1/B factor (the reference stores ``Covar`` without one either).

    Args:
        P: projected per-sample gradients, (N, k).
        batch_size: B.
        seed: seeds the permutation.
        last_batch: what happens to the last N mod B samples of the permutation.
            ``drop`` (the default, SPEC): they are left out, n_b = floor(N/B) and every
            g_b is a mean over exactly B samples. ``keep`` (the reference's
            ``utils.cal_noise_covar_minibatch``: a ``DataLoader(shuffle=True)`` with
            ``drop_last=False`` and mean-reduced batch losses, averaged with
            ``/len(batches)``): the partial batch is one more batch, its g_b the mean
            over its N mod B samples, weighted like the others, n_b = ceil(N/B).
            Identical to ``drop`` when B divides N.

    Returns:
        k x k float64, symmetric.
    """
    if last_batch not in ("drop", "keep"):
        raise ValueError(f"last_batch {last_batch!r} must be 'drop' or 'keep'")
    P = P.to(torch.float64)
    n = P.shape[0]
    n_full = n // batch_size
    if n_full == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {n} analysis samples")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n)).to(P.device)
    gb = P[perm[: n_full * batch_size]].view(n_full, batch_size, -1).mean(dim=1)
    if last_batch == "keep" and n % batch_size:
        gb = torch.cat([gb, P[perm[n_full * batch_size:]].mean(dim=0, keepdim=True)])
    g = P.mean(dim=0)
    return symmetrise(gb.T @ gb / gb.shape[0] - torch.outer(g, g))


def within_class_covariance(P: Tensor, labels: Tensor, batch_size: int) -> Tensor:
    """``covar_within`` = (1/B) (1/C) sum_c S_c (SPEC 3), S_c = (1/N_c) sum_{i in c}
    (V^T g_i)(V^T g_i)^T - m_c m_c^T with m_c the class mean of V^T g_i.

    What the class-balanced AWD pairs estimate (E[c_pair] = (1/(BC)) sum_c
    N_c/(N_c - 1) S_c, :mod:`awch_scale.analysis.awd.analysis`), so the AWD terms are compared
    with it rather than with ``covar``. C counts the classes present.
    """
    P = P.to(torch.float64)
    labels = labels.to(P.device)
    classes = torch.unique(labels)
    total = torch.zeros(P.shape[1], P.shape[1], dtype=torch.float64, device=P.device)
    for c in classes:
        Pc = P[labels == c]
        total += second_moment(Pc) - torch.outer(Pc.mean(0), Pc.mean(0))
    return symmetrise(total) / (batch_size * len(classes))
