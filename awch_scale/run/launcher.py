"""Starting the processes of a multi-process analysis (see :mod:`awch_scale.world`).

:func:`run_distributed` runs a function on N spawned processes and returns rank 0's
result; :func:`launch` supervises the ranks of ``awch-scale analyze --nproc N`` and
stops all of them as soon as one fails.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.util
import os
import pickle
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

from awch_scale.threads import set_threads
from awch_scale.world import SINGLE, RankLost, World, default_backend

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on localhost that is free now (asked from the OS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, size: int, port: int, backend: str, threads: int | None,
           fn: Callable, args: tuple, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(size), LOCAL_RANK=str(rank))
    if threads is not None:
        set_threads(threads)
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
    from awch_scale.errors import AwchError
    from awch_scale.run.signals import signal_of

    if isinstance(exc, KeyboardInterrupt):
        return {"kind": "interrupted", "message": "interrupted", "signum": signal_of(exc)}
    if isinstance(exc, AwchError):
        return {"kind": "error", "message": str(exc)}
    if isinstance(exc, RankLost):
        return {"kind": "lost", "message": str(exc)}
    if isinstance(exc, OSError):
        return {"kind": "os", "message": exc.strerror or str(exc), "errno": exc.errno,
                "filename": None if exc.filename is None else str(exc.filename)}
    return {"kind": "internal", "message": f"{type(exc).__name__}: {str(exc)[:1000]}"}


def _end_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when its parent ends (Linux); if the
    parent is already gone, end now."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _launch_entry(rank: int, size: int, port: int, backend: str, fn: Callable, args: tuple,
                  out_dir: str, parent: int) -> None:
    """One rank of :func:`launch`: join, run ``fn``, report, and leave without teardown.

    The report (``rank<r>.json``, and rank 0's result) is written before the process
    ends; the process then ends with ``os._exit``, skipping the interpreter's and gloo's
    teardown (where gloo occasionally aborts under heavy load after the work is done).

    SIGINT, SIGTERM and SIGHUP end the work like Ctrl-C (:mod:`awch_scale.run.signals`:
    rank 0 releases the store's lock), and so does the launcher's death: the rank asks
    the kernel for a SIGTERM when its parent ends (``PR_SET_PDEATHSIG``), so no rank
    goes on writing after a launcher killed with SIGKILL.
    """
    from awch_scale.run.signals import handled_signals, ignore_signals, unblock_signals

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(size), LOCAL_RANK=str(rank))
    out = Path(out_dir)
    report: dict = {"kind": "ok"}
    try:
        with handled_signals():
            unblock_signals()  # started with them blocked (launch)
            _end_with_parent(parent)
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
    ignore_signals()  # the report is written whatever arrives now
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


@contextmanager
def _environ(**defaults: str) -> Iterator[None]:
    """Set environment variables not set yet, for processes started inside the block."""
    added = {k: v for k, v in defaults.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


STOP_GRACE = 10.0
"""Seconds the ranks get to end after a forwarded signal (releasing the lock) before
they are killed."""


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


def _forward(procs: list, signum: int) -> None:
    """Send ``signum`` to every rank still running, then wait for them all: each ends
    like after Ctrl-C (its lock released); those still running after
    :data:`STOP_GRACE` seconds are stopped (:func:`_stop`)."""
    for p in procs:
        if p.is_alive():
            try:
                os.kill(p.pid, signum)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_GRACE
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    _stop(procs, wait=0.0)


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
        KeyboardInterrupt: SIGINT, SIGTERM or SIGHUP to this process (inside
            :func:`~awch_scale.run.signals.handled_signals`; a plain ``KeyboardInterrupt``
            otherwise), or a rank interrupted by one: the signal is forwarded to the ranks
            still running, which end like after Ctrl-C, and this waits for them
            (:data:`STOP_GRACE` seconds, then they are killed). No rank outlives it.
    """
    from multiprocessing.connection import wait as wait_any

    from awch_scale.run.signals import Interrupted, blocked_signals, signal_of

    backend = backend or default_backend()
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="awch-launch-") as tmp:
        out = Path(tmp)
        port = free_port()
        procs = [ctx.Process(target=_launch_entry, name=f"awch-rank{r}",
                             args=(r, nproc, port, backend, fn, args, tmp, os.getpid()))
                 for r in range(nproc)]
        running: dict = {}
        first: tuple[int, dict] | None = None
        try:
            # a signal now is delivered once all have started; the ranks log no C++
            # warnings (a rank waiting on rank 0 when it ends would print c10d's)
            with blocked_signals(), _environ(TORCH_CPP_LOG_LEVEL="ERROR"):
                for r, p in enumerate(procs):
                    p.start()
                    running[p.sentinel] = r
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
        except KeyboardInterrupt as exc:
            _forward(procs, signal_of(exc))
            raise
        if first is not None and first[1]["kind"] == "interrupted":
            signum = first[1].get("signum", signal.SIGINT)
            _forward(procs, signum)  # one rank was interrupted: so is the whole run
            raise Interrupted(signum)
        _stop(procs, wait=0.0 if first is not None else 30.0)
        if first is not None:
            r, rep = first
            raise LaunchError(r, rep["kind"], rep["message"], rep.get("errno"),
                              rep.get("filename"))
        with open(out / "result.pkl", "rb") as f:
            return pickle.load(f)
