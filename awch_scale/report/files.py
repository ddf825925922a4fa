"""What every report writes and reads: the figure formats, a store opened for drawing, a
figure saved in the format its file name says, an output folder checked before anything
is written. Light to import (matplotlib and xarray load when used): the CLI checks its
``--out`` and ``--format`` with it before reading a store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from awch_scale.errors import AwchError

if TYPE_CHECKING:  # pragma: no cover
    import matplotlib.pyplot as plt
    import xarray as xr

FORMATS = ("png", "svg", "pdf")
"""Figure file formats of ``report --format`` and ``plot --format``."""


def check_format(fmt: str) -> str:
    """``fmt`` if it is one of :data:`FORMATS`, else an AwchError naming them."""
    if fmt not in FORMATS:
        raise AwchError(f"figure format '{fmt}' is not known; allowed: {', '.join(FORMATS)}")
    return fmt


def open_store(path: str | Path) -> xr.Dataset:
    """The store at ``path`` (checked as the reading commands check it), loaded."""
    from awch_scale.results.store import ResultStore

    return ResultStore.for_reading(path, check_arrays=False).open().load()


def save(fig: plt.Figure, path: Path, dpi: int = 100) -> Path:
    """Write ``fig`` in the format its suffix names (:data:`FORMATS`) and close it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=dpi, format=path.suffix.lstrip("."))
    plt.close(fig)
    return path


def output_folder_error(out: Path, option: str = "--out") -> AwchError | None:
    """Why ``out`` cannot be a writable output folder (one paragraph naming ``option``), or
    None when it can; nothing is created: an existing file, a path below a file, or a
    location that cannot be written to (probed by creating and removing a file in its
    nearest existing folder)."""
    import tempfile

    out = Path(out)
    if out.exists() and not out.is_dir():
        return AwchError(f"{option} {out} is a file, not a folder: name a folder (it is "
                         "created if missing)")
    base = out
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        return AwchError(f"{option} {out} cannot be used as an output folder: {base} is a "
                         "file, not a folder; name a writable folder")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        return AwchError(f"{option} {out} cannot be used as an output folder: "
                         f"{exc.strerror or exc}; name a writable folder")
    return None
