"""Torch intra-op threads: how many this process may use and choosing them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

_TORCH_DEFAULT = torch.get_num_threads()
"""torch's intra-op threads when this module was first imported: a different count later
means someone (the caller, a test, another library) set them."""

_chosen: list[int] = []
"""Thread counts chosen explicitly in this process (:func:`set_threads`, and
:func:`scoped_threads` while its body runs); empty: nobody chose."""

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
    _chosen[:] = [n]
    return n


def library_threads(requested: int | None) -> int | None:
    """The threads a library call (``analyze_checkpoint``) runs with: ``requested``
    (``analysis.threads``) when set; else None (leave them) when this process has chosen
    its threads already (the CLI, a rank, a sweep worker, or torch.set_num_threads
    directly); else :func:`auto_threads`, the
    CLI's own choice, so that a plain library call is not left with torch's default (on
    this 2-core machine, loaded, 15-21 s where 1 thread took 4.5-4.8 s)."""
    if requested is not None:
        return requested
    if _chosen or torch.get_num_threads() != _TORCH_DEFAULT:
        return None  # chosen already, by us or by a direct torch.set_num_threads
    return auto_threads()


@contextlib.contextmanager
def scoped_threads(n: int | None) -> Iterator[None]:
    """Run the body with torch's intra-op threads set to ``n`` and restore them after
    (``None``: leave them as they are)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    _chosen.append(n)
    try:
        yield
    finally:
        _chosen.pop()
        torch.set_num_threads(before)
