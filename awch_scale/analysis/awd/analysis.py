"""``awd_analysis``: the activity-weight duality terms of SPEC section 4, matrix-free.

What ``c_pair`` estimates. Given the class counts n_c, a draw takes disjoint uniform
subsets of each class for nu and mu (the matching only reorders mu). With N_c samples
in class c and S_c = (1/N_c) sum_{i in c} (g_i - m_c)(g_i - m_c)^T its within-class
gradient covariance, sampling without replacement gives
E[(sum_mu_c g - sum_nu_c g)(...)^T | n_c] = 2 n_c N_c S_c / (N_c - 1), and E[n_c] = B/C, so

    E[c_pair] = (1/(B C)) sum_c N_c / (N_c - 1) S_c.

With one class this is covar * N/(N - 1) (SPEC 3). With several classes the
between-class part of covar is absent: class-balanced matched batches see only
within-class noise, so c_pair (and the AWD terms approximating it) is not an unbiased
estimate of covar. tests/test_awd_pair.py checks this by enumeration and Monte Carlo.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor
from tqdm.auto import tqdm

from awch_scale.analysis.awd.accumulate import MomentSum
from awch_scale.analysis.awd.block import block_awd_analysis
from awch_scale.analysis.awd.matching import (
    matched_draws,
    probe_partners,
    reference_draws,
    reference_probe_partners,
)
from awch_scale.analysis.awd.moments import AutodiffMoments, KronMoments
from awch_scale.analysis.awd.spectra import add_probe_statistics, probe_spectra
from awch_scale.analysis.awd.terms import PairTerms, autodiff_pair_terms, kron_pair_terms
from awch_scale.analysis.powerlaw import gamma_variables
from awch_scale.model.problem import BlockProblem
from awch_scale.model.projection import RankOneBasis
from awch_scale.model.target import TargetLayer
from awch_scale.variables import DIAG_ONLY, GAMMA_ESTIMATORS, VARIABLES, annotate
from awch_scale.world import SINGLE

MATRIX_VARIABLES: tuple[str, ...] = tuple(n for n in DIAG_ONLY if VARIABLES[n].stage == "awd")
"""The k x k variables of the AWD stage in the registry (:mod:`awch_scale.variables`), in
its order; any of them can be stored as its diagonal (``diag_only``)."""

AWD_GAMMA_ESTIMATORS: tuple[str, ...] = tuple(
    n for n in GAMMA_ESTIMATORS if VARIABLES[n].stage == "awd")
"""Estimators of SPEC section 6 that :func:`awd_analysis` fits, in the registry's order
of the ``estimator`` dim."""

METHODS = ("kron", "autodiff")

PAIRINGS = ("matched", "reference")
"""Partner rules: SPEC 4's class-balanced one-to-one matching, or the reference code's."""

CROSS_TERMS = ("symmetrised", "once")
"""C^hg conventions: SPEC 4's s_I s_II^T + s_II s_I^T, or the reference's s_I s_II^T."""

MAX_CHUNK_ELEMENTS = 2**25
"""Default bound on the values one chunk of per-sample quantities holds (256 MiB in float64)."""


def awd_analysis(
    problem: BlockProblem,
    V: Tensor | np.ndarray,
    eigvals: np.ndarray,
    *,
    batch_size: int,
    n_draws: int,
    n_probe: int,
    n_partner_batches: int,
    seed: int,
    diag_only: Sequence[str] = (),
    store_probe_spectra: bool = False,
    n_modes: int | None = None,
    n_fit: int | None = None,
    fit_gamma: bool = True,
    method: str = "kron",
    max_chunk_elements: int = MAX_CHUNK_ELEMENTS,
    h2_route: str = "auto",
    pairing: str = "matched",
    n_anchors: int = 20,
    cross_term: str = "symmetrised",
    progress: bool = False,
    layer: TargetLayer | None = None,
    q_source=None,
    world=None,
) -> xr.Dataset:
    """AWD terms, per-sample Hessian moments and spectra of a Linear target (SPEC 4, 6).

    The target block must be one bias-free ``nn.Linear`` weight W (d_out x d_in) with
    known inputs a_p (``problem.linear_name``/``linear_inputs``). No D x D matrix and no
    per-sample D-vector is formed on the default path: every per-sample quantity is a
    rank-one matrix vec(u a^T) or a Kronecker product Q_p (x) a_p a_p^T and is projected
    onto V through V reshaped to (d_out, d_in, k). Sums are accumulated in float64.

    Random choices come from ``numpy.random.default_rng(seed)``: first the T matched
    draws, then the probe set and its partners. The indices are returned, so every
    number can be recomputed.

    Args:
        problem: the block problem (analysis set, loss, model split).
        V: top-k Hessian eigenvectors, (D, k) (as ``analyze_checkpoint`` computes).
        eigvals: their eigenvalues lambda_1 >= ... >= lambda_k, for the power-law fits.
        batch_size: B, the size of nu, mu and of the partner batches.
        n_draws: T, matched draws (nu, mu).
        n_probe: size of the probe set P.
        n_partner_batches: R, partner batches per probe.
        seed: seeds every random choice.
        diag_only: names among :data:`MATRIX_VARIABLES` stored as their diagonal
            (dim ``eig``) instead of k x k; the accumulation then keeps O(k) values
            unless another full variable needs the matrix (c_awd_raw needs c_hh, c_hg,
            c_gg; c_li needs h2).
        store_probe_spectra: also return ``kappa(probe, mode)`` and
            ``u_proj(probe, mode, eig)`` = v_i . u_m^(p) of the top ``n_modes`` modes.
        n_modes: modes kept by ``store_probe_spectra`` (default d_out, all nonzero modes).
        n_fit: leading directions of the gamma fits (default k).
        fit_gamma: fit the power laws of :data:`AWD_GAMMA_ESTIMATORS` (``gamma*`` and
            the ``estimator`` dim); ``analyze_checkpoint`` fits every estimator once in
            its gamma stage, so its AWD stage leaves this off.
        method: ``kron`` (closed forms of the Linear layer, the production path) or
            ``autodiff`` (weight-space torch.func HVP/VJP for the pair terms and h2,
            (chunk, D) and (chunk, D, k) memory: a cross-check for small D). The probe
            spectra always use the Kronecker form.
        max_chunk_elements: bound on the values one chunk of per-sample quantities
            holds; sets the chunk size together with ``problem.chunk_size``.
        h2_route: ``auto``, ``direct`` or ``weight``: how the ``kron`` method sums
            V^T h_p^2 V (see :mod:`.moments`; equal results, different cost).
        pairing: ``matched`` (SPEC 4, the default): T draws of two disjoint
            class-balanced batches, one-to-one linear-assignment partners; the probe
            partners are the nearest same-class samples of R class-balanced partner
            batches. ``reference``: the partner rule of the authors' AW-CH code
            (:mod:`.matching`, "reference rule"): nu are consecutive B-slices of shuffled
            passes over the analysis set, and every partner is the nearest (Euclidean,
            target-layer inputs, itself skipped) of ``n_anchors`` random same-class
            anchors, redrawn for every draw and for every probe partner r. Either way
            ``pair_nu``/``pair_mu``/``probe_idx``/``probe_partner`` hold the indices used,
            and every formula below applies to them unchanged (for ``c_pair``, g_mu is the
            mean gradient of the B partners, repeats counted).
        n_anchors: anchors per class of ``pairing="reference"`` (the reference's
            ``sample_number``, 20 in its ``cal_C_cuda_multi.py``); ignored otherwise.
        cross_term: ``symmetrised`` (SPEC 4, the default): c_hg = (1/(2B^2))
            E_t[s_I s_II^T + s_II s_I^T], c_hg_sd likewise per sample. ``once`` (the
            reference's C2, C2_dia): c_hg = (1/(2B^2)) E_t[s_I s_II^T] and
            c_hg_sd = (1/(2B^2)) E_t[sum_p (V^T I_p)(V^T II_p)^T], not symmetric; its
            diagonal is half the symmetrised one. c_awd_raw = c_hh + c_hg + c_gg follows.
        progress: show progress bars.
        layer: an existing :class:`TargetLayer` of ``problem`` to share (e.g. the
            Kronecker Hessian operator's), so the layer's inputs are not recomputed.
        q_source: an operator whose cached Q_p the h2 pass reuses (``q_rows``), e.g. the
            :class:`~awch_scale.model.operators.KroneckerHessianOperator` of the same problem.
        world: a :class:`~awch_scale.world.World` of several processes, every one
            calling with the same arguments. The index draws (matching) are made on
            every rank from the same seed (replicated: cheap bookkeeping, and every rank
            needs them); the three sums are split: groups of matched draws and chunks
            of probes round robin over the ranks (at least one per rank), the
            E_p[h_p^2] pass by the problem's chunks (the Hessian operator's shard, so its
            cached Q_p are found). All sums, the probe statistics and the stored probe
            spectra are then all-reduced in one float64 buffer; every rank returns the
            same dataset (equal to the one-process one up to summation order).

    Returns:
        Dataset (float64 values, int64 indices) with dims ``eig``/``eig_`` (coords
        1..k), ``draw``, ``slot``, ``probe``, ``partner`` (no coords), ``mode`` (coords
        1..n_modes, when stored) and ``estimator`` (with ``fit_gamma``); variables
        ``pair_nu``, ``pair_mu``, the :data:`MATRIX_VARIABLES`, ``h2_diag``,
        ``sigma_w2``, ``probe_idx``, ``probe_partner``, ``gamma``, ``gamma_stderr``,
        ``gamma_r2``, ``gamma_n`` (with ``fit_gamma``) and attributes ``awd_*``
        (settings, timings and ``awd_h1_rel_err``, the largest
        |diag(V^T H V) - lambda_i| / |lambda_1| over the analysis set, which is ~0 when V
        and eigvals belong to this problem).

    Any other block (``problem.linear_name`` None: a bias, tokens, attention, a conv):
    only ``h2``, ``h2_diag`` and ``c_pair`` are computed, the rest is left out with its
    reason (:func:`~awch_scale.analysis.awd.block.block_awd_analysis`).

    Raises:
        ValueError: bad shapes or arguments, or a class with too few samples for the
            batches.
    """
    if layer is None and problem.linear_name is None:
        return block_awd_analysis(problem, V, eigvals, batch_size=batch_size, n_draws=n_draws,
                                  seed=seed, max_chunk_elements=max_chunk_elements,
                                  diag_only=diag_only, n_fit=n_fit, pairing=pairing,
                                  n_anchors=n_anchors, fit_gamma=fit_gamma,
                                  progress=progress, world=world)
    tl = layer if layer is not None else TargetLayer(problem)
    V = torch.as_tensor(V)
    eigvals = np.asarray(eigvals, dtype=np.float64)
    if V.ndim != 2 or V.shape[0] != problem.D:
        raise ValueError(f"V has shape {tuple(V.shape)}; expected (D = {problem.D}, k)")
    k = int(V.shape[1])
    if eigvals.shape != (k,):
        raise ValueError(f"eigvals has shape {eigvals.shape}; expected ({k},)")
    for name, val in dict(batch_size=batch_size, n_draws=n_draws, n_probe=n_probe,
                          n_partner_batches=n_partner_batches).items():
        if int(val) < 1:
            raise ValueError(f"{name} = {val} must be >= 1")
    n_fit = k if n_fit is None else int(n_fit)
    if not 0 < n_fit <= k:
        raise ValueError(f"n_fit = {n_fit} must be in 1..k = {k}")
    n_modes = tl.d_out if n_modes is None else int(n_modes)
    if not 0 < n_modes <= tl.d_out:
        raise ValueError(f"n_modes = {n_modes} must be in 1..d_out = {tl.d_out}")
    unknown = sorted(set(diag_only) - set(MATRIX_VARIABLES))
    if unknown:
        raise ValueError(f"diag_only names {unknown} are not among {list(MATRIX_VARIABLES)}")
    if method not in METHODS:
        raise ValueError(f"method {method!r} must be one of {METHODS}")
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing {pairing!r} must be one of {PAIRINGS}")
    if cross_term not in CROSS_TERMS:
        raise ValueError(f"cross_term {cross_term!r} must be one of {CROSS_TERMS}")

    B, T = int(batch_size), int(n_draws)
    full = {n: n not in set(diag_only) for n in MATRIX_VARIABLES}
    keep_full = dict(full)
    for part in ("c_hh", "c_hg", "c_gg"):
        keep_full[part] = full[part] or full["c_awd_raw"]
    keep_full["h2"] = full["h2"] or full["c_li"]
    dev = problem.device
    acc = {n: MomentSum(k, full=keep_full[n], device=dev)
           for n in ("c_hh", "c_hg", "c_gg", "c_hh_sd", "c_hg_sd", "c_gg_sd", "c_pair", "h2",
                     "c_hh_sd_wd")}
    basis = RankOneBasis(V, tl.d_out, tl.d_in, dtype=problem.dtype, device=dev)
    rows = _chunk_rows(tl, basis, method, n_partner_batches, max_chunk_elements,
                       problem.chunk_size)
    timings: dict[str, float] = {}

    # Indices: matched draws, then the probe set (one generator, in this order).
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    labels = problem.classes.cpu().numpy()
    if pairing == "matched":
        nu, mu = matched_draws(labels, tl.A, B, T, rng)
        probe_idx, partners = probe_partners(labels, tl.A, B, int(n_probe),
                                             int(n_partner_batches), rng)
    else:
        nu, mu = reference_draws(labels, tl.A, B, T, int(n_anchors), rng)
        probe_idx, partners = reference_probe_partners(labels, tl.A, int(n_probe),
                                                       int(n_partner_batches),
                                                       int(n_anchors), rng)
    timings["awd_seconds_matching"] = time.perf_counter() - t0

    # The three passes (matched draws, h2 = V^T E_p[h_p^2] V, probe spectra), over this
    # process's share; one process is the World of size 1 (its reduce is a no-op).
    moments, h1_diag, num, den, kappa, u_proj = _awd_sums(
        world or SINGLE, problem, tl, basis, acc, rows, nu, mu, probe_idx, partners,
        method=method, h2_route=h2_route, q_source=q_source, cross_term=cross_term,
        n_modes=n_modes, store_probe_spectra=store_probe_spectra, progress=progress,
        timings=timings)
    sigma_w2 = num / den if den > 0 else math.nan

    # Results.
    scale_draw = 1.0 / (2.0 * B * B * T)
    out: dict[str, Tensor] = {
        "c_hh": acc["c_hh"].result(scale_draw, full=full["c_hh"]),
        "c_hg": acc["c_hg"].result(scale_draw, full=full["c_hg"]),
        "c_gg": acc["c_gg"].result(scale_draw, full=full["c_gg"]),
        "c_hh_sd": acc["c_hh_sd"].result(scale_draw),
        "c_hg_sd": acc["c_hg_sd"].result(scale_draw),
        "c_gg_sd": acc["c_gg_sd"].result(scale_draw),
        "c_pair": acc["c_pair"].result(1.0 / (2.0 * T)),
        "h2": acc["h2"].result(1.0 / problem.N, full=full["h2"]),
        "c_hh_sd_wd": acc["c_hh_sd_wd"].result(1.0 / (2.0 * B * len(probe_idx))),
    }
    out["c_awd_raw"] = sum(acc[n].result(scale_draw, full=full["c_awd_raw"])
                           for n in ("c_hh", "c_hg", "c_gg"))
    out["c_li"] = acc["h2"].result(sigma_w2 / (2.0 * B * problem.N), full=full["c_li"])
    h2_diag = acc["h2"].diag() / problem.N

    eig = np.arange(1, k + 1)
    data = {}
    for name in MATRIX_VARIABLES:
        m = out[name].cpu().numpy()
        data[name] = (("eig", "eig_"), m) if m.ndim == 2 else (("eig",), m)
    data.update(
        h2_diag=(("eig",), h2_diag.cpu().numpy()),
        sigma_w2=((), np.float64(sigma_w2)),
        pair_nu=(("draw", "slot"), nu),
        pair_mu=(("draw", "slot"), mu),
        probe_idx=(("probe",), probe_idx),
        probe_partner=(("probe", "partner"), partners),
    )
    coords = {"eig": eig, "eig_": eig}
    if store_probe_spectra:
        data["kappa"] = (("probe", "mode"), torch.cat(kappa).numpy())
        data["u_proj"] = (("probe", "mode", "eig"), torch.cat(u_proj).numpy())
        coords["mode"] = np.arange(1, n_modes + 1)
    if fit_gamma:
        diagonals = {name: (out[name] if out[name].ndim == 1 else torch.diagonal(out[name]))
                     .cpu().numpy() for name in AWD_GAMMA_ESTIMATORS}
        data.update(gamma_variables(diagonals, eigvals, n_fit))
        coords["estimator"] = list(AWD_GAMMA_ESTIMATORS)
    ds = xr.Dataset(data, coords=coords)

    lam1 = abs(eigvals[0]) if k and eigvals[0] != 0 else 1.0
    h1 = (h1_diag / problem.N).cpu().numpy()
    ds.attrs.update(
        awd_method=method, awd_target_mode=tl.mode, awd_batch_size=B, awd_n_draws=T,
        awd_n_probe=int(n_probe), awd_n_partner_batches=int(n_partner_batches),
        awd_seed=int(seed), awd_n_fit=n_fit, awd_pairing=pairing,
        awd_n_anchors=int(n_anchors) if pairing == "reference" else 0,
        awd_cross_term=cross_term, awd_diag_only=",".join(diag_only),
        awd_chunk_rows=int(rows["pairs"]),
        awd_h2_route=getattr(moments, "route", "autodiff"),
        awd_h1_rel_err=float(np.max(np.abs(h1 - eigvals)) / lam1),
        **timings,
    )
    return annotate(ds)


def _awd_sums(world, problem: BlockProblem, tl: TargetLayer, basis: RankOneBasis,
                  acc: dict[str, MomentSum], rows: dict[str, int], nu: np.ndarray,
                  mu: np.ndarray, probe_idx: np.ndarray, partners: np.ndarray, *,
                  method: str, h2_route: str, q_source, cross_term: str, n_modes: int,
                  store_probe_spectra: bool, progress: bool, timings: dict):
    """The three passes of :func:`awd_analysis` over this rank's share, then one
    all-reduce of every sum (``world`` in :func:`awd_analysis`; with one process, the
    share is everything and the reduce does nothing).

    Returns:
        (moments, h1_diag, num, den, kappa, u_proj): as the one-process passes leave them,
        over the whole analysis set (kappa and u_proj as one-element lists).
    """
    T, B = nu.shape
    k, dev = basis.k, problem.device
    size, rank = world.size, world.rank

    t0 = time.perf_counter()
    pair_fn = kron_pair_terms if method == "kron" else autodiff_pair_terms
    per_group = max(1, min(rows["pairs"] // B, math.ceil(T / size)))
    groups = [(g0, min(T, g0 + per_group)) for g0 in range(0, T, per_group)]
    mine = groups[rank::size]
    with tqdm(total=sum(g1 - g0 for g0, g1 in mine), desc="AWD matched draws",
              disable=not progress, leave=False) as bar:
        for g0, g1 in mine:
            terms = _pair_terms_chunked(pair_fn, tl, basis, nu[g0:g1].ravel(),
                                        mu[g0:g1].ravel(), rows["pairs"])
            _add_draws(acc, terms, g1 - g0, B, k, symmetrise=cross_term == "symmetrised")
            bar.update(g1 - g0)
    timings["awd_seconds_draws"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    moments = (KronMoments(tl, basis, route=h2_route, q_source=q_source) if method == "kron"
               else AutodiffMoments(tl, basis))
    own = world.shard(problem.slices())  # the Hessian operator's chunks (its Q_p cache)
    with tqdm(total=sum(len(range(problem.N)[c]) for c in own), desc="AWD E_p[h_p^2]",
              disable=not progress, leave=False) as bar:
        for chunk in own:
            stop = min(problem.N, chunk.stop)
            for s in range(chunk.start, stop, rows["h2"]):
                idx = np.arange(s, min(stop, s + rows["h2"]))
                moments.add(idx)
                bar.update(len(idx))
    moments.finish(acc["h2"])  # this rank's part (finish is linear in the sums)
    timings["awd_seconds_h2"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_probe = len(probe_idx)
    per_chunk = max(1, min(rows["probe"], math.ceil(n_probe / size)))
    chunks = [slice(s, s + per_chunk) for s in range(0, n_probe, per_chunk)][rank::size]
    stats = torch.zeros(2, dtype=torch.float64, device=dev)  # sum kappa^2 sigma2, sum kappa^2
    kappa = u_proj = None
    if store_probe_spectra:
        kappa = torch.zeros(n_probe, n_modes, dtype=torch.float64, device=dev)
        u_proj = torch.zeros(n_probe, n_modes, k, dtype=torch.float64, device=dev)
    with tqdm(total=sum(len(probe_idx[sl]) for sl in chunks), desc="AWD probe spectra",
              disable=not progress, leave=False) as bar:
        for sl in chunks:
            sp = probe_spectra(tl, basis, probe_idx[sl], partners[sl])
            a, b = add_probe_statistics(sp, acc["c_hh_sd_wd"])
            stats += torch.tensor([a, b], dtype=torch.float64, device=dev)
            if store_probe_spectra:
                kappa[sl] = sp.kappa[:, :n_modes].to(torch.float64)
                u_proj[sl] = sp.u_proj[:, :n_modes].to(torch.float64)
            bar.update(len(probe_idx[sl]))
    timings["awd_seconds_probes"] = time.perf_counter() - t0

    # One all-reduce of every partial sum (other ranks' probe rows are zero here).
    t0 = time.perf_counter()
    h1_diag = moments.h1_diag.to(torch.float64)
    parts = [acc[name].value for name in sorted(acc)] + [h1_diag, stats]
    if store_probe_spectra:
        parts += [kappa, u_proj]
    flat = world.all_reduce(torch.cat([t.reshape(-1) for t in parts]))
    pos = 0
    for t in parts:
        t.copy_(flat[pos:pos + t.numel()].view_as(t))
        pos += t.numel()
    if world.size > 1:
        timings["awd_seconds_reduce"] = time.perf_counter() - t0
    num, den = float(stats[0]), float(stats[1])
    # the spectra in the problem's dtype, as probe_spectra gives them
    return (moments, h1_diag, num, den,
            [kappa.to(problem.dtype).cpu()] if store_probe_spectra else [],
            [u_proj.to(problem.dtype).cpu()] if store_probe_spectra else [])


def _chunk_rows(tl: TargetLayer, basis: RankOneBasis, method: str, R: int,
                max_elements: int, chunk_size: int) -> dict[str, int]:
    """Samples per chunk for the three passes, from a bound on the values held."""
    d_out, d_in, k, D = tl.d_out, tl.d_in, basis.k, tl.d_out * tl.d_in
    q = d_out * d_out
    if method == "kron":
        per = {"pairs": 4 * basis.elements_per_sample() + 8 * (d_in + d_out + k),
               "h2": 3 * d_out * k + (q if d_out <= k else 0) + d_in}
    else:
        per = {"pairs": 6 * D + 8 * k, "h2": 2 * D * k}
    per["probe"] = 2 * q + 2 * d_out * k + R * (d_in + 2 * d_out)
    return {name: int(max(1, min(chunk_size, max_elements // max(n, 1))))
            for name, n in per.items()}


def _pair_terms_chunked(pair_fn, tl, basis, nu: np.ndarray, mu: np.ndarray,
                        rows: int) -> PairTerms:
    parts = [pair_fn(tl, basis, nu[s:s + rows], mu[s:s + rows])
             for s in range(0, len(nu), rows)]
    return PairTerms(*(torch.cat([getattr(p, f) for p in parts]).to(torch.float64)
                       for f in ("t1", "t2", "g_nu", "g_mu")))


def _add_draws(acc: dict[str, MomentSum], t: PairTerms, n_draws: int, B: int, k: int, *,
               symmetrise: bool = True) -> None:
    """Add G complete draws (pairs ordered draw-major) to the accumulators.

    ``symmetrise``: the cross terms add x y^T + y x^T (SPEC) or x y^T only (``once``).
    """
    acc["c_hh_sd"].add(t.t1)
    acc["c_gg_sd"].add(t.t2)
    acc["c_hg_sd"].add(t.t1, t.t2, symmetrise=symmetrise)
    s1 = t.t1.view(n_draws, B, k).sum(1)
    s2 = t.t2.view(n_draws, B, k).sum(1)
    acc["c_hh"].add(s1)
    acc["c_gg"].add(s2)
    acc["c_hg"].add(s1, s2, symmetrise=symmetrise)
    e = (t.g_mu.view(n_draws, B, k).sum(1) - t.g_nu.view(n_draws, B, k).sum(1)) / B
    acc["c_pair"].add(e)
