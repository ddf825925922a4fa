"""The stages of one analysis, in the order they run (:data:`STAGES`).

Each stage is a function of the :class:`~awch_scale.analysis.context.Analysis` context
that adds variables to it: the top-k Hessian eigenbasis (SPEC 2), the projected
covariances (SPEC 3), the activity-weight duality terms (SPEC 4), then the optional
stages the settings switch on (:data:`OPTIONAL_STAGES`); the power-law fits of every
estimator present (SPEC 6) close it. How each stage shares its work among several
processes: :mod:`awch_scale.analysis.checkpoint`.
"""

from __future__ import annotations

import typing
from collections.abc import Callable

import numpy as np
import torch
from pydantic import BaseModel

from awch_scale.analysis.awd import awd_analysis
from awch_scale.analysis.context import Analysis, hessian_operator
from awch_scale.analysis.covariance import (
    covariance,
    minibatch_covariance,
    second_moment,
    within_class_covariance,
)
from awch_scale.analysis.powerlaw import Accuracy, fit_variables, gamma_fits
from awch_scale.analysis.spectra import spectra_variables
from awch_scale.analysis.statistics import (
    alignment_statistics,
    diagonal,
    frob_norms,
    noise_geometry,
)
from awch_scale.analysis.suppression import suppression_dataset
from awch_scale.linalg.eigen import projected, top_eigenpairs
from awch_scale.model.operators.ggn import fisher_operator
from awch_scale.model.per_sample import projected_gradients
from awch_scale.model.problem import BlockProblem
from awch_scale.settings import AnalysisSettings
from awch_scale.variables import GAMMA_ESTIMATORS, gamma_order
from awch_scale.world import SINGLE, World

_ONCE_TERMS = ("c_hg", "c_hg_sd", "c_awd_raw")
"""Not symmetric under ``awd.cross_term: once`` (s_I s_II^T alone)."""


def eigen_stage(a: Analysis) -> None:
    """SPEC 2: top-k eigenpairs of H (``hess_eigval``, ``hess_residual``, ``hess_eigvec``)."""
    s = a.settings
    a.hessian = hessian_operator(a.problem, s.operator, a.memory, a.world)
    passes0 = a.hessian.n_passes
    with a.timed("eigen"), a.bar(desc="Hessian eigenpairs", unit="HVP") as bar:
        a.hessian.on_products = bar.update
        try:
            a.basis = top_eigenpairs(a.hessian, s.k, seed=a.seeds["eigen"],
                                     **s.eigen.model_dump())
        finally:
            a.hessian.on_products = None
    a.add("hess_eigval", ("eig",), a.basis.values)
    a.add("hess_residual", ("eig",), a.basis.residuals)
    a.add("n_hvp", (), a.basis.n_products)
    a.add("eigen_passes", (), a.hessian.n_passes - passes0)
    if s.store_eigvec:
        a.add("hess_eigvec", ("param", "eig"), a.basis.vectors.cpu().numpy())
    a.provenance.update(operator=type(a.hessian).__name__,
                        eigen_method=a.basis.method)
    a.provenance["eigen_choice"] = a.basis.choice  # the solver rule's inputs and choice


def covariance_stage(a: Analysis) -> None:
    """SPEC 3: ``covar``, ``second_moment``, ``covar_mb`` from one per-sample pass."""
    p, B = a.problem, a.batch_size
    with a.timed("covariance"):
        own = len(a.world.shard(p.slices()))
        with a.bar(total=own, desc="per-sample gradients") as bar:
            a.P = projected_gradients(p, a.basis.vectors, progress=bar.update,
                                      backend=a.settings.per_sample,
                                      layer=getattr(a.hessian, "layer", None), world=a.world)
        a.add_matrix("covar", covariance(a.P, B))
        a.add_matrix("second_moment", second_moment(a.P))
        a.add_matrix("covar_mb", minibatch_covariance(
            a.P, B, a.seeds["covar_mb"], last_batch=a.settings.covar_mb.last_batch))
        a.add_matrix("covar_within", within_class_covariance(a.P, p.classes, B))


