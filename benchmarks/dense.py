"""Dense brute-force analysis: the AW-CH reference code's approach, every D x D matrix formed.

Written independently of ``awch_scale``: the loss is spelled out, the target weight is
addressed by its parameter name, and the whole model runs (no feature caching).

1. Per-sample Hessians h_p (D x D, float32) by ``vmap(torch.func.hessian)`` in batches of 64;
   H = mean_p h_p and E_p[h_p^2] = (1/N) sum_p h_p h_p (one GEMM per batch: the batch's
   Hessians stacked into S (64 D x D), sum_p h_p^2 = S^T S), accumulated in float64.
2. Dense per-sample gradients g_p (``vmap(torch.func.grad)``).
3. ``torch.linalg.eigh`` of H (float64); V = top-k eigenvectors.
4. Dense C = (1/B)[(1/N) sum g g^T - g g^T], M = (1/N) sum g g^T, the minibatch estimate
   C_mb over one shuffled pass (the permutation ``numpy.random.default_rng(seed)``, as
   awch-scale's ``covar_mb``), and their diagonals in the eigenbasis, diag(V^T X V).
5. gamma: ``scipy.stats.linregress`` of log10 diag on log10 lambda over the first n_fit
   directions where both are positive.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch
from scipy.stats import linregress
from torch import nn
from torch.func import functional_call, grad, hessian, vmap

PER_SAMPLE_STAGES = ("per_sample_hessians", "h2_products", "gradients", "covariances")


def _gamma(diag: np.ndarray, lam: np.ndarray, n_fit: int) -> float:
    d, lam = diag[:n_fit], lam[:n_fit]
    ok = (d > 0) & (lam > 0)
    return float(linregress(np.log10(lam[ok]), np.log10(d[ok])).slope)


def dense_analysis(model: nn.Module, weight: str, x: torch.Tensor, y: torch.Tensor, *,
                   batch_size: int, k: int, n_fit: int | None = None, seed: int = 0,
                   hess_batch: int = 64) -> dict:
    """Gamma of covar, covar_mb, second_moment and h2, eigenvalues, and stage timings.

    Args:
        model: the network (float32, eval mode is irrelevant: no dropout/BN).
        weight: the target parameter name, e.g. ``fc2.weight``.
        x, y: the analysis set.
        batch_size: B of Eq. 2.
        k: eigenpairs; n_fit: directions in the fits (default k).
    """
    n_fit = k if n_fit is None else n_fit
    params = {name: p.detach() for name, p in model.named_parameters()}
    w0 = params.pop(weight)
    shape, w0 = w0.shape, w0.reshape(-1)
    D, N = w0.numel(), x.shape[0]
    onehot = nn.functional.one_hot(y, model(x[:1]).shape[-1]).to(w0.dtype)

    def sample_loss(w, xi, oi):
        z = functional_call(model, {**params, weight: w.view(shape)}, (xi.unsqueeze(0),))[0]
        return -(torch.log_softmax(z, -1) * oi).sum()

    hess_fn = vmap(hessian(sample_loss), in_dims=(None, 0, 0))
    grad_fn = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    seconds: dict[str, float] = defaultdict(float)

    def stage(name, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        seconds[name] += time.perf_counter() - t0
        return out

    H = torch.zeros(D, D, dtype=torch.float64)
    H2 = torch.zeros(D, D, dtype=torch.float64)
    grads = []

    def hessians(xb, ob):
        hs = hess_fn(w0, xb, ob)  # (batch, D, D) float32
        H.add_(hs.sum(0))
        return hs.reshape(-1, D)

    def add_h2(S):  # sum_p h_p h_p = S^T S (h_p symmetric)
        H2.add_(S.T @ S)

    for s in range(0, N, hess_batch):
        xb, ob = x[s:s + hess_batch], onehot[s:s + hess_batch]
        S = stage("per_sample_hessians", hessians, xb, ob)
        stage("h2_products", add_h2, S)
        del S
        grads.append(stage("gradients", grad_fn, w0, xb, ob).to(torch.float64))
    H /= N
    H2 /= N

    def covariances():
        G = torch.cat(grads)
        g = G.mean(0)
        M = G.T @ G / N
        perm = torch.from_numpy(np.random.default_rng(seed).permutation(N))
        nb = N // batch_size
        gb = G[perm[:nb * batch_size]].view(nb, batch_size, D).mean(1)
        gg = torch.outer(g, g)
        return {"covar": (M - gg) / batch_size, "covar_mb": gb.T @ gb / nb - gg,
                "second_moment": M, "h2": H2}

    mats = stage("covariances", covariances)
    lam, V = stage("eigh", torch.linalg.eigh, H)
    lam, V = lam.flip(0)[:k].numpy(), V.flip(1)[:, :k]

    def fits():
        return {name: _gamma(((V.T @ X) * V.T).sum(1).numpy(), lam, n_fit)
                for name, X in mats.items()}

    gamma = stage("projections_fits", fits)
    per_sample = sum(seconds[s] for s in PER_SAMPLE_STAGES)
    return {"gamma": gamma, "values": lam, "N": N, "D": D, "k": k,
            "stage_seconds": dict(seconds), "seconds_per_sample_stages": per_sample,
            "seconds_fixed_stages": sum(seconds.values()) - per_sample,
            "seconds": sum(seconds.values())}
