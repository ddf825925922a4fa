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
import json
import multiprocessing
import multiprocessing.util
import os
import pickle
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
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
        from torch.distributed.distributed_c10d import _get_default_store

        result = fn(World(rank, size, None, _get_default_store()), *args)
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


# ----------------------------------------------------------------------------- launcher


class LaunchError(RuntimeError):
    """A process started by :func:`launch` failed; the others were stopped.

    Attributes:
        rank: the process that failed first.
        kind: ``error`` (an :class:`~awch_scale.errors.AwchError`, i.e. input, store or
            analysis error), ``os`` (an ``OSError``), ``lost`` (:class:`RankLost`),
            ``internal`` (any other exception), ``died`` (ended without a report:
            killed, crashed) or ``interrupted`` (Ctrl-C).
        message: what went wrong, one paragraph.
        errno, filename: of an ``OSError`` (``kind == "os"``), else None.
    """

    def __init__(self, rank: int, kind: str, message: str, errno: int | None = None,
                 filename: str | None = None):
        super().__init__(message)
        self.rank, self.kind, self.message = rank, kind, message
        self.errno, self.filename = errno, filename


def describe_failure(exc: BaseException) -> dict:
    """The report :func:`launch` gets from a rank that ended with ``exc``."""
    from .errors import AwchError

    if isinstance(exc, KeyboardInterrupt):
        return {"kind": "interrupted", "message": "interrupted"}
    if isinstance(exc, AwchError):
        return {"kind": "error", "message": str(exc)}
    if isinstance(exc, RankLost):
        return {"kind": "lost", "message": str(exc)}
    if isinstance(exc, OSError):
        return {"kind": "os", "message": exc.strerror or str(exc), "errno": exc.errno,
                "filename": None if exc.filename is None else str(exc.filename)}
    return {"kind": "internal", "message": f"{type(exc).__name__}: {str(exc)[:1000]}"}


def _launch_entry(rank: int, size: int, port: int, backend: str, fn: Callable, args: tuple,
                  out_dir: str) -> None:
    """One rank of :func:`launch`: join, run ``fn``, report, and leave without teardown.

    The report (``rank<r>.json``, and rank 0's result) is written before the process
    ends; the process then ends with ``os._exit``, skipping the interpreter's and gloo's
    teardown (where gloo occasionally aborts under heavy load after the work is done).
    """
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(size), LOCAL_RANK=str(rank))
    out = Path(out_dir)
    report: dict = {"kind": "ok"}
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        world = World.join(backend, rank, size)
        result = fn(world, *args)
        if rank == 0:
            with open(out / "result.pkl.tmp", "wb") as f:
                pickle.dump(result, f)
            os.replace(out / "result.pkl.tmp", out / "result.pkl")
    except BaseException as exc:  # noqa: BLE001  (reported to the launcher, not printed)
        report = describe_failure(exc)
    try:
        (out / f"rank{rank}.json.tmp").write_text(json.dumps(report))
        os.replace(out / f"rank{rank}.json.tmp", out / f"rank{rank}.json")
    finally:
        try:  # multiprocessing's own exit work (finalizers: e.g. tqdm's semaphore)
            multiprocessing.util._exit_function()
        except Exception:  # noqa: BLE001, S110
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110
                pass
        os._exit(0 if report["kind"] == "ok" else 1)


def _report(out: Path, rank: int, exitcode: int | None) -> dict:
    try:
        return json.loads((out / f"rank{rank}.json").read_text())
    except (OSError, ValueError):
        pass
    if exitcode is not None and exitcode < 0:
        try:
            how = f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"killed by signal {-exitcode}"
    else:
        how = f"exit status {exitcode}"
    return {"kind": "died", "message": f"it ended without a report ({how}: out of memory, "
                                       "or killed?)"}


def _stop(procs: list, wait: float) -> None:
    """SIGTERM the processes still running after ``wait`` seconds; SIGKILL after 5 more."""
    for p in procs:
        p.join(wait)
        wait = 0.0
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(5.0)
        if p.is_alive():
            p.kill()
            p.join()


def launch(fn: Callable[..., T], nproc: int, *args, backend: str | None = None) -> T:
    """Run ``fn(world, *args)`` on ``nproc`` new processes; return rank 0's result.

    Unlike :func:`run_distributed` (the library's helper), this is the CLI's supervisor:
    every rank joins with :meth:`World.join` (process group and key-value store), reports
    how it ended in a file, and the first rank that ends with an error (or dies) makes
    the launcher stop the others at once, so none waits for a dead peer.

    Args:
        fn: a picklable (module-level) function taking a :class:`World` first.
        nproc: number of processes (>= 1; 1 still starts one process).
        args: picklable arguments passed to every rank.
        backend: ``gloo``/``nccl``; default :func:`default_backend`.

    Raises:
        LaunchError: a rank failed or died (the first failure: its rank, kind, message).
        KeyboardInterrupt: Ctrl-C; the ranks (which get the same signal from the
            terminal) are given 5 s to end, then stopped.
    """
    from multiprocessing.connection import wait as wait_any

    backend = backend or default_backend()
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="awch-launch-") as tmp:
        out = Path(tmp)
        port = free_port()
        procs = [ctx.Process(target=_launch_entry, name=f"awch-rank{r}",
                             args=(r, nproc, port, backend, fn, args, tmp))
                 for r in range(nproc)]
        for p in procs:
            p.start()
        running = {p.sentinel: r for r, p in enumerate(procs)}
        first: tuple[int, dict] | None = None
        try:
            # Rank 0 decides: once it has reported success every analysis was agreed on
            # by all ranks, and what happens to the others afterwards (a peer's teardown
            # seeing rank 0's sockets close) no longer matters.
            while first is None and 0 in running.values():
                for sentinel in sorted(wait_any(list(running)), key=running.get):
                    r = running.pop(sentinel)
                    procs[r].join()
                    report = _report(out, r, procs[r].exitcode)
                    if report["kind"] != "ok" and first is None:
                        first = (r, report)
                    if r == 0:
                        break
        except KeyboardInterrupt:
            _stop(procs, wait=5.0)
            raise
        _stop(procs, wait=0.0 if first is not None else 30.0)
        if first is not None:
            r, rep = first
            if rep["kind"] == "interrupted":
                raise KeyboardInterrupt
            raise LaunchError(r, rep["kind"], rep["message"], rep.get("errno"),
                              rep.get("filename"))
        with open(out / "result.pkl", "rb") as f:
            return pickle.load(f)
