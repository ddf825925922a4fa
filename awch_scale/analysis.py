"""``analyze_checkpoint``: one trained model in, one labelled ``xarray.Dataset`` out."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn
from tqdm.auto import tqdm

from .awd import MATRIX_VARIABLES, awd_analysis
from .covariance import covariance, minibatch_covariance, second_moment
from .eigen import top_eigenpairs
from .operators import BlockOperator, HessianOperator, KroneckerHessianOperator
from .per_sample import projected_gradients
from .powerlaw import gamma_variables
from .problem import BlockProblem, make_problem
from .variables import annotate

GAMMA_ESTIMATORS = ("covar", "covar_mb")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None -> cuda when available, else cpu."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def analyze_checkpoint(
    model: nn.Module,
    target: str | Sequence[str],
    inputs: Tensor,
    labels: Tensor,
    *,
    loss: str,
    batch_size: int,
    k: int,
    n_fit: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    chunk_size: int | None = None,
    memory_budget_mb: float = 2048,
    eigen_method: str = "auto",
    eigen_tol: float = 1e-6,
    eigen_maxiter: int | None = None,
    eigen_ncv: int | None = None,
    eigen_block: int = 32,
    operator: str = "auto",
    per_sample_backend: str = "auto",
    awd: bool = False,
    n_draws: int = 20,
    n_probe: int = 100,
    n_partner_batches: int = 10,
    probe_spectra: bool = False,
    n_modes: int | None = None,
    diag_only: Sequence[str] = (),
    progress: bool = False,
) -> xr.Dataset:
    """Analyse one trained model on the analysis set (inputs, labels).

    Computes, for the target block w in R^D, the top-k Hessian eigenbasis V (SPEC 2),
    the per-sample gradients projected onto V in one streamed pass, and from them
    ``covar``, ``second_moment``, ``covar_mb`` (SPEC 3) and the power-law fits
    ``gamma``/``gamma_stderr``/``gamma_r2``/``gamma_n`` for ``covar`` and ``covar_mb``
    (SPEC 6). No D x D matrix is formed: memory is O(k D + chunk D).

    Args:
        model: the trained network (left unchanged; a copy is put in eval mode).
        target: module name of a bias-free ``nn.Linear`` (or any module), or a list of
            parameter names forming the block.
        inputs: analysis-set inputs, shape (N, ...).
        labels: integer labels, shape (N,).
        loss: ``ce``, ``mse`` or ``lmse`` (SPEC 1).
        batch_size: the training batch size B of Eq. 2.
        k: number of eigenpairs (1 <= k < D).
        n_fit: leading directions used in the gamma fit (default k).
        seed: seeds the Lanczos start vector and the minibatch shuffle of ``covar_mb``.
        device: ``cpu``, ``cuda``, ``auto`` or None (auto).
        dtype: dtype of the products (default: the model's); accumulation is float64.
        chunk_size: samples per streamed chunk (None: chosen from ``memory_budget_mb``).
        memory_budget_mb: memory the streamed temporaries may use; sets the chunk size
            (per-sample gradient chunks of chunk * D values), the cache of the Kronecker
            operator's Q_i and the chunking of the AWD passes (:func:`memory_plan`).
        eigen_method: ``auto``, ``eigsh`` (ARPACK Lanczos) or ``block`` (block Krylov);
            see :func:`awch_scale.eigen.top_eigenpairs`.
        eigen_tol, eigen_maxiter, eigen_ncv, eigen_block: eigensolver settings.
        operator: Hessian products by ``hvp`` (torch.func jvp-of-grad, any block),
            ``kronecker`` (exact h_i = Q_i (x) a_i a_i^T of a bias-free Linear target),
            or ``auto`` (kronecker when the target is such a layer).
        per_sample_backend: ``auto``/``torch_func`` or ``backpack`` (BatchGrad) for the
            per-sample gradients.
        awd: also compute the activity-weight duality terms, per-sample Hessian moments
            and spectra of SPEC section 4 (:func:`awch_scale.awd.awd_analysis`; needs a
            bias-free ``nn.Linear`` target) and their gamma fits.
        n_draws: matched batch pairs T (``pair_nu``/``pair_mu``).
        n_probe: probe-set size (``probe_idx``).
        n_partner_batches: partner batches R per probe (``probe_partner``).
        probe_spectra: also return ``kappa(probe, mode)`` and ``u_proj(probe, mode, eig)``.
        n_modes: modes kept in the probe spectra (default d_out).
        diag_only: names of k x k variables returned as their diagonal only (dim ``eig``),
            for large k; any of covar, covar_mb, second_moment and the AWD matrices.
        progress: show progress bars.

    Returns:
        Dataset with dims ``eig``/``eig_`` (1..k) and ``estimator``; attributes ``D``,
        ``N``, ``k``, ``n_fit``, ``loss``, ``batch_size``, ``target``, timings.
    """
    device = resolve_device(device)
    problem = make_problem(model, target, inputs, labels, loss, chunk_size=chunk_size or 1024,
                           device=device, dtype=dtype)
    memory = memory_plan(problem, memory_budget_mb, chunk_size)
    problem.chunk_size = memory["chunk_size"]
    n_fit = k if n_fit is None else n_fit
    if not 0 < k < problem.D:
        raise ValueError(f"k = {k} must satisfy 0 < k < D = {problem.D} for target {target!r}")
    if not 1 <= n_fit <= k:
        raise ValueError(f"n_fit = {n_fit} must satisfy 1 <= n_fit <= k = {k}")
    if not 1 <= batch_size <= problem.N:
        raise ValueError(f"batch_size = {batch_size} must satisfy 1 <= batch_size <= "
                         f"{problem.N} (the analysis samples)")
    unknown = set(diag_only) - set(DIAG_ONLY_ALLOWED)
    if unknown:
        raise ValueError(f"diag_only names {sorted(unknown)} are not k x k variables; allowed: "
                         f"{', '.join(DIAG_ONLY_ALLOWED)}")
    if awd and problem.linear_name is None:
        raise ValueError(f"awd=True needs a bias-free nn.Linear target; {target!r} is not one")
    awd_kw = dict(n_draws=n_draws, n_probe=n_probe, n_partner_batches=n_partner_batches,
                  store_probe_spectra=probe_spectra, n_modes=n_modes) if awd else None
    return _analyze(problem, loss=loss, batch_size=batch_size, k=k, n_fit=n_fit, seed=seed,
                    eigen=dict(method=eigen_method, tol=eigen_tol, maxiter=eigen_maxiter,
                               ncv=eigen_ncv, block=eigen_block),
                    progress=progress, target=target, backend=per_sample_backend,
                    operator=operator, awd=awd_kw, diag_only=tuple(diag_only), memory=memory)


def memory_plan(problem: BlockProblem, budget_mb: float, chunk_size: int | None = None) -> dict:
    """Chunk sizes and caches from a memory budget (bytes of streamed temporaries).

    A quarter of the budget bounds one chunk of per-sample gradients (about 4 * chunk * D
    values with vmap's temporaries), half of it the Kronecker operator's Q_i cache, and
    a quarter the AWD chunks and the Kronecker products' (chunk, d_out, m) blocks.
    """
    budget = int(budget_mb * 2**20)
    item = torch.empty((), dtype=problem.dtype).element_size()
    if chunk_size is None:
        chunk_size = int(min(problem.N, max(8, budget // 4 // (4 * problem.D * item))))
    d_out = problem.block_shapes[0][0] if problem.linear_name else 1
    kron_vectors = int(min(256, max(1, budget // 4 // (3 * chunk_size * d_out * item))))
    return dict(chunk_size=chunk_size, q_cache_bytes=budget // 2, kron_vectors=kron_vectors,
                awd_chunk_elements=max(1, budget // 4 // 8))


def hessian_operator(problem: BlockProblem, kind: str = "auto",
                     memory: dict | None = None) -> BlockOperator:
    """The Hessian operator of ``problem``: ``hvp``, ``kronecker`` or ``auto``."""
    if kind == "hvp" or (kind == "auto" and problem.linear_name is None):
        return HessianOperator(problem)
    if kind in ("kronecker", "auto"):
        memory = memory or memory_plan(problem, 2048, problem.chunk_size)
        return KroneckerHessianOperator(problem, max_vectors=memory["kron_vectors"],
                                        cache_bytes=memory["q_cache_bytes"])
    raise ValueError(f"unknown operator {kind!r}; allowed: auto, hvp, kronecker")


def _analyze(problem: BlockProblem, *, loss, batch_size, k, n_fit, seed, eigen, progress,
             target, backend, operator, awd, diag_only, memory) -> xr.Dataset:
    timings: dict[str, float] = {}
    hess = hessian_operator(problem, operator, memory)

    t0 = time.perf_counter()
    with tqdm(desc="Hessian eigenpairs", unit="HVP", disable=not progress, leave=False) as bar:
        hess.on_products = bar.update
        basis = top_eigenpairs(hess, k, seed=seed, **eigen)
        hess.on_products = None
    timings["seconds_eigen"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with tqdm(total=problem.n_chunks, desc="per-sample gradients", disable=not progress,
              leave=False) as bar:
        P = projected_gradients(problem, basis.vectors, progress=bar.update, backend=backend)
    mats = {
        "covar": covariance(P, batch_size),
        "second_moment": second_moment(P),
        "covar_mb": minibatch_covariance(P, batch_size, seed),
    }
    timings["seconds_covariance"] = time.perf_counter() - t0

    eig = np.arange(1, k + 1)
    ds = xr.Dataset(
        {
            "hess_eigval": ("eig", basis.values),
            "hess_residual": ("eig", basis.residuals),
            **{name: _matrix(m, name in diag_only) for name, m in mats.items()},
        },
        coords={"eig": eig, "eig_": eig},
    )
    diagonals = {name: diagonal(ds[name].values) for name in GAMMA_ESTIMATORS}
    ds = ds.assign(gamma_variables(diagonals, basis.values, n_fit)).assign_coords(
        estimator=list(GAMMA_ESTIMATORS))
    if awd is not None:
        t0 = time.perf_counter()
        extra = awd_analysis(problem, basis.vectors, basis.values, batch_size=batch_size,
                             seed=seed, n_fit=n_fit, progress=progress,
                             max_chunk_elements=memory["awd_chunk_elements"],
                             diag_only=[n for n in diag_only if n in MATRIX_VARIABLES],
                             **awd)
        timings["seconds_awd"] = time.perf_counter() - t0
        ds = _merge_awd(ds, extra)
    ds.attrs.update(
        D=problem.D, N=problem.N, k=k, n_fit=n_fit, loss=loss, batch_size=batch_size,
        target=target if isinstance(target, str) else ",".join(target),
        device=str(problem.device), dtype=str(problem.dtype).removeprefix("torch."),
        n_hvp=basis.n_products, operator=type(hess).__name__, chunk_size=problem.chunk_size,
        **timings,
    )
    return annotate(ds)


DIAG_ONLY_ALLOWED = ("covar", "covar_mb", "second_moment", *MATRIX_VARIABLES)


def diagonal(x: np.ndarray) -> np.ndarray:
    """X_ii of a k x k matrix, or the array itself when only the diagonal was kept."""
    return x if x.ndim == 1 else np.diagonal(x).copy()


def _matrix(m, diag_only: bool):
    m = m.cpu().numpy()
    return ("eig", diagonal(m)) if diag_only else (("eig", "eig_"), m)


def _merge_awd(ds: xr.Dataset, extra: xr.Dataset) -> xr.Dataset:
    """Join the AWD dataset: gamma variables along ``estimator``, the rest merged."""
    gammas = ["gamma", "gamma_stderr", "gamma_r2", "gamma_n"]
    joined = xr.concat([ds[gammas], extra[gammas]], dim="estimator")
    rest = extra.drop_vars(gammas + ["estimator"])
    out = xr.merge([ds.drop_vars(gammas + ["estimator"]), rest, joined],
                   combine_attrs="override")
    out.attrs = {**ds.attrs, **extra.attrs}
    return out
