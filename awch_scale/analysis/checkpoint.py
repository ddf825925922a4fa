"""``analyze_checkpoint``: one trained model in, one labelled ``xarray.Dataset`` out.

The analysis is a fixed sequence of stages (:data:`~awch_scale.analysis.stages.STAGES`),
each a function of an :class:`~awch_scale.analysis.context.Analysis` context that adds
variables to it: the top-k Hessian eigenbasis (SPEC 2), the projected covariances
(SPEC 3), the activity-weight duality terms (SPEC 4), then the optional stages the
settings switch on. The power-law fits of every estimator present (SPEC 6) close it.
Variables, their dims and dtypes come from the registry (:mod:`awch_scale.variables`);
settings from :mod:`awch_scale.settings`. Modules: :mod:`.memory` (chunk sizes and
caches), :mod:`.context` (the context, the Hessian operator), :mod:`.stages`,
:mod:`.dataset` (the returned dataset); this one holds the entry point.

Several processes (``world=``, a :class:`~awch_scale.world.World`): every rank
runs every stage on the same inputs; each sum over the analysis set is split by chunks
(``world.shard``) and all-reduced, so every rank receives the same numbers, takes the
same solver path and returns the same dataset. By stage:

- sharded: ``eigen`` (Hessian products), ``covariance`` (the per-sample projections P),
  ``awd`` (matched draws, E_p[h_p^2], probe spectra; see
  :func:`~awch_scale.analysis.awd.awd_analysis`), ``fisher`` (Fisher products),
  ``stats`` (the mean loss), ``spectra`` (products with H, M and C, and M's mean
  gradient). Unless ``chunk_size`` is set, the chunk size is lowered so that every
  rank gets the same number of chunks
  (:func:`~awch_scale.analysis.memory.balanced_chunk_size`).
- replicated (identical work on every rank, k x k or index bookkeeping only): the
  eigensolvers' own linear algebra, the covariances built from P, the AWD matching
  (seeded index draws and linear assignments), ``suppression``, the statistics of
  ``stats`` and ``gamma``; also the model's forward pass up to the target
  (``make_problem``) and the analysis set in memory on every rank.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import torch
import xarray as xr
from torch import Tensor, nn

from awch_scale.analysis import stages
from awch_scale.analysis.context import Analysis, target_facts
from awch_scale.analysis.dataset import analysis_dataset
from awch_scale.analysis.memory import balanced_chunk_size, budget_mb, memory_plan
from awch_scale.analysis.validation import (
    DataFacts,
    check_analysis,
    check_arguments,
    check_inputs,
)
from awch_scale.model.problem import make_problem
from awch_scale.settings import AnalysisSettings
from awch_scale.threads import library_threads, scoped_threads
from awch_scale.world import SINGLE, World


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
    progress: bool | None = None,
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
        target: a module name (all its parameters: weight, then bias; a bias-free
            ``nn.Linear`` takes the Kronecker fast path), or a list of
            parameter names forming the block (``["fc2.weight"]`` is the Linear layer).
        inputs: analysis-set inputs, shape (N, ...), tensor or NumPy array.
        labels: integer labels in 0..K-1, shape (N,); or, for a model returning logits
            (N, T, K), one per token, shape (N, T), < 0 where a token is not predicted
            (the sample's loss is the mean over its predicted tokens; the set is then
            one class, docs/transformers.md).
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
        progress: show progress bars (tqdm, on stderr); None (default): when stderr is
            a terminal, as in an interactive session.
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
            exist, or is not used by the model's forward.
        ConvergenceError: the eigensolver did not converge.
    """
    settings, device, dtype = check_arguments(loss=loss, seed=seed, device=device, dtype=dtype,
                                              settings=settings, overrides=overrides)
    inputs, labels = check_inputs(model, inputs, labels)
    problem = make_problem(model, target, inputs, labels, loss,
                           chunk_size=settings.chunk_size or 1024, device=device, dtype=dtype)
    check_analysis(settings, [target_facts(problem, target)], DataFacts.from_labels(labels),
                   batch_size=batch_size, batch_key="batch_size", prefix="")
    world = world or SINGLE
    linear_route = problem.linear_name is not None and settings.per_sample == "auto"
    k_route = settings.k if linear_route else None
    budget = budget_mb(settings.memory_budget_mb, problem.device)
    memory = memory_plan(problem, budget, settings.chunk_size, k=k_route)
    if world.size > 1 and settings.chunk_size is None:
        balanced = balanced_chunk_size(problem.N, memory.chunk_size, world.size)
        memory = memory_plan(problem, budget, balanced, k=k_route)
    problem.chunk_size = memory.chunk_size
    if progress is None:
        progress = _interactive(sys.stderr) and world.is_main
    a = Analysis(problem, settings, batch_size, settings.seeds.resolve(seed), memory,
                 progress=progress, world=world)
    a.provenance["n_procs"] = world.size
    a.provenance["device"] = str(problem.device)
    on_gpu = problem.device.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(problem.device)
    with scoped_threads(library_threads(settings.threads)):
        for name, stage in stages.STAGES:
            if stages.runs(name, settings):
                stage(a)
        a.add("n_threads", (), torch.get_num_threads())
    if on_gpu:  # the analysis's peak of device memory (torch's allocator)
        a.provenance["peak_device_mib"] = torch.cuda.max_memory_allocated(problem.device) / 2**20
    a.provenance["memory_budget_mb"] = budget
    return analysis_dataset(a, target, loss)


def _interactive(stream) -> bool:
    """Whether ``stream`` is a terminal (False for a closed or replaced stream, e.g. one a
    test runner or notebook swapped in and closed)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