def awd_stage(a: Analysis) -> None:
    """SPEC 4: activity-weight duality terms, h2, probe statistics (their power laws are
    fitted once, by :func:`gamma_stage`)."""
    s, p = a.settings, a.problem
    aw = s.awd
    supp = s.enabled("suppression")
    with a.timed("awd"):
        ds = awd_analysis(p, a.basis.vectors, a.basis.values, batch_size=a.batch_size,
                          seed=a.seeds["awd"], n_fit=s.fit_points, fit_gamma=False,
                          progress=a.progress,
                          max_chunk_elements=a.memory.awd_chunk_elements,
                          n_draws=aw.draws, n_probe=aw.probe_size(p.N),
                          n_partner_batches=aw.partner_batches,
                          store_probe_spectra=aw.probe_spectra or supp,
                          n_modes=None if supp else aw.n_modes,
                          pairing=aw.pairing, n_anchors=aw.anchors, cross_term=aw.cross_term,
                          layer=getattr(a.hessian, "layer", None),
                          q_source=a.hessian if hasattr(a.hessian, "q_rows") else None,
                          world=a.world)
    supp = supp and "kappa" in ds  # no per-sample spectra for this block: provenance says why
    if supp:
        a.extras["probe_spectra"] = ds[["kappa", "u_proj"]]
        if not aw.probe_spectra:
            ds = ds.drop_vars(["kappa", "u_proj", "mode"])
        elif aw.n_modes is not None:
            ds = ds.isel(mode=slice(0, aw.n_modes))
    for name in ds.data_vars:
        var = ds[name]
        if var.dims == ("eig", "eig_"):
            a.add_matrix(name, var.values, symmetric=not (aw.cross_term == "once"
                                                          and name in _ONCE_TERMS))
        else:
            a.add(name, var.dims, var.values)
    if "mode" in ds.coords:
        a.coords["mode"] = ds.coords["mode"].values
    a.add("awd_h1_rel_err", (), ds.attrs["awd_h1_rel_err"])
    a.provenance.update({k: v for k, v in ds.attrs.items()
                         if k.startswith("awd_") and not k.startswith("awd_seconds")
                         and k != "awd_h1_rel_err"})
    a.provenance["awd_seconds"] = {k.removeprefix("awd_seconds_"): v
                                   for k, v in ds.attrs.items() if k.startswith("awd_seconds")}


def fisher_stage(a: Analysis) -> None:
    """SPEC 5: ``fisher`` = V^T F V (products with column groups of V, the memory plan's
    ``image_columns``) and ``fisher_eigval``."""
    s = a.settings
    with a.timed("fisher"):
        kind = "hvp" if s.operator == "hvp" else "auto"
        kw = ({} if kind == "hvp" or a.problem.linear_name is None else
              dict(max_vectors=a.memory.kron_vectors, cache_bytes=a.memory.q_cache_bytes,
                   layer=getattr(a.hessian, "layer", None)))
        F = fisher_operator(a.problem, kind, world=a.world, **kw)
        V = a.basis.vectors
        a.add_matrix("fisher", projected(F, V, min(a.k, a.memory.image_columns)))
        if s.fisher.eigval:
            with a.bar(desc="Fisher eigenpairs", unit="product") as bar:
                F.on_products = bar.update
                fb = top_eigenpairs(F, s.k, seed=a.seeds["eigen"], guess=a.basis.vectors,
                                    **s.eigen.model_dump())
            a.add("fisher_eigval", ("eig",), fb.values)
        a.provenance["fisher_operator"] = type(F).__name__
        a.extras["fisher_operator"] = F


def stats_stage(a: Analysis) -> None:
    """SPEC 6: alignment, commutation, frob and noise geometry of the chosen covariances."""
    st, k = a.settings.stats, a.k
    with a.timed("statistics"):
        per = []
        for name in st.covariances:
            per.append(alignment_statistics(a.matrices[name], a.basis.values,
                                            corr_top=min(st.corr_top, k), n_rand=st.n_rand,
                                            n_fit=a.settings.fit_points, seed=a.seeds["stats"]))
        m = min(st.corr_top, k)
        a.coords.update(top=np.arange(1, m + 1), top_=np.arange(1, m + 1))
        for var in per[0]:
            dims, _ = per[0][var]
            if len(per) == 1:
                a.add(var, dims, per[0][var][1])
            else:
                a.add(var, ("covariance", *dims), np.stack([p[var][1] for p in per]))
        if len(per) > 1:
            a.coords["covariance"] = list(st.covariances)
        frob, terms = frob_norms(a.matrices)
        a.add("frob", *frob)
        a.coords["term"] = terms
        if "fisher" in a.matrices:
            loss = mean_loss(a.problem, a.world)
            for var, (dims, value) in noise_geometry(a.matrices["covar"], a.matrices["fisher"],
                                                     loss, a.batch_size).items():
                a.add(var, dims, value)


