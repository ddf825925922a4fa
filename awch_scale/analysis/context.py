"""The context one analysis runs in: :class:`Analysis`, which every stage reads and adds
to, the Hessian operator it starts from (:func:`hessian_operator`) and what the
validator needs to know of a target (:func:`target_facts`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor
from tqdm.auto import tqdm

from awch_scale.analysis.memory import MemoryPlan, memory_plan
from awch_scale.analysis.validation import TargetFacts
from awch_scale.linalg.eigen import Eigenbasis
from awch_scale.model.operators import BlockOperator, HessianOperator, KroneckerHessianOperator
from awch_scale.model.problem import BlockProblem
from awch_scale.settings import AnalysisSettings
from awch_scale.variables import VARIABLES
from awch_scale.world import SINGLE, World


def hessian_operator(problem: BlockProblem, kind: str = "auto",
                     memory: MemoryPlan | None = None, world: World = SINGLE
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
    world: World = SINGLE

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
