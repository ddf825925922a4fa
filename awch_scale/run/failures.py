"""The failure records of a store: its ``failures`` attribute, ``key: reason`` where the key
is a seed (the run's training diverged) or ``seed/epoch`` (that analysis failed)."""

from __future__ import annotations

import logging

import zarr

from awch_scale.errors import AwchError
from awch_scale.results.store import ResultStore

log = logging.getLogger(__name__)


def failure_reason(exc: BaseException) -> str:
    """The reason recorded for ``exc``: an AwchError's own message, else the exception's
    type and message."""
    return str(exc) if isinstance(exc, AwchError) else f"{type(exc).__name__}: {exc}"


def record_failure(store: ResultStore, key: str, message: str) -> None:
    """Add ``key: message`` to the store attribute ``failures`` (key: seed or seed/epoch)."""
    failures = dict(store.attrs.get("failures", {}))
    failures[key] = message
    zarr.open_group(store.path, mode="r+").attrs["failures"] = failures
    log.error("%s failed: %s", key, message)


def clear_failure(store: ResultStore, key: str) -> None:
    """Remove ``key`` from the store attribute ``failures`` (its analysis is now done)."""
    failures = dict(store.attrs.get("failures", {}))
    if key in failures:
        del failures[key]
        zarr.open_group(store.path, mode="r+").attrs["failures"] = failures


def io_error_message(exc: OSError, store=None, *,
                     resume: str = "run the same command again to resume",
                     kept: str = "The analyses already marked done are intact",
                     move: str = " (or move the store and its checkpoint folder elsewhere "
                                 "and pass --store)") -> str:
    """One paragraph for an I/O error while writing: what, where, what to do.

    Args:
        exc: the error (its ``filename``, ``errno`` and ``strerror``).
        store: where it was writing, when the error names no file.
        resume: how to go on after fixing the cause.
        kept: what is intact.
        move: the alternative to freeing space on a full disk.
    """
    import errno

    where = exc.filename or store or "the store"
    if exc.errno == errno.ENOSPC or exc.errno == getattr(errno, "EDQUOT", None):
        what = "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is exceeded"
        what += f" ({exc.strerror})"
        todo = f"free space on that disk{move}, then {resume}"
    else:
        what = exc.strerror or str(exc)
        todo = f"fix the cause and {resume}"
    return f"I/O error while writing {where}: {what}. {kept}; {todo}"
