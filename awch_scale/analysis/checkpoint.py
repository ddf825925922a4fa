"""``analyze_checkpoint``: one trained model in, one labelled ``xarray.Dataset`` out.

The analysis is a fixed sequence of stages (:data:`STAGES`), each a function of an
:class:`Analysis` context that adds variables to it: the top-k Hessian eigenbasis
(SPEC 2), the projected covariances (SPEC 3), the activity-weight duality terms
(SPEC 4), then the optional stages the settings switch on. The power-law fits of every
estimator present (SPEC 6) close it. Variables, their dims and dtypes come from the
registry (:mod:`awch_scale.variables`); settings from :mod:`awch_scale.settings`.

Several processes (``world=``, a :class:`~awch_scale.world.World`): every rank
runs every stage on the same inputs; each sum over the analysis set is split by chunks
(``world.shard``) and all-reduced, so every rank receives the same numbers, takes the
same solver path and returns the same dataset. By stage:

- sharded: ``eigen`` (Hessian products), ``covariance`` (the per-sample projections P),
  ``awd`` (matched draws, E_p[h_p^2], probe spectra; see :func:`awd_analysis`),
  ``fisher`` (Fisher products), ``stats`` (the mean loss), ``spectra`` (products with
  H, M and C, and M's mean gradient);
  Unless ``chunk_size`` is set, the chunk size is lowered so that every rank gets the
  same number of chunks (:func:`balanced_chunk_size`).
- replicated (identical work on every rank, k x k or index bookkeeping only): the
  eigensolvers' own linear algebra, the covariances built from P, the AWD matching
  (seeded index draws and linear assignments), ``suppression``, the statistics of
  ``stats`` and ``gamma``; also the model's forward pass up to the target
  (``make_problem``) and the analysis set in memory on every rank.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn
from tqdm.auto import tqdm

from awch_scale.analysis.awd import awd_analysis
from awch_scale.analysis.covariance import (
    covariance,
    minibatch_covariance,
    second_moment,
    within_class_covariance,
)
from awch_scale.analysis.powerlaw import gamma_variables
from awch_scale.analysis.spectra import spectra_variables
from awch_scale.analysis.statistics import (
    alignment_statistics,
    diagonal,
    frob_norms,
    noise_geometry,
)
from awch_scale.analysis.suppression import suppression_dataset
from awch_scale.analysis.validation import (
    DataFacts,
    TargetFacts,
    check_analysis,
    check_arguments,
    check_inputs,
)
from awch_scale.linalg.eigen import Eigenbasis, top_eigenpairs
from awch_scale.model.operators import BlockOperator, HessianOperator, KroneckerHessianOperator
from awch_scale.model.operators.ggn import fisher_operator
from awch_scale.model.per_sample import projected_gradients
from awch_scale.model.problem import BlockProblem, make_problem
from awch_scale.settings import AnalysisSettings
from awch_scale.threads import scoped_threads
from awch_scale.variables import GAMMA_ESTIMATORS, VARIABLES, annotate, gamma_order
from awch_scale.world import World


@dataclass(frozen=True)
class MemoryPlan:
    """Chunk sizes and caches derived from ``analysis.memory_budget_mb``.

    Attributes:
        chunk_size: samples per streamed chunk (per-sample gradients: chunk * D values).
        q_cache_bytes: memory for the Kronecker operator's cached Q_i.
        kron_vectors: columns per Kronecker product ((chunk, d_out, m) temporaries).
        awd_chunk_elements: values one chunk of AWD per-sample quantities may hold.
    """

    chunk_size: int
    q_cache_bytes: int
    kron_vectors: int
    awd_chunk_elements: int


def memory_plan(problem: BlockProblem, budget_mb: float,
                chunk_size: int | None = None, k: int | None = None) -> MemoryPlan:
    """Chunk sizes and caches from a memory budget (bytes of streamed temporaries).

    A quarter of the budget bounds one chunk of per-sample quantities: for a generic
    block the per-sample gradients (about 4 * chunk * D values with vmap's temporaries);
    for a bias-free Linear target with ``k`` given (the rank-one route, no per-sample
    D-vector) the lifted basis and its products, about 3 * chunk * d_out * max(k, 64)
    values. Half of the budget goes to the Kronecker operator's Q_i cache, and a quarter
    to the AWD chunks and the Kronecker products' (chunk, d_out, m) blocks.
    """
    budget = int(budget_mb * 2**20)
    item = torch.empty((), dtype=problem.dtype).element_size()
    if chunk_size is None:
        per_sample = 4 * problem.D * item
        if problem.linear_name is not None and k is not None:
            per_sample = 3 * int(problem.block_shapes[0][0]) * max(k, 64) * item
        chunk_size = int(min(problem.N, max(8, budget // 4 // per_sample)))
    d_out = problem.block_shapes[0][0] if problem.linear_name else 1
    kron_vectors = int(min(256, max(1, budget // 4 // (3 * chunk_size * d_out * item))))
    return MemoryPlan(chunk_size=chunk_size, q_cache_bytes=budget // 2,
                      kron_vectors=kron_vectors, awd_chunk_elements=max(1, budget // 4 // 8))


def balanced_chunk_size(n: int, chunk_size: int, size: int) -> int:
    """The chunk size (at most ``chunk_size``) that gives each of ``size`` ranks the
    same number of chunks: the ranks share the streamed passes chunk by chunk, so with
    the memory budget's chunk size alone (e.g. 3 chunks for 2 ranks) one rank could do
    twice the other's work. Used when ``analysis.chunk_size`` is not set."""
    per_rank = max(1, math.ceil(n / (size * chunk_size)))
    return max(1, math.ceil(n / (size * per_rank)))


def hessian_operator(problem: BlockProblem, kind: str = "auto",
                     memory: MemoryPlan | None = None, world: World | None = None
                     ) -> BlockOperator:
    """The Hessian operator of ``problem``: ``hvp``, ``kronecker`` or ``auto`` (``world``:
    products sum this rank's chunks and all-reduce)."""
    if kind == "hvp" or (kind == "auto" and problem.linear_name is None):
        return HessianOperator(problem, world=world)
    if kind in ("kronecker", "auto"):
        memory = memory or memory_plan(problem, 2048, problem.chunk_size)
        return KroneckerHessianOperator(problem, max_vectors=memory.kron_vectors,
                                        cache_bytes=memory.q_cache_bytes, world=world)
    raise ValueError(f"unknown operator {kind!r}; allowed: auto, hvp, kronecker")


def target_facts(problem: BlockProblem, target) -> TargetFacts:
    """What :func:`awch_scale.analysis.validation.check_analysis` needs to know of a target."""
    name = target if isinstance(target, str) else ",".join(target)
    linear = problem.linear_name is not None
    d_out = int(problem.block_shapes[0][0]) if linear else None
    return TargetFacts(name=name, D=problem.D, linear=linear, d_out=d_out)


# ----------------------------------------------------------------------------- the context


@dataclass
class Analysis:
    """Everything one analysis has computed so far; stages read and add to it.

    Attributes:
        problem: the block problem.
        settings: the analysis settings.
        batch_size: B.
        seeds: the seed of every random stream (:meth:`SeedSettings.resolve`).
        memory: the memory plan.
        progress: show progress bars.
        hessian: the Hessian operator.
        basis: the top-k eigenbasis (after the ``eigen`` stage).
        P: per-sample gradients projected onto V, (N, k) float64.
        matrices: k x k float64 matrices by variable name (full, even if stored diagonal).
        data: other variables, name -> (dims, array).
        coords: coordinates the variables need.
        provenance: how the numbers were computed (stored as JSON).
        extras: stage outputs later stages reuse (e.g. the AWD probe spectra).
        world: the processes sharing this analysis (None: one process).
    """

    problem: BlockProblem
    settings: AnalysisSettings
    batch_size: int
    seeds: dict[str, int]
    memory: MemoryPlan
    progress: bool = False
    hessian: BlockOperator | None = None
    basis: Eigenbasis | None = None
    P: Tensor | None = None
    matrices: dict[str, np.ndarray] = field(default_factory=dict)
    data: dict[str, tuple] = field(default_factory=dict)
    coords: dict[str, object] = field(default_factory=dict)
    provenance: dict[str, object] = field(default_factory=dict)
    extras: dict[str, object] = field(default_factory=dict)
    world: World | None = None

    @property
    def k(self) -> int:
        """Number of eigenpairs k."""
        return self.settings.k

    @property
    def eigvals(self) -> np.ndarray:
        """lambda_1 >= ... >= lambda_k of the eigen stage."""
        return self.basis.values

    def bar(self, **kw) -> tqdm:
        """A progress bar (tqdm), shown only with ``progress``."""
        return tqdm(disable=not self.progress, leave=False, **kw)

    def add(self, name: str, dims: tuple[str, ...], values) -> None:
        """Add variable ``name`` (registered) with ``dims``."""
        if name not in VARIABLES:
            raise KeyError(f"variable {name!r} is not in the registry (awch_scale/variables.py)")
        self.data[name] = (dims, values)

    def add_matrix(self, name: str, m: Tensor | np.ndarray, *, symmetric: bool = True) -> None:
        """A k x k float64 matrix; one symmetric in exact arithmetic is symmetrised here
        (a BLAS may round its two triangles differently)."""
        m = m.detach().cpu().numpy() if isinstance(m, Tensor) else np.asarray(m)
        self.matrices[name] = 0.5 * (m + m.T) if m.ndim == 2 and symmetric else m

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Store the wall time of the block as ``seconds_<stage>``."""
        t0 = time.perf_counter()
        yield
        self.add(f"seconds_{stage}", (), time.perf_counter() - t0)


# ----------------------------------------------------------------------------- stages


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
        own = p.n_chunks if a.world is None else len(a.world.shard(p.slices()))
        with a.bar(total=own, desc="per-sample gradients") as bar:
            a.P = projected_gradients(p, a.basis.vectors, progress=bar.update,
                                      backend=a.settings.per_sample,
                                      layer=getattr(a.hessian, "layer", None), world=a.world)
        a.add_matrix("covar", covariance(a.P, B))
        a.add_matrix("second_moment", second_moment(a.P))
        a.add_matrix("covar_mb", minibatch_covariance(
            a.P, B, a.seeds["covar_mb"], last_batch=a.settings.covar_mb.last_batch))
        a.add_matrix("covar_within", within_class_covariance(a.P, p.labels, B))


def awd_stage(a: Analysis) -> None:
    """SPEC 4: activity-weight duality terms, h2, probe statistics."""
    s, p = a.settings, a.problem
    aw = s.awd
    supp = s.enabled("suppression")
    with a.timed("awd"):
        ds = awd_analysis(p, a.basis.vectors, a.basis.values, batch_size=a.batch_size,
                          seed=a.seeds["awd"], n_fit=s.fit_points, progress=a.progress,
                          max_chunk_elements=a.memory.awd_chunk_elements,
                          n_draws=aw.draws, n_probe=aw.probe_size(p.N),
                          n_partner_batches=aw.partner_batches,
                          store_probe_spectra=aw.probe_spectra or supp,
                          n_modes=None if supp else aw.n_modes,
                          pairing=aw.pairing, n_anchors=aw.anchors, cross_term=aw.cross_term,
                          layer=getattr(a.hessian, "layer", None),
                          q_source=a.hessian if hasattr(a.hessian, "q_rows") else None,
                          world=a.world)
    if supp:
        a.extras["probe_spectra"] = ds[["kappa", "u_proj"]]
        if not aw.probe_spectra:
            ds = ds.drop_vars(["kappa", "u_proj", "mode"])
        elif aw.n_modes is not None:
            ds = ds.isel(mode=slice(0, aw.n_modes))
    for name in ds.data_vars:
        if name.startswith("gamma"):
            continue
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
    """SPEC 5: ``fisher`` = V^T F V (one product with V) and ``fisher_eigval``."""
    s = a.settings
    with a.timed("fisher"):
        kind = "hvp" if s.operator == "hvp" else "auto"
        kw = ({} if kind == "hvp" or a.problem.linear_name is None else
              dict(max_vectors=a.memory.kron_vectors, cache_bytes=a.memory.q_cache_bytes,
                   layer=getattr(a.hessian, "layer", None)))
        F = fisher_operator(a.problem, kind, world=a.world, **kw)
        V = a.basis.vectors
        a.add_matrix("fisher", V.T.to(torch.float64) @ F.matmat(V))
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
    density, trace and comm_full (:func:`awch_scale.analysis.spectra.spectra_variables`)."""
    sp, e = a.settings.spectra, a.settings.eigen
    with a.bar(desc="spectra", unit="stage"):
        data, coords = spectra_variables(
            a.problem, a.hessian, a.basis.vectors, a.basis.values, r=sp.rank(a.k),
            batch_size=a.batch_size, probes=sp.probes, steps=sp.steps, grid_size=sp.grid,
            width=sp.width, seed=a.seeds["spectra"], tol=e.tol,
            reorth_bytes=a.memory.q_cache_bytes // 2, world=a.world)
    for name, (dims, value) in data.items():
        a.add(name, (dims,) if isinstance(dims, str) else tuple(dims), value)
    a.add("density_grid", ("grid",), np.asarray(coords.pop("grid"), dtype=np.float64))
    a.coords.update(coords)
    a.coords["grid"] = np.arange(1, sp.grid + 1)


def suppression_stage(a: Analysis) -> None:
    """SPEC 7 from the AWD stage's probe spectra (all modes; not recomputed)."""
    supp = suppression_dataset(a.extras.pop("probe_spectra"), theta=a.settings.suppression.theta,
                               n_fit=a.settings.fit_points)
    n_modes = a.settings.awd.n_modes
    if n_modes is not None:  # the modes kept in the store (kappa, u_proj share ``mode``)
        supp = supp.isel(mode=slice(0, n_modes))
    for name in supp.data_vars:
        a.add(str(name), supp[name].dims, supp[name].values)
    a.coords.update({c: supp.coords[c].values for c in supp.coords if c not in a.coords})


def mean_loss(problem: BlockProblem, world: World | None = None) -> float:
    """L = (1/N) sum_i l_i at the checkpoint, over the analysis set (``world``: this
    rank's chunks, all-reduced)."""
    if world is None:
        with torch.no_grad():
            total = sum(float(problem.per_sample_loss(problem.w, x, y).to(torch.float64).sum())
                        for x, y in problem.chunks())
        return total / problem.N
    total = torch.zeros((), dtype=torch.float64, device=problem.device)
    with torch.no_grad():
        for chunk in world.shard(problem.slices()):
            x, y = problem.features[chunk], problem.labels[chunk]
            total += problem.per_sample_loss(problem.w, x, y).to(torch.float64).sum()
    return float(world.all_reduce(total)) / problem.N


_ONCE_TERMS = ("c_hg", "c_hg_sd", "c_awd_raw")
"""Not symmetric under ``awd.cross_term: once`` (s_I s_II^T alone)."""


def gamma_stage(a: Analysis) -> None:
    """SPEC 6 power law: gamma of every estimator present, in registry order."""
    names = gamma_order(n for n in a.matrices if n in GAMMA_ESTIMATORS)
    diagonals = {n: diagonal(a.matrices[n]) for n in names}
    for name, var in gamma_variables(diagonals, a.basis.values, a.settings.fit_points).items():
        a.add(name, *var)
    a.coords["estimator"] = names


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
"""(name, stage) in the order they run; a stage whose name is an optional settings
section runs only when that section is enabled."""


# ----------------------------------------------------------------------------- entry point


def analyze_checkpoint(
    model: nn.Module,
    target: str | Sequence[str],
    inputs: Tensor,
    labels: Tensor,
    *,
    loss: str,
    batch_size: int,
    settings: AnalysisSettings | Mapping[str, object] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool = False,
    world: World | None = None,
    **overrides,
) -> xr.Dataset:
    """Analyse one trained model on the analysis set (inputs, labels).

    Computes, for the target block w in R^D, the top-k Hessian eigenbasis V (SPEC 2),
    the per-sample gradients projected onto V in one streamed pass and from them
    ``covar``, ``second_moment``, ``covar_mb`` (SPEC 3, paper Eq. 2), the
    activity-weight duality terms (SPEC 4, Eq. 8-15), the further stages the settings
    enable, and the power-law fits (SPEC 6). No D x D matrix is formed: memory is
    O(k D + chunk D).

    Args:
        model: the trained network (left unchanged; a copy is put in eval mode).
        target: module name of a bias-free ``nn.Linear`` (or any module), or a list of
            parameter names forming the block (``["fc2.weight"]`` is the Linear layer).
        inputs: analysis-set inputs, shape (N, ...), tensor or NumPy array.
        labels: integer labels in 0..K-1, shape (N,).
        loss: ``ce``, ``mse`` or ``lmse`` (SPEC 1).
        batch_size: the training batch size B of Eq. 2.
        settings: analysis settings (default :class:`AnalysisSettings`, the same defaults
            as a recipe's ``analysis`` section), or a dict of its fields (validated like
            ``**overrides`` of the defaults).
        seed: the run seed, a non-negative integer; every random stream's seed derives
            from it unless ``settings.seeds`` names it.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``auto`` or None (auto), or a torch.device.
        dtype: dtype of the products, torch.float32 or torch.float64 (or ``"float32"``,
            ``"float64"``; default None: the model's); accumulation is float64.
        progress: show progress bars.
        world: the processes sharing this analysis (module docstring): every rank calls
            with the same arguments and gets the same dataset; only rank 0 should write
            it. None (or a World of size 1) is the one-process path.
        **overrides: fields of :class:`AnalysisSettings` to replace, e.g. ``k=100``,
            ``awd=None``, ``eigen={"tol": 1e-8}``.

    Returns:
        Dataset with dims ``eig``/``eig_`` (1..k), ``estimator`` and those of the
        enabled stages; attributes ``D``, ``N``, ``k``, ``n_fit``, ``loss``,
        ``batch_size``, ``target``, ``device``, ``dtype``, ``settings`` (JSON).

    Raises:
        SettingsError: settings that cannot work with these inputs, or a bad argument
            (``loss``, ``seed``, ``device``, ``dtype``, ``settings``, an unknown override:
            :class:`~awch_scale.errors.UnknownSettingError`, also a TypeError); the
            message names the key or argument.
        NonFiniteError: NaN/Inf in the inputs or weights, or in an operator product.
        TargetError: the target is not a name or a non-empty list of names, does not
            exist or has a bias.
        ConvergenceError: the eigensolver did not converge.
    """
    settings, device, dtype = check_arguments(loss=loss, seed=seed, device=device, dtype=dtype,
                                              settings=settings, overrides=overrides)
    inputs, labels = check_inputs(model, inputs, labels)
    problem = make_problem(model, target, inputs, labels, loss,
                           chunk_size=settings.chunk_size or 1024, device=device, dtype=dtype)
    check_analysis(settings, [target_facts(problem, target)], DataFacts.from_labels(labels),
                   batch_size=batch_size, batch_key="batch_size", prefix="")
    if world is not None and world.size == 1:
        world = None
    linear_route = problem.linear_name is not None and settings.per_sample == "auto"
    k_route = settings.k if linear_route else None
    memory = memory_plan(problem, settings.memory_budget_mb, settings.chunk_size, k=k_route)
    if world is not None and settings.chunk_size is None:
        balanced = balanced_chunk_size(problem.N, memory.chunk_size, world.size)
        memory = memory_plan(problem, settings.memory_budget_mb, balanced, k=k_route)
    problem.chunk_size = memory.chunk_size
    a = Analysis(problem, settings, batch_size, settings.seeds.resolve(seed), memory,
                 progress=progress, world=world)
    a.provenance["n_procs"] = 1 if world is None else world.size
    with scoped_threads(settings.threads):
        for name, stage in STAGES:
            if name in ("awd", "fisher", "stats", "spectra", "suppression") and \
                    not settings.enabled(name):
                continue
            stage(a)
        a.add("n_threads", (), torch.get_num_threads())
    return _dataset(a, target, loss)


def _dataset(a: Analysis, target, loss: str) -> xr.Dataset:
    s, p = a.settings, a.problem
    data = dict(a.data)
    for name, m in a.matrices.items():
        data[name] = ("eig", diagonal(m)) if name in s.diag_only or m.ndim == 1 else (
            ("eig", "eig_"), m)
    a.provenance.update(chunk_size=p.chunk_size, memory=asdict(a.memory), seeds=a.seeds)
    data["chunk_size"] = ((), p.chunk_size)
    data["provenance"] = ((), json.dumps(a.provenance, sort_keys=True, default=str))
    eig = np.arange(1, s.k + 1)
    ds = xr.Dataset(data, coords={"eig": eig, "eig_": eig, **a.coords})
    ds.attrs.update(
        D=p.D, N=p.N, k=s.k, n_fit=s.fit_points, loss=loss, batch_size=a.batch_size,
        target=target if isinstance(target, str) else ",".join(target),
        device=str(p.device), dtype=str(p.dtype).removeprefix("torch."),
        operator=a.provenance.get("operator", ""),
        settings=s.model_dump_json(),
    )
    return annotate(ds)
