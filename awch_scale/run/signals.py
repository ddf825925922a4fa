"""SIGTERM and SIGHUP handled like Ctrl-C (SIGINT), by every command and every rank.

Inside :func:`handled_signals` the first SIGINT, SIGTERM or SIGHUP raises
:class:`Interrupted` (a ``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` and
``finally`` on the way out runs: the store's lock is released, temporary folders are
removed). Further signals while that exception unwinds are ignored, so a second one (a
terminal's Ctrl-C reaches every process of its group, and the ``--nproc`` launcher
forwards signals to its ranks as well) cannot cut the clean-up short; a process that
hangs can still be ended with SIGKILL, which every write point survives.

The exit status of an interrupted command is ``128 + signal number``, the shell's
convention: 130 (SIGINT), 143 (SIGTERM), 129 (SIGHUP) (:func:`exit_status`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that interrupt a command the way Ctrl-C does."""


class Interrupted(KeyboardInterrupt):
    """A command was interrupted by ``signum`` (SIGINT, SIGTERM or SIGHUP).

    Attributes:
        signum: the signal's number.
    """

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal_name(signum))
        self.signum = int(signum)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15 (the number itself when Python does not know it)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def signal_of(exc: BaseException) -> int:
    """The signal that raised ``exc`` (an :class:`Interrupted`); SIGINT for a plain
    ``KeyboardInterrupt``."""
    return int(getattr(exc, "signum", signal.SIGINT))


def exit_status(exc: BaseException) -> int:
    """The exit status of a command ended by ``exc``: 128 + its signal's number."""
    return 128 + signal_of(exc)


@contextmanager
def handled_signals() -> Iterator[None]:
    """Raise :class:`Interrupted` on the first SIGINT, SIGTERM or SIGHUP inside the block.

    Outside the main thread (where Python cannot set handlers) this does nothing. The
    previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[int] = []

    def handler(signum: int, frame) -> None:
        if raised:  # the first one is being handled: let its clean-up finish
            return
        raised.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in HANDLED}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def ignore_signals() -> None:
    """Ignore SIGINT, SIGTERM and SIGHUP from now on (a process reporting how it ended)."""
    if threading.current_thread() is threading.main_thread():
        for s in HANDLED:
            signal.signal(s, signal.SIG_IGN)


@contextmanager
def blocked_signals() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back inside the block; one that arrives is
    delivered when it ends. Processes started inside inherit the blocked mask, so they
    cannot die of a signal while they start (:func:`unblock_signals` in the child).

    multiprocessing's resource tracker, started on first use, unblocks SIGINT and
    SIGTERM in the thread that starts it, so it is started first.
    """
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def unblock_signals() -> None:
    """Deliver SIGINT, SIGTERM and SIGHUP again (in a process started inside
    :func:`blocked_signals`, once its handlers are set)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
