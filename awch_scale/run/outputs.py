"""Where the commands write besides the store: the ``--out`` folders of ``plot``,
``report`` and ``sweep``, checked before anything is drawn or computed, and written
beside their final path, then renamed into place (:func:`written_beside`).

A store holds only what ``analyze`` writes: an output folder inside a store (or at a
store's path) would make it fail ``verify``, so it is refused (:func:`refuse_inside_store`,
:func:`store_around`). Paths are compared after symlinks are resolved.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from awch_scale.errors import AwchError
from awch_scale.results.faults import fault_point
from awch_scale.results.lock import process_alive


def store_around(path: str | Path) -> Path | None:
    """The zarr store at ``path`` or above it (symlinks resolved), or None.

    Any folder holding a ``zarr.json`` counts (a store, or an array inside one); of
    several nested ones the outermost is returned: the store itself.
    """
    found = None
    for p in (Path(path).resolve(), *Path(path).resolve().parents):
        if (p / "zarr.json").is_file():
            found = p
    return found


def refuse_inside_store(out: Path, option: str, default: str | None = None) -> None:
    """Refuse an output ``out`` that is a store or lies inside one (AwchError, naming
    ``option``); ``default``: what to suggest instead."""
    store = store_around(out)
    if store is None:
        return
    where = ("is the store" if store == Path(out).resolve() else "lies inside the store")
    hint = f" (the default is {default})" if default else ""
    raise AwchError(f"{option} {out} {where} {store}; a store holds only what 'awch-scale "
                    f"analyze' writes (writing into it would damage it): name a folder "
                    f"outside any store{hint}")


WRITING = ".writing-"
"""Infix of the temporary folder an output is built in: ``.NAME.writing-PID``."""


@contextmanager
def written_beside(out: str | Path) -> Iterator[Path]:
    """Build the folder ``out`` in a temporary folder beside it; move it into place when
    the block ends without an exception, else remove it.

    A new (or empty) ``out`` is renamed into place at once (atomic); into an existing
    folder the files are moved one by one, ``index.html`` last. An interrupted or
    failed build leaves ``out`` as it was. Temporary folders of builds that were killed
    (``.NAME.writing-PID`` of a process that is gone) are removed first.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}{WRITING}*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f".{out.name}{WRITING}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        fault_point("output-built")
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        if not out.exists():
            os.rename(tmp, out)
            return
        files = sorted(tmp.iterdir(), key=lambda p: (p.name == "index.html", p.name))
        for f in files:
            if (out / f.name).is_dir() and not f.is_dir():
                shutil.rmtree(out / f.name)
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
