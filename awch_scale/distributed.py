"""One analysis over several processes (SPMD, ``torch.distributed``).

Every streamed pass of the analysis is a sum over analysis samples: the operator
product H V = (1/N) sum_i h_i V, the per-sample projections P[i] = V^T g_i, the
moment sums. With ``size`` processes ("ranks") each rank sums the chunks
``slices[rank::size]`` of the analysis set and the partial sums are added with one
``all_reduce`` (gloo on CPU, nccl on CUDA). Every rank runs the same code on the same
inputs and receives the same reduced numbers, so every rank takes the same solver
path (same Ritz values, same restarts) and ends with the same results; only rank 0
should write the store (``World.is_main``).

Numbers differ from the one-process run only by the order of the float64 summation
of the partial sums (relative 1e-12 or so; tests/test_distributed.py checks 1e-6).

Usage::

    def job(world, recipe_path):          # a module-level function (picklable)
        problem = ...                     # built identically on every rank
        op = KroneckerHessianOperator(problem, world=world)
        basis = top_eigenpairs(op, k)
        P = projected_gradients(problem, basis.vectors, world=world)
        return P if world.is_main else None

    P = run_distributed(job, 2, "recipe.yaml")   # rank 0's return value

or under ``torchrun`` (which sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT):
``world = World.from_env()``.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one analysis.

    Attributes:
        rank: 0 .. size - 1.
        size: number of processes (1: no communication at all).
        group: the ``torch.distributed`` process group (None: the default group).
    """

    rank: int = 0
    size: int = 1
    group: Any = None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes results."""
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: ``items[rank::size]`` (round robin)."""
        return list(items[self.rank::self.size])

    def all_reduce(self, t: Tensor) -> Tensor:
        """Sum ``t`` over the ranks in place (and return it); a no-op for size 1.

        gloo reduces CPU tensors, nccl CUDA tensors; the tensor is reduced where it is.
        """
        if self.size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def broadcast(self, t: Tensor, src: int = 0) -> Tensor:
        """Overwrite ``t`` with rank ``src``'s value on every rank (no-op for size 1)."""
        if self.size > 1:
            dist.broadcast(t, src=src, group=self.group)
        return t

    def barrier(self) -> None:
        """Wait for every rank (no-op for one process)."""
        if self.size > 1:
            dist.barrier(group=self.group)

    @classmethod
    def from_env(cls, backend: str | None = None) -> World:
        """Join the process group described by torchrun's environment variables.

        Returns ``World()`` (one process) when WORLD_SIZE is unset or 1.
        """
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group(backend or default_backend())
        return cls(dist.get_rank(), dist.get_world_size())


SINGLE = World()
"""The one-process world (every method is a no-op)."""


def default_backend() -> str:
    """``nccl`` when CUDA is available, else ``gloo``."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def free_port() -> int:
    """A TCP port on localhost that is free now (asked from the OS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MAX_AUTO_THREADS = 4
"""Most threads :func:`set_threads` picks by itself (beyond 4 the tall-skinny GEMMs of
the analysis gain little)."""


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; os.cpu_count otherwise)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_threads(cores: int | None = None, load: float | None = None) -> int:
    """The thread count :func:`set_threads` chooses: the idle cores, at most 4, at least 1.

    idle = cores - (1-minute load average), rounded down; so 1 on a loaded machine. On
    this 2-core machine, loaded by other jobs, torch's default (2 threads) made the
    products 1.4-2.4x slower than 1 thread (benchmarks/results/cpu.md section 1):
    oversubscribed OpenMP threads spin-wait on each other.
    """
    cores = available_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return int(max(1, min(MAX_AUTO_THREADS, cores, int(cores - load))))


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (None: :func:`auto_threads`); return it.

    The CLI/recipe call this once before the analysis and record the value in the
    store's attributes (``threads``). Under :func:`run_distributed` every rank sets its
    own (default 1).
    """
    if n is not None and n < 1:
        raise ValueError(f"threads must be >= 1 (or None for automatic); got {n}")
    n = auto_threads() if n is None else int(n)
    torch.set_num_threads(n)
    return n


def _entry(rank: int, size: int, port: int, backend: str, threads: int | None,
           fn: Callable, args: tuple, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(size), LOCAL_RANK=str(rank))
    if threads is not None:
        torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, rank=rank, world_size=size)
    try:
        result = fn(World(rank, size), *args)
        if rank == 0:
            with open(out_path, "wb") as f:
                pickle.dump(result, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_distributed(fn: Callable[..., T], nproc: int, *args, backend: str | None = None,
                    threads: int | None = 1) -> T:
    """Run ``fn(world, *args)`` on ``nproc`` spawned processes; return rank 0's result.

    Args:
        fn: a picklable (module-level) function taking a :class:`World` first.
        nproc: number of processes; 1 calls ``fn(SINGLE, *args)`` in this process.
        args: picklable arguments passed to every rank.
        backend: ``gloo``/``nccl``; default :func:`default_backend`.
        threads: torch intra-op threads per rank (None: leave torch's default).

    The processes are started with ``torch.multiprocessing.spawn`` on a free localhost
    port; an exception on any rank is raised here (``ProcessRaisedException``).
    """
    if nproc <= 1:
        return fn(SINGLE, *args)
    import torch.multiprocessing as mp

    backend = backend or default_backend()
    with tempfile.TemporaryDirectory(prefix="awch-dist-") as tmp:
        out = os.path.join(tmp, "rank0.pkl")
        mp.spawn(_entry, args=(nproc, free_port(), backend, threads, fn, args, out),
                 nprocs=nproc, join=True)
        with open(out, "rb") as f:
            return pickle.load(f)
