"""Brute-force float64 references for the awch-scale test suite.

Everything here is written independently of ``awch_scale``: the losses are spelled
out, the block is resolved from the model's own parameter names, the Hessian is
``torch.func.hessian`` of the full model (no feature caching), per-sample gradients
come from an explicit Python loop over ``torch.autograd.grad``, and every D x D
matrix of ../shared/SPEC.md (sections 1-3, 6) is formed densely. Only use it on tiny
models (D up to a few hundred).

Conventions:

- A *target* is a module name (its parameters, in ``named_parameters`` order, form
  the block) or a list of parameter names (concatenated in the given order). Each
  parameter is flattened row-major (``W.reshape(-1)``).
- Every reference works on a float64 deep copy of the model in eval mode, so the
  caller's model is never touched and a float32 model is compared against float64.
- Dense matrices and per-sample gradients are returned as float64 NumPy arrays.

API (import as ``import dense_reference as ref``; ``tests/conftest.py`` puts this
folder on ``sys.path``):

- losses: :func:`ce_loss`, :func:`mse_loss`, :func:`lmse_loss`, :data:`LOSSES`
- models and data (defined in ``tests/tiny_models.py``, re-exported here): :func:`make_fc`,
  :func:`make_cnn`, :func:`make_data`, :func:`make_model`, :data:`FC_INPUT_SHAPE`,
  :data:`CNN_INPUT_SHAPE`
- block: :func:`block_parameter_names`, :func:`flat_block`, :func:`unflatten_block`,
  :func:`block_loss`
- matrices: :func:`dense_hessian`, :func:`per_sample_gradients`, :func:`dense_ggn`,
  :func:`dense_second_moment`, :func:`dense_covariance`,
  :func:`dense_minibatch_covariance`
- matrices with a given spectrum: :func:`random_orthogonal`,
  :func:`matrix_with_spectrum`, :func:`graded_matrix`
- spectra: :func:`dense_eigh`, :func:`fix_signs`, :func:`projector_distance`,
  :func:`gapped_k`, :func:`separated_indices`
- per-sample Hessians and AWD perturbations (SPEC 4): :class:`PerSampleDense`
- fits: :func:`loglog_fit`, :class:`LogLogFit`
- runtime: :func:`single_thread` (also from ``tests/tiny_models.py``)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tiny_models import (  # noqa: F401  (part of this module's API)
    CNN_INPUT_SHAPE,
    FC_INPUT_SHAPE,
    make_cnn,
    make_data,
    make_fc,
    make_model,
    single_thread,
)
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jacrev

Target = str | Sequence[str]
LossFn = Callable[[Tensor, Tensor], Tensor]

# ----------------------------------------------------------------------------- losses


def _onehot(y: Tensor, k: int, like: Tensor) -> Tensor:
    """One-hot rows of the labels y (n,) -> (n, k), dtype of ``like``."""
    return torch.eye(k, dtype=like.dtype, device=like.device)[y]


def ce_loss(z: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross entropy -log softmax(z)[y] = logsumexp(z) - z_y; z (n, K), y (n,)."""
    zmax = z.max(dim=-1, keepdim=True).values.detach()
    lse = zmax.squeeze(-1) + torch.log(torch.exp(z - zmax).sum(dim=-1))
    z_y = (z * _onehot(y, z.shape[-1], z)).sum(dim=-1)
    return lse - z_y


def mse_loss(z: Tensor, y: Tensor) -> Tensor:
    """Per-sample softmax-MSE (1/K) sum_c (softmax(z)_c - onehot(y)_c)^2."""
    k = z.shape[-1]
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values.detach())
    p = e / e.sum(dim=-1, keepdim=True)
    return ((p - _onehot(y, k, z)) ** 2).sum(dim=-1) / k