def spectra_stage(a: Analysis) -> None:
    """SPEC 6 beyond the top k: spectra of M, C, H_p = M - H, principal cosines, SLQ
    densities of H, M and H_p, trace and comm_full
    (:func:`awch_scale.analysis.spectra.spectra_variables`); each sub-stage's seconds, the
    routes and the reason of any NaN go to provenance."""
    sp, e = a.settings.spectra, a.settings.eigen
    with a.bar(desc="spectra", unit="stage"):
        data, coords = spectra_variables(
            a.problem, a.hessian, a.basis.vectors, a.basis.values, r=sp.rank(a.k),
            batch_size=a.batch_size, probes=sp.probes, density_probes=sp.density_probes,
            steps=sp.steps, grid_size=sp.grid, width=sp.width, seed=a.seeds["spectra"],
            tol=sp.tol or e.tol, method=sp.method, parts=sp.parts(),
            dense_max=sp.dense_max, maxiter=sp.maxiter, projections=a.P,
            reorth_bytes=a.memory.q_cache_bytes // 2, world=a.world,
            probe_columns=max(1, a.memory.image_columns // 4),
            provenance=a.provenance)
    for name, (dims, value) in data.items():
        a.add(name, (dims,) if isinstance(dims, str) else tuple(dims), value)
    if "grid" in coords:
        a.add("density_grid", ("grid",), np.asarray(coords.pop("grid"), dtype=np.float64))
        a.coords["grid"] = np.arange(1, sp.grid + 1)
    a.coords.update(coords)


def suppression_stage(a: Analysis) -> None:
    """SPEC 7 from the AWD stage's probe spectra (all modes; not recomputed); nothing
    when the block has none (``provenance['awd_left_out']``)."""
    if "probe_spectra" not in a.extras:
        return
    supp = suppression_dataset(a.extras.pop("probe_spectra"), theta=a.settings.suppression.theta,
                               n_fit=a.settings.fit_points)
    n_modes = a.settings.awd.n_modes
    if n_modes is not None:  # the modes kept in the store (kappa, u_proj share ``mode``)
        supp = supp.isel(mode=slice(0, n_modes))
    for name in supp.data_vars:
        a.add(str(name), supp[name].dims, supp[name].values)
    a.coords.update({c: supp.coords[c].values for c in supp.coords if c not in a.coords})


def mean_loss(problem: BlockProblem, world: World = SINGLE) -> float:
    """L = (1/N) sum_i l_i at the checkpoint, over the analysis set (``world``: this
    rank's chunks, all-reduced)."""
    total = torch.zeros((), dtype=torch.float64, device=problem.device)
    with torch.no_grad():
        for chunk in world.shard(problem.slices()):
            x, y = problem.features[chunk], problem.labels[chunk]
            total += problem.per_sample_loss(problem.w, x, y).to(torch.float64).sum()
    return float(world.all_reduce(total)) / problem.N


def gamma_stage(a: Analysis) -> None:
    """SPEC 6 power law: gamma of every estimator present, in registry order, over its
    resolved points only (:func:`awch_scale.analysis.powerlaw.fit_resolved`: eigenvalues
    above max(hess_residual_i, eigen.tol, eps) |lambda_1| and the dtype's underflow floor,
    X_ii above theirs). ``gamma_n`` counts the points used; ``provenance["gamma_fit"]``
    gives each estimator's ``n`` and the reason for any point left out or a NaN gamma."""
    names = gamma_order(n for n in a.matrices if n in GAMMA_ESTIMATORS)
    diagonals = {n: diagonal(a.matrices[n]) for n in names}
    accuracy = Accuracy.of(a.basis.residuals, a.settings.eigen.tol, a.problem.dtype)
    fits = gamma_fits(diagonals, a.basis.values, a.settings.fit_points, accuracy)
    for name, var in fit_variables([f.fit for f in fits.values()]).items():
        a.add(name, *var)
    a.coords["estimator"] = names
    a.provenance["gamma_fit"] = {n: f.provenance() for n, f in fits.items()}


Stage = Callable[[Analysis], None]
STAGES: list[tuple[str, Stage]] = [
    ("eigen", eigen_stage),
    ("covariance", covariance_stage),
    ("awd", awd_stage),
    ("suppression", suppression_stage),
    ("fisher", fisher_stage),
    ("stats", stats_stage),
    ("spectra", spectra_stage),
    ("gamma", gamma_stage),
]
"""(name, stage) in the order they run; a stage whose name is in :data:`OPTIONAL_STAGES`
runs only when that settings section is enabled (:func:`runs`)."""


def _switchable(annotation) -> bool:
    """A settings section that may be null and has an ``enabled`` switch."""
    args = typing.get_args(annotation)
    return type(None) in args and any(
        isinstance(t, type) and issubclass(t, BaseModel) and "enabled" in t.model_fields
        for t in args)


OPTIONAL_STAGES: tuple[str, ...] = tuple(
    name for name, f in AnalysisSettings.model_fields.items() if _switchable(f.annotation))
"""The sections of :class:`AnalysisSettings` that switch their stage off (null or
``enabled: false``), read from its fields: ``awd``, ``fisher``, ``stats``, ``spectra``,
``suppression``."""


def runs(name: str, settings: AnalysisSettings) -> bool:
    """Whether stage ``name`` runs under ``settings``: always, unless it is optional
    (:data:`OPTIONAL_STAGES`) and its section is off (:meth:`AnalysisSettings.enabled`)."""
    return name not in OPTIONAL_STAGES or settings.enabled(name)
