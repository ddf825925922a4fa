"""What ``awch-scale verify`` checks in a store, besides each chunk's CRC-32C.

The group's attributes (``zarr.json``: recipe, loss, k, targets, ...) say what the
chunks mean, so they are checksummed too: :data:`CHECKSUMS` holds, per attribute, the
SHA-256 of its canonical JSON (:func:`attr_checksums`), written with the attributes
when the store is created and whenever they are rewritten. :func:`edited_attrs` names
the attributes whose checksum no longer matches (a hand edit), and those added or
removed. The ``failures`` record (rewritten after every failed analysis) is not
covered. Stores written before the checksums existed have none: they stay readable,
and ``verify`` says that their attributes cannot be checked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHECKSUMS = "attrs_sha256"
"""The group attribute holding the other attributes' checksums."""

UNCHECKED = ("failures", CHECKSUMS)
"""Group attributes without a checksum: the failure record (it changes while a store is
written) and the checksums themselves."""

ARRAY_MISSING = "array missing (its folder is gone)"
"""The reason of a :class:`Damage` whose whole array is gone."""

BASE_ARRAYS = ("run", "epoch", "train_epoch", "done", "ckpt_epoch", "trained", "failed")
"""Arrays every store has from its creation on."""


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def canonical_json(value) -> str:
    """The JSON text a checksum is taken of: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=_plain)


def attr_checksums(attrs: dict) -> dict[str, str]:
    """Attribute name -> SHA-256 (hex) of its canonical JSON, for every checked attribute."""
    return {k: hashlib.sha256(canonical_json(v).encode("utf-8")).hexdigest()
            for k, v in attrs.items() if k not in UNCHECKED}


def with_checksums(attrs: dict) -> dict:
    """``attrs`` with :data:`CHECKSUMS` set to their current checksums."""
    out = {k: v for k, v in attrs.items() if k != CHECKSUMS}
    out[CHECKSUMS] = attr_checksums(out)
    return out


def edited_attrs(attrs: dict) -> list[str] | None:
    """The attributes that changed since their checksums were written (``loss``,
    ``added x``, ``removed y``); None when the store has no checksums (written before
    they existed)."""
    want = attrs.get(CHECKSUMS)
    if want is None:
        return None
    if not isinstance(want, dict):
        return [CHECKSUMS]
    have = attr_checksums(attrs)
    edited = [k for k in sorted(have) if k in want and want[k] != have[k]]
    edited += [f"added {k}" for k in sorted(have) if k not in want]
    edited += [f"removed {k}" for k in sorted(want) if k not in have]
    return edited


def edited_reason(edited: list[str]) -> str:
    """The damage reason for edited attributes."""
    return (f"attributes edited since they were written ({', '.join(edited)}): their "
            "checksums no longer match")


@dataclass(frozen=True)
class Damage:
    """One damaged part of a store (positions along run/epoch, or None)."""

    variable: str
    run: int | None
    epoch: int | None
    reason: str

    def where(self, ds_run=None, ds_epoch=None) -> str:
        """Human-readable location (seed and epoch numbers when the coordinates are given)."""
        if self.run is None:
            return self.variable
        r = ds_run[self.run] if ds_run is not None else self.run
        e = ds_epoch[self.epoch] if ds_epoch is not None else self.epoch
        return f"{self.variable} (run {r}, epoch {e})"


def unrepairable(damage: list[Damage]) -> list[Damage]:
    """The damage ``analyze --repair`` cannot redo: anything not per analysis, except an
    analysis variable whose whole array is gone (recreated by redoing the analyses)."""
    from awch_scale.variables import VARIABLES

    return [d for d in damage if d.run is None
            and not (d.variable in VARIABLES and d.reason == ARRAY_MISSING)]


def missing_arrays(path: Path, attrs: dict) -> list[Damage]:
    """Arrays the ``variables`` attribute lists whose folder is gone (stores written
    before that attribute existed: the bookkeeping arrays every store has)."""
    expected = attrs.get("variables") or BASE_ARRAYS
    return [Damage(name, None, None, ARRAY_MISSING)
            for name in expected if not (path / name / "zarr.json").exists()]


def verify_store(path: Path, *, read: bool = True) -> list[Damage]:
    """Every problem of the store at ``path`` (see :meth:`ResultStore.verify`)."""
    import zarr

    found: list[Damage] = []
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError) as exc:
        found.append(Damage("(group)", None, None, f"metadata unreadable: {exc}"))
    else:
        attrs = meta.get("attributes", {}) if isinstance(meta, dict) else {}
        edited = edited_attrs(attrs)
        if edited:
            found.append(Damage("(group)", None, None, edited_reason(edited)))
        found += missing_arrays(path, attrs)
    names = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    done = None
    try:
        done = np.asarray(zarr.open_array(path / "done", mode="r")[...], dtype=bool)
    except Exception:  # noqa: BLE001
        pass  # reported below with the other damaged parts
    for name in names:
        try:
            arr = zarr.open_array(path / name, mode="r")
            dims = tuple(arr.metadata.dimension_names or ())
        except Exception as exc:  # noqa: BLE001
            found.append(Damage(name, None, None, f"metadata unreadable: {exc}"))
            continue
        per = dims[:2] == ("run", "epoch")
        for idx in np.ndindex(*arr.cdata_shape):
            run, epoch = (idx[0], idx[1]) if per else (None, None)
            key = arr.metadata.encode_chunk_key(idx)
            if not (path / name / key).exists():
                if per and done is not None and done[run, epoch] and name != "done":
                    found.append(Damage(name, run, epoch, "chunk missing"))
                continue
            if read:
                try:
                    arr.get_block_selection(idx)
                except Exception as exc:  # noqa: BLE001
                    found.append(Damage(name, run, epoch, f"chunk unreadable: {exc}"))
    return found