def lmse_loss(z: Tensor, y: Tensor) -> Tensor:
    """Per-sample linear MSE (1/K) sum_c (z_c - onehot(y)_c)^2."""
    k = z.shape[-1]
    return ((z - _onehot(y, k, z)) ** 2).sum(dim=-1) / k


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "mse": mse_loss, "lmse": lmse_loss}
"""Loss name (as in recipes / ``analyze_checkpoint(loss=...)``) -> per-sample loss."""

# ----------------------------------------------------------------------------- block


def as_target(target: Target) -> Target:
    """A parametrised target (tuple of parameter names) as awch-scale takes it (a list)."""
    return target if isinstance(target, str) else list(target)


def block_parameter_names(model: nn.Module, target: Target) -> list[str]:
    """Parameter names forming the block of ``target`` (module name or list of names)."""
    params = dict(model.named_parameters())
    if isinstance(target, str):
        prefix = target + "."
        names = [n for n in params if n.startswith(prefix)]
    else:
        names = list(target)
    if not names or any(n not in params for n in names):
        raise KeyError(f"target {target!r} does not name parameters of the model")
    return names


def _float64_eval(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).to(torch.float64)
    m.eval()
    return m


def flat_block(model: nn.Module, target: Target) -> Tensor:
    """The block w (float64 copy): parameters of the target flattened and concatenated."""
    params = dict(model.named_parameters())
    names = block_parameter_names(model, target)
    return torch.cat([params[n].detach().reshape(-1).to(torch.float64) for n in names])


def unflatten_block(model: nn.Module, names: list[str], w: Tensor) -> dict[str, Tensor]:
    """The flat block vector ``w`` as the parameters ``names`` of ``model`` (their shapes,
    in order): the inverse of :func:`flat_block`."""
    params = dict(model.named_parameters())
    out, offset = {}, 0
    for n in names:
        shape = params[n].shape
        size = math.prod(shape)
        out[n] = w[offset:offset + size].reshape(shape)
        offset += size
    assert offset == w.numel()
    return out


def _setup(model, target, inputs, labels, loss):
    m = _float64_eval(model)
    names = block_parameter_names(m, target)
    x = inputs.detach().to(torch.float64)
    y = labels.detach().to(torch.long)
    loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
    return m, names, x, y, loss_fn


def block_loss(
    model: nn.Module, target: Target, inputs: Tensor, labels: Tensor, loss: str | LossFn
) -> Callable[[Tensor], Tensor]:
    """w -> L(w) = (1/N) sum_i l_i(w), float64, the whole model evaluated in eval mode."""
    m, names, x, y, loss_fn = _setup(model, target, inputs, labels, loss)

    def f(w: Tensor) -> Tensor:
        z = functional_call(m, unflatten_block(m, names, w), (x,))
        return loss_fn(z, y).mean()

    return f


# ----------------------------------------------------------------------------- matrices


def dense_hessian(
    model: nn.Module, target: Target, inputs: Tensor, labels: Tensor, loss: str | LossFn
) -> np.ndarray:
    """H = d^2 L / dw^2 (D x D, float64) by ``torch.func.hessian`` of the mean loss.

    The result is symmetrised, (H + H^T) / 2, which only removes round-off.
    """
    f = block_loss(model, target, inputs, labels, loss)
    w = flat_block(model, target)
    H = torch.func.hessian(f)(w).detach().numpy()
    return 0.5 * (H + H.T)


def per_sample_gradients(
    model: nn.Module, target: Target, inputs: Tensor, labels: Tensor, loss: str | LossFn
) -> np.ndarray:
    """G with G[i] = grad_w l_i (N x D, float64), one ``torch.autograd.grad`` per sample."""
    m, names, x, y, loss_fn = _setup(model, target, inputs, labels, loss)
    w0 = flat_block(m, names)
    rows = []
    for i in range(x.shape[0]):
        w = w0.clone().requires_grad_(True)
        z = functional_call(m, unflatten_block(m, names, w), (x[i:i + 1],))
        (g,) = torch.autograd.grad(loss_fn(z, y[i:i + 1])[0], w)
        rows.append(g.detach().numpy())
    return np.stack(rows)


