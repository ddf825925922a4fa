"""The ``sweep.json`` manifest of a sweep directory: reading it (checked, its point stores
found in the sweep directory itself), and replacing it atomically."""

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


def point_store(sweep_dir: str | Path, point: dict) -> Path:
    """The store of a manifest point: ``<sweep dir>/<point>.zarr``. Manifests store it
    relative to the sweep directory; older ones stored an absolute path, of which only
    the name is used, so a copied or moved sweep directory reads its own stores."""
    return Path(sweep_dir).resolve() / Path(str(point["store"])).name


def _damaged(path: Path, what: str) -> AwchError:
    return AwchError(f"the sweep manifest {path} is damaged ({what}); it is rewritten by "
                     "running the same 'awch-scale sweep' command again (finished points "
                     "are skipped), or restore it from a copy")


def read_manifest(sweep_dir: str | Path) -> dict:
    """The ``sweep.json`` manifest of a sweep directory (points, overrides, status), each
    point's ``store`` as its path (:func:`point_store`).

    Raises:
        AwchError: no manifest, or one that is truncated or edited out of shape (the
            message names the file and what is wrong).
    """
    path = Path(sweep_dir) / MANIFEST
    if not path.exists():
        raise AwchError(f"no sweep at {sweep_dir} (expected a sweep.json manifest)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AwchError(f"cannot read the sweep manifest {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise _damaged(path, f"not valid JSON: {exc}") from None
    _check(manifest, path)
    for point in manifest["points"]:
        point["store"] = str(point_store(sweep_dir, point))
    return manifest


def _check(manifest, path: Path) -> None:
    """Raise :func:`_damaged` unless ``manifest`` has the shape the readers use."""
    if not isinstance(manifest, dict):
        raise _damaged(path, f"a JSON {type(manifest).__name__}, not an object")
    keys, points = manifest.get("keys"), manifest.get("points")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _damaged(path, "'keys' is missing or not a list of recipe keys")
    if not isinstance(points, list):
        raise _damaged(path, "'points' is missing or not a list")
    for i, p in enumerate(points):
        if not isinstance(p, dict):
            raise _damaged(path, f"point {i} is not an object")
        for field, kind in (("name", str), ("store", str), ("status", str), ("values", dict)):
            if not isinstance(p.get(field), kind):
                raise _damaged(path, f"point {i} has no valid '{field}'")
        missing = [k for k in keys if k not in p["values"]]
        if missing:
            raise _damaged(path, f"point {i} ({p['name']}) has no value for {missing}")
        if Path(p["store"]).name in ("", ".", ".."):
            raise _damaged(path, f"point {i} has no valid 'store'")


def _write_manifest(sweep_dir: Path, manifest: dict) -> None:
    tmp = sweep_dir / (MANIFEST + ".tmp")
    try:
        tmp.write_text(json.dumps(manifest, indent=1, default=str))
        os.replace(tmp, sweep_dir / MANIFEST)
    except BaseException as exc:  # a full disk: the last complete manifest stays
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp)):
            exc.filename = str(sweep_dir / MANIFEST)
        raise
