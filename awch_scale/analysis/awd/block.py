"""The AWD section for a block without the Linear layer's Kronecker structure.

The activity-weight duality terms of SPEC section 4 are built from a bias-free
``nn.Linear`` layer acting on one input vector a_p per sample: the weight perturbation
dw_p of Eq. 9 that mimics an input change (Terms I and II), and the per-sample
spectra h_p = Q_p (x) a_p a_p^T (d_out x d_out eigensolves). A Linear with a bias, a
Linear over a token dimension, an attention projection, a LayerNorm, a convolution or
several parameters have neither. What this module computes for such a block:

- ``h2`` (and ``h2_diag``), V^T E_p[h_p^2] V, defined for every block: from per-sample
  Hessian-vector products (:func:`awch_scale.model.per_sample_hessian.hessian_moments`);
  its gamma is gamma_AWD;
- ``c_pair``, (1/2) E_t[e e^T] with e = V^T (grad L^mu - grad L^nu) over T draws of two
  disjoint class-balanced batches: it needs only per-sample gradients. The one-to-one
  matching does not change it (the partners' mean gradient is grad L^mu whatever the
  order); here it is made on the head's inputs (``problem.features``, flattened), as
  there is no single target-layer input per sample, and ``pair_nu``/``pair_mu`` are
  stored as for a Linear target.

Everything else of the section is left out, with its reason in the dataset attribute
``awd_left_out`` (JSON: variable -> reason, copied into ``provenance``) and in one
``UserWarning`` naming the target: :data:`LEFT_OUT`.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor
from tqdm.auto import tqdm

from awch_scale.analysis.awd.matching import matched_draws, reference_draws
from awch_scale.analysis.powerlaw import gamma_variables
from awch_scale.model.per_sample import chunk_gradients
from awch_scale.model.per_sample_hessian import hessian_moments
from awch_scale.model.problem import BlockProblem
from awch_scale.variables import annotate
from awch_scale.world import SINGLE, World

_DELTA_W = ("needs the AWD weight perturbation dw_p of Eq. 9, defined for a bias-free "
            "nn.Linear acting on one input vector per sample")
_SPECTRA = ("needs the d_out x d_out per-sample spectra h_p = Q_p (x) a_p a_p^T of a "
            "bias-free nn.Linear acting on one input vector per sample")
LEFT_OUT: dict[str, str] = {
    **{name: _DELTA_W for name in ("c_hh", "c_hg", "c_gg", "c_awd_raw", "c_hh_sd",
                                   "c_hg_sd", "c_gg_sd")},
    **{name: _SPECTRA for name in ("c_hh_sd_wd", "sigma_w2", "probe_idx", "probe_partner",
                                   "kappa", "u_proj")},
    "c_li": "is (sigma_w2 / (2B)) h2, and sigma_w2 " + _SPECTRA,
    "suppression": "the suppression experiment (SPEC 7) " + _SPECTRA,
}
"""Variables of the AWD section (and the suppression stage) not computed for such a
block, with the reason."""

BLOCK_ESTIMATORS = ("c_pair", "h2")
"""The gamma estimators of the AWD section this module fits (in this order)."""


def block_awd_analysis(
    problem: BlockProblem,
    V: Tensor | np.ndarray,
    eigvals: np.ndarray,
    *,
    batch_size: int,
    n_draws: int,
    seed: int,
    max_chunk_elements: int,
    diag_only: Sequence[str] = (),
    n_fit: int | None = None,
    pairing: str = "matched",
    n_anchors: int = 20,
    fit_gamma: bool = True,
    progress: bool = False,
    world: World | None = None,
) -> xr.Dataset:
    """``h2``, ``h2_diag``, ``c_pair`` and their gammas for any block (module docstring).

    Args:
        problem: the block problem.
        V: top-k Hessian eigenvectors, (D, k).
        eigvals: their eigenvalues, (k,), for the power-law fits.
        batch_size: B.
        n_draws: T, draws of (nu, mu).
        seed: seeds the draws (``numpy.random.default_rng``).
        max_chunk_elements: bound on the values one vmapped per-sample Hessian call
            holds (:func:`~awch_scale.model.per_sample_hessian.moment_sizes`).
        diag_only: names stored as their diagonal (``h2``, ``c_pair`` among them apply).
        n_fit: leading directions of the gamma fits (default k).
        pairing: ``matched`` or ``reference`` (as :func:`awd_analysis`).
        n_anchors: anchors per class of ``reference``.
        fit_gamma: fit the power laws of :data:`BLOCK_ESTIMATORS` (``gamma*`` along
            ``estimator``); the analysis's gamma stage fits every estimator itself.
        progress: show progress bars.
        world: the processes sharing the analysis (sums split by chunks, all-reduced).

    Returns:
        A dataset shaped like :func:`awd_analysis`'s with the variables computed here,
        attributes ``awd_*`` including ``awd_left_out`` and ``awd_h1_rel_err``.
    """
    world = world or SINGLE
    V = torch.as_tensor(V).to(device=problem.device)
    eigvals = np.asarray(eigvals, dtype=np.float64)
    k = int(V.shape[1])
    n_fit = k if n_fit is None else int(n_fit)
    B, T = int(batch_size), int(n_draws)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    labels = problem.classes.cpu().numpy()
    feats = problem.features.reshape(problem.N, -1)
    if pairing == "matched":
        nu, mu = matched_draws(labels, feats, B, T, rng)
    else:
        nu, mu = reference_draws(labels, feats, B, T, int(n_anchors), rng)
    timings["awd_seconds_matching"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows = _projected_rows(problem, V, np.unique(np.concatenate([nu.ravel(), mu.ravel()])),
                           world)
    e = (rows(mu).view(T, B, k).sum(1) - rows(nu).view(T, B, k).sum(1)) / B
    c_pair = e.T @ e / (2.0 * T)
    timings["awd_seconds_draws"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    own = sum(len(range(problem.N)[c]) for c in world.shard(problem.slices()))
    with tqdm(total=own, desc="AWD E_p[h_p^2] (per-sample HVP)", disable=not progress,
              leave=False) as bar:
        hm = hessian_moments(problem, V, max_elements=max_chunk_elements, world=world,
                             progress=bar.update)
    timings["awd_seconds_h2"] = time.perf_counter() - t0

    out = {"c_pair": 0.5 * (c_pair + c_pair.T), "h2": hm.h2}
    data = {}
    for name, m in out.items():
        m = m.cpu().numpy()
        data[name] = (("eig",), np.diag(m).copy()) if name in diag_only else (("eig", "eig_"), m)
    data.update(h2_diag=(("eig",), np.diag(hm.h2.cpu().numpy()).copy()),
                pair_nu=(("draw", "slot"), nu), pair_mu=(("draw", "slot"), mu))
    eig = np.arange(1, k + 1)
    coords: dict[str, object] = {"eig": eig, "eig_": eig}
    if fit_gamma:
        diagonals = {name: np.diag(out[name].cpu().numpy()) for name in BLOCK_ESTIMATORS}
        data.update(gamma_variables(diagonals, eigvals, n_fit))
        coords["estimator"] = list(BLOCK_ESTIMATORS)
    ds = xr.Dataset(data, coords=coords)

    lam1 = abs(eigvals[0]) if k and eigvals[0] != 0 else 1.0
    h1 = hm.h1_diag.cpu().numpy()
    reason = problem.generic_reason or "the block is not one bias-free nn.Linear"
    ds.attrs.update(
        awd_method="per_sample_hvp", awd_target_mode="generic", awd_block=reason,
        awd_batch_size=B, awd_n_draws=T, awd_seed=int(seed), awd_n_fit=n_fit,
        awd_pairing=pairing, awd_n_anchors=int(n_anchors) if pairing == "reference" else 0,
        awd_pairs_matched_on="the head's inputs (problem.features), flattened",
        awd_diag_only=",".join(diag_only), awd_h2_route="per_sample_hvp",
        awd_h2_samples=hm.sizes.samples, awd_h2_vectors=hm.sizes.vectors,
        awd_left_out=json.dumps(LEFT_OUT, sort_keys=True),
        awd_h1_rel_err=float(np.max(np.abs(h1 - eigvals)) / lam1) if k else math.nan,
        **timings,
    )
    warnings.warn(left_out_message(", ".join(problem.block_names), reason), UserWarning,
                  stacklevel=2)
    return annotate(ds)


def left_out_message(target: str, reason: str) -> str:
    """The one message of a block AWD analysis: what was computed, what was left out, why."""
    delta = sorted(n for n, r in LEFT_OUT.items() if r == _DELTA_W)
    spectra = sorted(n for n, r in LEFT_OUT.items() if r == _SPECTRA)
    return (f"analysis.awd on target {target} ({reason}): computed h2, h2_diag, c_pair "
            f"(gamma_AWD = gamma[h2]); left out {', '.join(delta)} ({_DELTA_W}); "
            f"{', '.join(spectra)}, c_li and the suppression stage ({_SPECTRA}). The reasons "
            "are in provenance['awd_left_out'].")


def _projected_rows(problem: BlockProblem, V: Tensor, idx: np.ndarray, world: World):
    """V^T g_i for the analysis samples ``idx`` (chunks of ``problem.chunk_size``, this
    rank's share, all-reduced); returns a lookup ``indices -> (len, k) float64``."""
    k = int(V.shape[1])
    Vd = V.to(problem.dtype)
    out = torch.zeros(len(idx), k, dtype=torch.float64, device=problem.device)
    starts = list(range(0, len(idx), problem.chunk_size))
    for s in world.shard(starts):
        i = torch.as_tensor(idx[s:s + problem.chunk_size], device=problem.device)
        out[s:s + len(i)] = (chunk_gradients(problem, problem.features[i], problem.labels[i])
                             @ Vd).to(torch.float64)
    out = world.all_reduce(out)
    pos = np.full(problem.N, -1, dtype=np.int64)
    pos[idx] = np.arange(len(idx))

    def rows(which: np.ndarray) -> Tensor:
        return out[torch.as_tensor(pos[which.ravel()], device=problem.device)]

    return rows
