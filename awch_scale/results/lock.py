"""One writer per store: a lock file beside the store (``<store>.lock``).

The lock file is created with ``O_CREAT | O_EXCL`` (atomic on POSIX file systems) and
holds the owner's pid, host and start time as JSON. A second ``awch-scale analyze`` on
the same store refuses with :class:`StoreLockedError` naming the owner. A lock left by
a process that no longer runs on this host (kill -9) is stale and is taken over.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from pathlib import Path

from awch_scale.errors import AwchError


class StoreLockedError(AwchError):
    """Another live process holds the store's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    """Context manager holding ``<store>.lock``.

    Args:
        store: the store's path.
    """

    def __init__(self, store: str | Path):
        store = Path(store)
        self.path = store.with_name(store.name + ".lock")
        self.held = False

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
                other = self.owner()
                if other is None or (other.get("host") == me["host"]
                                     and not _alive(int(other.get("pid", -1)))):
                    self.path.unlink(missing_ok=True)  # stale (or half-written) lock
                    continue
                raise StoreLockedError(
                    f"store {self.path.with_suffix('')} is being written by process "
                    f"{other.get('pid')} on {other.get('host')} (since {other.get('started')}); "
                    f"wait for it to finish, or remove {self.path} if that process is gone"
                ) from None
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

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