def dense_ggn(
    model: nn.Module, target: Target, inputs: Tensor, labels: Tensor, loss: str
) -> np.ndarray:
    """F = (1/N) sum_i J_i^T Lambda_i J_i (D x D, float64), J_i = d logits_i / d w by
    ``torch.func.jacrev`` one sample at a time, Lambda_i the loss's Hessian in the logits
    written out (SPEC 5): ``ce`` diag(p) - p p^T, ``mse`` (2/K) S^2 with S that softmax
    Jacobian, ``lmse`` (2/K) I."""
    m, names, x, _, _ = _setup(model, target, inputs, labels, loss)
    w0 = flat_block(m, names)

    def logits(w, xi):
        return functional_call(m, unflatten_block(m, names, w), (xi[None],))[0]

    F = np.zeros((w0.numel(), w0.numel()))
    for xi in x:
        J = jacrev(logits)(w0, xi).detach().numpy()  # (K, D)
        z = logits(w0, xi).detach().numpy()
        K = z.shape[0]
        p = np.exp(z - z.max())
        p /= p.sum()
        S = np.diag(p) - np.outer(p, p)
        Lam = {"ce": S, "mse": (2.0 / K) * S @ S, "lmse": (2.0 / K) * np.eye(K)}[loss]
        F += J.T @ Lam @ J
    return F / len(x)


def dense_second_moment(G: np.ndarray) -> np.ndarray:
    """M = (1/N) sum_i g_i g_i^T, explicit loop over samples."""
    M = np.zeros((G.shape[1], G.shape[1]))
    for g in G:
        M += np.outer(g, g)
    return M / G.shape[0]


def dense_covariance(G: np.ndarray, batch_size: int) -> np.ndarray:
    """C = (1/B) [ (1/N) sum_i g_i g_i^T - g g^T ], g = (1/N) sum_i g_i (SPEC 3, Eq. 2)."""
    g = G.mean(axis=0)
    return (dense_second_moment(G) - np.outer(g, g)) / batch_size


def minibatch_permutation(n: int, seed: int) -> np.ndarray:
    """The shuffle of ``covar_mb``: ``np.random.default_rng(seed).permutation(n)``."""
    return np.random.default_rng(seed).permutation(n)


def dense_minibatch_covariance(G: np.ndarray, batch_size: int, seed: int) -> np.ndarray:
    """C_mb = mean_b g_b g_b^T - g g^T over the full batches of one seeded shuffle.

    The permutation is :func:`minibatch_permutation`; batch b holds
    perm[b*B:(b+1)*B]; the trailing N mod B samples are dropped; g is the mean
    over all N samples.
    """
    n, d = G.shape
    perm = minibatch_permutation(n, seed)
    n_batches = n // batch_size
    acc = np.zeros((d, d))
    for b in range(n_batches):
        idx = perm[b * batch_size:(b + 1) * batch_size]
        gb = G[idx].mean(axis=0)
        acc += np.outer(gb, gb)
    g = G.mean(axis=0)
    return acc / n_batches - np.outer(g, g)


# ----------------------------------------------------------------------------- given spectra


def random_orthogonal(D: int, rng: np.random.Generator | int = 0) -> np.ndarray:
    """Q of the QR factorisation of a D x D standard normal matrix drawn from ``rng`` (a
    NumPy Generator, which the caller may go on drawing from, or a seed)."""
    rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
    return np.linalg.qr(rng.standard_normal((D, D)))[0]


def matrix_with_spectrum(lam: np.ndarray, Q: np.ndarray | None = None, *,
                         seed: int = 0) -> np.ndarray:
    """A = Q diag(lam) Q^T (float64, symmetric, eigenvalues ``lam``, eigenvectors the
    columns of Q); Q = ``random_orthogonal(len(lam), seed)`` unless given."""
    Q = random_orthogonal(len(lam), seed) if Q is None else Q
    return (Q * np.asarray(lam, dtype=np.float64)) @ Q.T


