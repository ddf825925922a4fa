"""Stochastic Lanczos quadrature (SLQ) and the broadened spectral density of an operator
(Ubaru, Chen & Saad 2017; Papyan 2020, Alg. 2; SPEC 6 ``density``).

It needs only an operator's ``shape``, ``device`` and ``matmat``
(:class:`~awch_scale.linalg.protocol.Operator`).

Why not curvlinops' ``lanczos_approximate_spectrum`` (curvlinops 3.0.1, installed in the
bench extra): it draws its probes from torch's global RNG, and its Lanczos
(``fast_lanczos``) runs one probe per product with no reorthogonalisation and no
breakdown handling (a block with D <= steps, as in every dense test, gives NaN weights).
The few lines below run all probes as one block (one sweep over the data per Lanczos step
for all probes), reorthogonalise fully, stop a probe at breakdown, and are checked against
dense eigendecompositions in tests/test_spectra.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from awch_scale.linalg.protocol import Operator
from awch_scale.linalg.trace import rademacher


@dataclass
class LanczosQuadrature:
    """Gauss quadrature nodes and weights of n probes (lists, one entry per probe).

    For probe q = z / ||z||, the Lanczos tridiagonal T_m = S Theta S^T gives nodes
    theta_l and weights tau_l = S_{1l}^2 (sum_l tau_l = 1), with
    q^T f(A) q ~ sum_l tau_l f(theta_l), exact for polynomials of degree < 2m.
    """

    nodes: list[np.ndarray]
    weights: list[np.ndarray]


def lanczos_quadrature(op: Operator, probes: int, steps: int, seed: int, *,
                       reorthogonalize: bool = True) -> LanczosQuadrature:
    """Run ``steps`` Lanczos steps from each of ``probes`` seeded Rademacher vectors.

    All probes advance together (one block product per step). With ``reorthogonalize``
    each new vector is orthogonalised twice against all of its probe's previous ones
    (memory probes * steps * D float64); a probe whose new beta falls below
    1e-12 times the largest |alpha|, |beta| seen has found an invariant subspace and
    stops there (its quadrature is then exact).
    """
    D = op.shape[0]
    steps = min(steps, D)
    Q = rademacher(D, probes, seed, op.device)
    Q = Q / torch.linalg.vector_norm(Q, dim=0)
    if reorthogonalize:  # (probes, steps, D): each probe's basis, filled row by row
        basis = torch.empty(probes, steps, D, dtype=Q.dtype, device=Q.device)
        basis[:, 0] = Q.T
    alpha = np.zeros((steps, probes))
    beta = np.zeros((steps, probes))
    length = np.full(probes, steps)
    active = np.ones(probes, dtype=bool)
    prev = torch.zeros_like(Q)
    scale = np.zeros(probes)
    for m in range(steps):
        W = op.matmat(Q)
        a = (W * Q).sum(0)
        W = W - Q * a - prev * torch.as_tensor(beta[m - 1] if m else np.zeros(probes),
                                                device=W.device)
        if reorthogonalize:
            # two classical Gram-Schmidt passes, one batched product per pass for all
            # probes, on a view of the preallocated basis (no copy of it per step: at
            # D = 1e6 and 40 steps stacking it each step took more than the products)
            B = basis[:, :m + 1]
            Wt = W.T.contiguous()
            for _ in range(2):
                Wt = Wt - torch.bmm(torch.bmm(B, Wt[:, :, None]).transpose(1, 2), B)[:, 0]
            W = Wt.T
        # alpha and beta of every probe in one device-to-host copy (the step's only one)
        alpha[m], b = torch.stack([a, torch.linalg.vector_norm(W, dim=0)]).cpu().numpy()
        scale = np.maximum(scale, np.maximum(np.abs(alpha[m]), b))
        if m == steps - 1:
            break
        stop = active & (b <= 1e-12 * np.maximum(scale, 1e-300))
        length[stop] = m + 1
        active &= ~stop
        b = np.where(active, b, 1.0)
        beta[m] = np.where(active, b, 0.0)
        prev = Q
        Q = W / torch.as_tensor(b, device=W.device) * torch.as_tensor(active, device=W.device)
        if reorthogonalize:
            basis[:, m + 1] = Q.T
        if not active.any():
            break
    nodes, weights = [], []
    for j in range(probes):
        n = length[j]
        T = np.diag(alpha[:n, j]) + np.diag(beta[:n - 1, j], 1) + np.diag(beta[:n - 1, j], -1)
        th, S = np.linalg.eigh(T)
        nodes.append(th)
        weights.append(S[0] ** 2)
    return LanczosQuadrature(nodes, weights)


def exact_quadrature(values: np.ndarray, D: int) -> LanczosQuadrature:
    """The quadrature of a known spectrum: ``values`` (the nonzero part, or all of it)
    with weight 1/D each, and 0 with the remaining weight (D - len(values)) / D. Its
    broadened density is exact, as SLQ's with every probe run to breakdown would be."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.full(len(values), 1.0 / D)
    if len(values) < D:
        values = np.append(values, 0.0)
        weights = np.append(weights, (D - len(weights)) / D)
    return LanczosQuadrature([values], [weights])


