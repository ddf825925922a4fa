"""Fault injection for the reliability tests: stop the process at a chosen write point.

Setting ``AWCH_SCALE_FAULT=<point>`` makes :func:`fault_point` send the process a
signal (``AWCH_SCALE_FAULT_SIGNAL``: ``KILL``, the default, ``INT`` (Ctrl-C), ``TERM``,
``HUP``, or ``STOP``, which pauses the process there, holding its lock, until it gets
``SIGCONT``), or raise
:class:`InjectedFault` (``RAISE``), when execution reaches ``<point>``;
``AWCH_SCALE_FAULT=<point>:<n>`` fires on the n-th arrival. With
``AWCH_SCALE_FAULT_RANK=<r>`` it fires only in the process whose ``RANK`` environment
variable is r (one rank of ``analyze --nproc``). The points are listed in
:data:`POINTS`. Without the variable, :func:`fault_point` costs one dictionary look-up.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "store-created",  # the new store is built beside its final path, not yet renamed
    "training-written",  # a run's curves are written, ``trained`` not yet set
    "arrays-created",  # new arrays' metadata written, the group not yet listing them
    "analysis-written",  # an analysis's variables are written, ``done`` not yet set
    "analysis-done",  # ``done`` of an analysis is written
    "analysis-start",  # an analysis begins (on every rank of a multi-process run)
    "output-built",  # a report or figures folder is complete beside its path, not moved
)


class InjectedFault(RuntimeError):
    """Raised by :func:`fault_point` under ``AWCH_SCALE_FAULT_SIGNAL=RAISE``."""

_count: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Send the configured signal to this process if ``AWCH_SCALE_FAULT`` names ``name``."""
    want = os.environ.get("AWCH_SCALE_FAULT")
    if not want:
        return
    point, _, nth = want.partition(":")
    if point != name:
        return
    rank = os.environ.get("AWCH_SCALE_FAULT_RANK")
    if rank is not None and os.environ.get("RANK", "0") != rank:
        return
    _count[name] = _count.get(name, 0) + 1
    if _count[name] != int(nth or 1):
        return
    sig = os.environ.get("AWCH_SCALE_FAULT_SIGNAL", "KILL")
    if sig == "RAISE":
        raise InjectedFault(f"fault injected at {name} (AWCH_SCALE_FAULT)")
    signals = {"INT": signal.SIGINT, "TERM": signal.SIGTERM, "HUP": signal.SIGHUP,
               "STOP": signal.SIGSTOP}
    os.kill(os.getpid(), signals.get(sig, signal.SIGKILL))