def graded_matrix(D: int = 300, k: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(A, its top-k eigenvalues): the top k log-spaced from 10^0 to 10^-6, the rest
    uniform in [0, 0.9e-6) (a small gap below lambda_k: the small pairs converge slowly)."""
    g = np.random.default_rng(seed)
    U = random_orthogonal(D, g)
    lam = np.concatenate([np.logspace(0, -6, k), 0.9e-6 * g.random(D - k)])
    return matrix_with_spectrum(lam, U), lam[:k]


# ----------------------------------------------------------------------------- spectra


def fix_signs(U: np.ndarray) -> np.ndarray:
    """Flip columns so that each column's entry of largest magnitude is positive."""
    U = np.array(U, dtype=np.float64, copy=True)
    for j in range(U.shape[1]):
        i = int(np.argmax(np.abs(U[:, j])))
        if U[i, j] < 0:
            U[:, j] *= -1
    return U


def dense_eigh(H: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All eigenpairs of symmetric H by ``torch.linalg.eigh``, eigenvalues descending.

    Eigenvectors (columns) follow the SPEC 2 sign convention (:func:`fix_signs`).
    """
    vals, vecs = torch.linalg.eigh(torch.as_tensor(H, dtype=torch.float64))
    vals, vecs = vals.numpy()[::-1].copy(), vecs.numpy()[:, ::-1]
    return vals, fix_signs(vecs)


def projector_distance(V: np.ndarray, U: np.ndarray) -> float:
    """||V V^T - U U^T||_2 for orthonormal (D, k) bases: sin of the largest principal angle."""
    V, U = np.asarray(V, dtype=np.float64), np.asarray(U, dtype=np.float64)
    return float(np.linalg.norm(V @ V.T - U @ U.T, ord=2))


def gapped_k(values: np.ndarray, k_min: int = 2, k_max: int = 6) -> tuple[int, float]:
    """The k in [k_min, k_max] with the largest relative gap (lam_k - lam_{k+1}) / |lam_1|.

    ``values`` must be sorted descending and have more than k_max entries. Returns
    (k, relative gap).
    """
    scale = np.abs(values).max()
    gaps = [(values[k - 1] - values[k]) / scale for k in range(k_min, k_max + 1)]
    j = int(np.argmax(gaps))
    return k_min + j, float(gaps[j])


def separated_indices(values: np.ndarray, k: int, min_rel_gap: float) -> list[int]:
    """Indices i < k whose eigenvalue is at least ``min_rel_gap * |lam_1|`` from all others."""
    scale = np.abs(values).max()
    out = []
    for i in range(k):
        others = np.delete(values, i)
        if np.min(np.abs(others - values[i])) >= min_rel_gap * scale:
            out.append(i)
    return out


# ----------------------------------------------------------------------------- per-sample (SPEC 4)


class PerSampleDense:
    """Dense per-sample quantities of the whole model w.r.t. a flattened Linear weight.

    For the target Linear module ``target`` (weight W, d_out x d_in, flattened row-major
    into w) of ``model`` (put in eval mode) on (x, y) with per-sample loss ``loss``:

    - ``a`` (N, d_in): the layer's inputs a_p, from a forward hook;
    - ``h`` (N, D, D): h_p = d^2 l_p / dw^2 by ``torch.func.hessian`` of the single-sample
      loss of the whole model;
    - ``g`` (N, D): g_p = d l_p / dw by ``torch.func.grad``;
    - ``H`` (D, D): (1/N) sum_p h_p;
    - :meth:`terms` (p, j): (h_p dw_p, J_p^T g_p, dw_p) with the AWD perturbation
      dw_p = vec((W (a_j - a_p)) a_p^T) / |a_p|^2 for partner j and J_p = d dw_p / dw
      by ``torch.func.jacrev``.
    """

    def __init__(self, model: nn.Module, target: str, x: Tensor, y: Tensor,
                 loss: str | LossFn):
        self.model, self.x, self.y = model.eval(), x, y
        self.loss = LOSSES[loss] if isinstance(loss, str) else loss
        self.name = f"{target}.weight"
        self.params = {n: p.detach() for n, p in model.named_parameters()}
        self.shape = self.params[self.name].shape
        self.w = self.params[self.name].reshape(-1).clone()
        layer = dict(model.named_modules())[target]
        seen = []
        h = layer.register_forward_hook(lambda _m, i, _o: seen.append(i[0].detach()))
        with torch.no_grad():
            model(x)
        h.remove()
        self.a = seen[0].reshape(len(x), -1)
        self.h = torch.stack([hessian(self.sample_loss)(self.w, i) for i in range(len(x))])
        self.g = torch.stack([grad(self.sample_loss)(self.w, i) for i in range(len(x))])
        self.H = self.h.mean(0)

    def batch_loss(self, w: Tensor, idx) -> Tensor:
        """Per-sample losses (len(idx),) of the samples idx with the target weight w."""
        p = {**self.params, self.name: w.view(self.shape)}
        return self.loss(functional_call(self.model, p, (self.x[idx],)), self.y[idx])

    def sample_loss(self, w: Tensor, i: int) -> Tensor:
        return self.batch_loss(w, [i])[0]

    def dw_fn(self, i: int, j: int) -> Callable[[Tensor], Tensor]:
        """w -> dw_i for partner j: vec((W (a_j - a_i)) a_i^T) / |a_i|^2."""
        a, da = self.a[i], self.a[j] - self.a[i]
        return lambda w: torch.outer(w.view(self.shape) @ da, a).reshape(-1) / (a @ a)

    def terms(self, i: int, j: int) -> tuple[Tensor, Tensor, Tensor]:
        dw = self.dw_fn(i, j)
        J = jacrev(dw)(self.w)  # (D, D): d dw / d w
        return self.h[i] @ dw(self.w), J.T @ self.g[i], dw(self.w)


# ----------------------------------------------------------------------------- fits


@dataclass(frozen=True)
class LogLogFit:
    """Least-squares line log10 x = gamma * log10 lam + c (NaN fields when n < 3)."""

    gamma: float
    intercept: float
    stderr: float
    r2: float
    n: int


def loglog_fit(x_diag, eigvals, n_fit: int | None = None) -> LogLogFit:
    """Fit log10 x_i on log10 lam_i for i < n_fit where both are finite and > 0.

    Slope and intercept by ``numpy.polyfit``; stderr = sqrt(SSR / (n - 2) / Sxx);
    r2 = 1 - SSR / SST (equal to the squared Pearson correlation for a fit with an
    intercept). Fewer than 3 usable points, or all lam equal, give NaN.
    """
    x = np.asarray(x_diag, dtype=np.float64)
    lam = np.asarray(eigvals, dtype=np.float64)
    if n_fit is not None:
        x, lam = x[:n_fit], lam[:n_fit]
    ok = np.isfinite(x) & np.isfinite(lam) & (x > 0) & (lam > 0)
    n = int(ok.sum())
    nan = float("nan")
    if n < 3:
        return LogLogFit(nan, nan, nan, nan, n)
    u, v = np.log10(lam[ok]), np.log10(x[ok])
    if np.all(u == u[0]):
        return LogLogFit(nan, nan, nan, nan, n)
    slope, intercept = np.polyfit(u, v, 1)
    resid = v - (slope * u + intercept)
    ssr = float(resid @ resid)
    sxx = float(((u - u.mean()) ** 2).sum())
    sst = float(((v - v.mean()) ** 2).sum())
    stderr = math.sqrt(ssr / (n - 2) / sxx)
    r2 = 1.0 - ssr / sst if sst > 0 else nan
    return LogLogFit(float(slope), float(intercept), stderr, r2, n)
