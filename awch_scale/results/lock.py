"""One writer per store: a lock file beside the store (``<store>.lock``).

The lock file is created with ``O_CREAT | O_EXCL`` (atomic on POSIX file systems) and
holds the owner's pid, host and start time as JSON. A second ``awch-scale analyze`` on
the same store refuses with :class:`StoreLockedError` naming the owner. A lock left by
a process that no longer runs on this host (kill -9) is stale and is taken over.

The lock belongs to the store's resolved path (symlinks followed): a store reached
through a symlink and through its target is one store with one lock. A sweep directory
is locked the same way (``<sweep dir>.lock``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from pathlib import Path

from awch_scale.errors import AwchError


class StoreLockedError(AwchError):
    """Another live process holds the store's lock.

    Attributes:
        owner: the lock file's content (pid, host, started), when known.
    """

    def __init__(self, message: str, owner: dict | None = None):
        super().__init__(message)
        self.owner = owner


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    """Context manager holding ``<store>.lock`` (beside the store's resolved path).

    Args:
        store: the store's path (a symlink names the store it points to).
        what: how messages name what is locked (``store``, ``sweep directory``).
    """

    def __init__(self, store: str | Path, what: str = "store"):
        self.given = Path(store)
        real = self.given.resolve()
        self.path = real.with_name(real.name + ".lock")
        self.what = what
        self.held = False

    def _named(self) -> str:
        real = self.path.with_suffix("")
        return f"{self.given} ({real})" if self.given.absolute() != real else str(real)

    def live_owner(self) -> dict | None:
        """The owner of the lock when it is a live process (this host: running; another
        host: assumed so), else None (no lock, or a stale one)."""
        other = self.owner()
        if other is None:
            return None
        if other.get("host") == socket.gethostname() and not process_alive(
                int(other.get("pid", -1))):
            return None
        return other

    def held_message(self, other: dict) -> str:
        """``store S is being written by process PID on HOST (since TIME)``."""
        return (f"{self.what} {self._named()} is being written by process {other.get('pid')} "
                f"on {other.get('host')} (since {other.get('started')})")

    def owner(self) -> dict | None:
        """The lock file's content, or None when there is no (readable) lock."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`StoreLockedError` if a live process holds it."""
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self.live_owner()
                if other is None:
                    self.path.unlink(missing_ok=True)  # stale (or half-written) lock
                    continue
                raise StoreLockedError(
                    f"{self.held_message(other)}; wait for it to finish, or remove "
                    f"{self.path} if that process is gone", owner=other) from None
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
            except OSError as exc:  # e.g. a full disk: leave no empty lock behind
                self.path.unlink(missing_ok=True)
                if exc.filename is None:
                    exc.filename = str(self.path)
                raise
            self.held = True
            return
        raise StoreLockedError(f"could not take the lock {self.path}")

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if self.held:
            owner = self.owner()
            if owner is None or owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def clear_stale(self) -> bool:
        """Remove the lock file when its owner is gone (a process of this host that no
        longer runs, or an unreadable lock); True if one was removed. For a store that
        nothing will write again (a finished sweep point, skipped), so that the lock a
        killed worker left after its last analysis does not stay behind."""
        if self.path.exists() and self.live_owner() is None:
            self.path.unlink(missing_ok=True)
            return True
        return False

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
