"""Real file systems for the reliability tests: a small tmpfs that fills up, read-only
mounts. Mounting needs root and mount(8); elsewhere the tests that use these are skipped
with that reason.

Import as ``from disks import fill, mount, tmpfs, umount``.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from contextlib import contextmanager

import pytest


def mount(target, *options):
    """``mount OPTIONS target``, or skip the test where mounting is not permitted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to mount a small tmpfs (a real file system)")
    proc = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mount {' '.join(options)} is not permitted here: {proc.stderr.strip()}")


def umount(target):
    """Unmount ``target`` (lazily if it is busy)."""
    if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@contextmanager
def tmpfs(mnt, size="2m"):
    """A real tmpfs of ``size`` mounted at the new folder ``mnt`` (a full analysis of the
    one-run recipe takes about 1 MiB)."""
    mnt.mkdir()
    mount(mnt, "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs")
    try:
        yield mnt
    finally:
        umount(mnt)


def fill(disk, leave_pages=0):
    """Fill the file system of ``disk`` with a ballast file, leaving ``leave_pages`` pages."""
    fd = os.open(disk / "ballast", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        block = b"\0" * (1 << 16)
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        page = os.statvfs(disk).f_frsize
        size = os.fstat(fd).st_size // page * page - leave_pages * page
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    st = os.statvfs(disk)
    assert st.f_bavail == leave_pages, (st.f_bavail, leave_pages)
