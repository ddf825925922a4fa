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

The whole pipeline (``awch-scale analyze RECIPE --nproc N``, or ``torchrun ...
awch-scale analyze RECIPE``) runs on :func:`launch` / :meth:`World.join`: the numbers go
through the process group (the device's backend, timeout :func:`data_timeout`); small
Python objects (rank 0's commands, each analysis's outcome) through the group's
key-value store (:meth:`World.exchange`), where each rank waits with a timeout of its
own: long for commands (the other ranks wait while rank 0 trains), short
(:func:`grace_seconds`) for a rank whose analysis failed. :func:`launch` stops every
process as soon as one ends with an error, so no rank waits for a dead one.
"""

from __future__ import annotations

import datetime as _dt
import os
import pickle
from collections.abc import Sequence
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
        group: the ``torch.distributed`` process group of the numbers (None: the
            default group).
        store: the process group's key-value store (``torch.distributed.Store``) for
            small Python objects: commands and outcomes (:meth:`exchange`).
    """

    rank: int = 0
    size: int = 1
    group: Any = None
    store: Any = None

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

    def _wait(self, keys: list[str], timeout: float | None, what: str) -> list:
        wait = CONTROL_TIMEOUT_S if timeout is None else timeout
        try:
            self.store.wait(keys, _dt.timedelta(seconds=wait))
            return [pickle.loads(self.store.get(k)) for k in keys]
        except RuntimeError as exc:  # DistStoreError: timeout, or the store's host is gone
            raise RankLost(f"{what} within {wait:g} s "
                           f"({str(exc).splitlines()[0][:200]})") from None

    def broadcast_object(self, key: str, obj: Any = None, src: int = 0, *,
                         timeout: float | None = None) -> Any:
        """Rank ``src``'s picklable ``obj`` on every rank, under the name ``key`` (each
        name is used once) in the store (no collective: see :meth:`exchange`).

        Raises:
            RankLost: it did not arrive within ``timeout`` seconds (None:
                :data:`CONTROL_TIMEOUT_S`), or rank ``src``'s store is gone.
        """
        if self.size == 1:
            return obj
        name = f"awch/{key}"
        if self.rank == src:
            self.store.set(name, pickle.dumps(obj))
            return obj
        return self._wait([name], timeout, f"no word from process {src}")[0]

    def exchange(self, key: str, obj: Any, *, timeout: float | None = None) -> list:
        """Every rank's picklable ``obj``, in rank order, under the name ``key`` (each
        name is used once).

        The objects go through the process group's key-value store (the c10d TCPStore
        of the rendezvous), not through a collective: a rank waits with a timeout of its
        own, and a rank blocked in a collective of the numbers cannot confuse it. The
        store answers while its host rank computes (it serves from a thread).

        Args:
            key: a name for this exchange, the same on every rank.
            obj: this rank's contribution (small: an outcome, a few numbers).
            timeout: seconds this rank waits for the others (None:
                :data:`CONTROL_TIMEOUT_S`). A rank that failed alone passes a short
                one: the others may be blocked in a collective it left and never come.

        Raises:
            RankLost: the others did not arrive within ``timeout``.
        """
        if self.size == 1:
            return [obj]
        self.store.set(f"awch/{key}/{self.rank}", pickle.dumps(obj))
        keys = [f"awch/{key}/{r}" for r in range(self.size)]
        return self._wait(keys, timeout, "the other processes did not reach the same point")

    @classmethod
    def join(cls, backend: str, rank: int | None = None, size: int | None = None) -> World:
        """Join the process group (``env://``: MASTER_ADDR/MASTER_PORT, and RANK/WORLD_SIZE
        unless given) with :func:`data_timeout`; the World's ``store`` is the group's
        key-value store (for :meth:`exchange` and :meth:`broadcast_object`)."""
        if not dist.is_initialized():
            kw = {} if rank is None else {"rank": rank, "world_size": size}
            dist.init_process_group(backend, timeout=_dt.timedelta(seconds=data_timeout()),
                                    **kw)
        from torch.distributed.distributed_c10d import _get_default_store

        return cls(dist.get_rank(), dist.get_world_size(), None, _get_default_store())

    @classmethod
    def from_env(cls, backend: str | None = None) -> World:
        """Join the process group described by torchrun's environment variables.

        Returns ``World()`` (one process) when WORLD_SIZE is unset or 1.
        """
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        return cls.join(backend or default_backend())


class RankLost(RuntimeError):
    """Another process of a multi-process analysis failed, vanished or stopped answering;
    the whole run is given up (finished analyses stay in the store)."""


CONTROL_TIMEOUT_S = 7 * 24 * 3600
"""Default wait of :meth:`World.exchange`: ranks > 0 wait for commands while rank 0
trains a run."""


def data_timeout() -> float:
    """Seconds one collective of the numbers may wait for the other ranks
    (``AWCH_DIST_TIMEOUT``, default 1800): the last resort against a hung process."""
    return float(os.environ.get("AWCH_DIST_TIMEOUT", "1800"))


def grace_seconds() -> float:
    """Seconds a rank whose analysis failed waits for the others to arrive at the
    analysis's outcome exchange (``AWCH_DIST_GRACE``, default 120). A failure every rank
    meets (no convergence, non-finite numbers) arrives everywhere at once and is recorded
    as that analysis's failure; a failure of one rank alone leaves the others blocked in
    a collective, so after this wait the run is given up (:class:`RankLost`)."""
    return float(os.environ.get("AWCH_DIST_GRACE", "120"))


SINGLE = World()
"""The one-process world (every method is a no-op)."""


def default_backend() -> str:
    """``nccl`` when CUDA is available, else ``gloo``."""
    return "nccl" if torch.cuda.is_available() else "gloo"