def quadrature_range(quad: LanczosQuadrature) -> tuple[float, float]:
    """(smallest, largest) node of a quadrature: by Cauchy interlacing, inside the
    operator's spectrum."""
    th = np.concatenate(quad.nodes)
    return float(th.min()), float(th.max())


def spectral_grid(ranges: list[tuple[float, float]], grid_size: int) -> np.ndarray:
    """A uniform grid of ``grid_size`` points spanning every (lo, hi) of ``ranges`` (a
    degenerate span is widened to 1e-6 max(|lo|, 1))."""
    lo = min(r[0] for r in ranges)
    hi = max(r[1] for r in ranges)
    if hi <= lo:
        hi = lo + max(abs(lo), 1.0) * 1e-6
    return np.linspace(lo, hi, grid_size)


def density_on_grid(quad: LanczosQuadrature, grid: np.ndarray, width: float,
                    support: tuple[float, float] | None = None) -> np.ndarray:
    """phi(t) = mean_j sum_l tau_jl G_l(t) on ``grid`` (see :func:`broadened_density`).

    sigma = width * (grid span). Each Gaussian G_l is truncated to ``support`` (default
    the quadrature's node range widened by the grid's end points it falls between:
    :func:`quadrature_range`) and normalised there by the trapezoid rule, so the density
    integrates to 1 on the grid and puts no mass outside its operator's spectrum, also
    when the grid spans other operators' spectra too. A support narrower than three
    grid steps is widened to three steps around its centre (a point spectrum).
    """
    th = np.concatenate(quad.nodes)
    tau = np.concatenate(quad.weights) / len(quad.nodes)
    lo, hi = quadrature_range(quad) if support is None else support
    step = grid[1] - grid[0] if len(grid) > 1 else 1.0
    if hi - lo < 3 * step:
        mid = 0.5 * (lo + hi)
        lo, hi = mid - 1.5 * step, mid + 1.5 * step
    sigma = width * (grid[-1] - grid[0])
    inside = (grid >= lo - 1e-12 * step) & (grid <= hi + 1e-12 * step)
    G = np.exp(-0.5 * ((grid[None, :] - th[:, None]) / sigma) ** 2) * inside
    G /= np.trapezoid(G, grid, axis=1)[:, None]
    return tau @ G


def broadened_density(quad: LanczosQuadrature, grid_size: int, width: float,
                      upper: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """SLQ spectral density phi(t) = mean_j sum_l tau_jl G_l(t) on a uniform grid.

    The grid spans [min node, max(max node, ``upper``)]: by Cauchy interlacing every
    Ritz value lies inside the spectrum, so no mass is put outside it. G_l is a
    Gaussian centred at theta_l with standard deviation sigma = width * (grid span),
    truncated to the grid and normalised there (trapezoid rule), so the density
    integrates to exactly 1 on the grid (``np.trapezoid(density, grid) = 1``) and each
    node keeps its weight. Truncation moves the mean of a node within ~0.8 sigma of an
    end of the grid inwards; keep ``width`` small (default 1e-2 in
    :func:`awch_scale.analysis.spectra.spectra_variables`).
    """
    th = np.concatenate(quad.nodes)
    tau = np.concatenate(quad.weights) / len(quad.nodes)
    lo, hi = float(th.min()), float(th.max())
    if upper is not None:
        hi = max(hi, float(upper))
    if hi <= lo:
        hi = lo + max(abs(lo), 1.0) * 1e-6
    grid = np.linspace(lo, hi, grid_size)
    sigma = width * (hi - lo)
    G = np.exp(-0.5 * ((grid[None, :] - th[:, None]) / sigma) ** 2)
    G /= np.trapezoid(G, grid, axis=1)[:, None]
    return grid, tau @ G
