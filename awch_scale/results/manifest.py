"""The ``sweep.json`` manifest of a sweep directory: reading it, and replacing it atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

from awch_scale.errors import AwchError

MANIFEST = "sweep.json"
"""The file that makes a folder a sweep directory."""


def is_sweep_dir(path: str | Path) -> bool:
    """Whether ``path`` is a sweep directory (it holds a ``sweep.json`` manifest)."""
    return (Path(path) / MANIFEST).exists()


def read_manifest(sweep_dir: str | Path) -> dict:
    """The ``sweep.json`` manifest of a sweep directory (points, overrides, status)."""
    path = Path(sweep_dir) / MANIFEST
    if not path.exists():
        raise AwchError(f"no sweep at {sweep_dir} (expected a sweep.json manifest)")
    return json.loads(path.read_text())


def _write_manifest(sweep_dir: Path, manifest: dict) -> None:
    tmp = sweep_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    os.replace(tmp, sweep_dir / MANIFEST)
