"""``awch-scale verify``: what it checks before reading a store, and what it prints.

:func:`verify_report` refuses what is not a store to verify (no store, a zarr group of
someone else's, a store a live process is writing) and otherwise reads and checksums
every chunk (:meth:`~awch_scale.results.store.ResultStore.verify`), returning the lines
to print: intact, or every damaged part and what can be done about it.
"""

from __future__ import annotations

from pathlib import Path

from awch_scale.errors import AwchError
from awch_scale.results.integrity import unrepairable
from awch_scale.results.lock import StoreLock
from awch_scale.results.manifest import MANIFEST, is_sweep_dir, read_manifest
from awch_scale.results.store import ResultStore, foreign_store_error, no_store_error


def verify_report(store: Path) -> tuple[bool, list[str]]:
    """(intact, lines to print) for the store at ``store``, or for every point store of
    a sweep directory (:func:`_verify_sweep`).

    Raises:
        AwchError: no store there (missing, empty, not made by awch-scale), or a live
            process is writing it (named: its newest analysis is not finished, which
            would look like damage).
    """
    if is_sweep_dir(store):
        return _verify_sweep(Path(store))
    rs = ResultStore(store)
    # a store that lost its own zarr.json still holds its arrays' (a damage verify reports)
    if not store.is_dir() or (not rs.exists() and
                              not any(ResultStore(p).exists() for p in store.iterdir())):
        raise no_store_error(store)
    if rs.made_by_us() is False:
        raise foreign_store_error(store)
    lock = StoreLock(store)
    owner = lock.live_owner()
    if owner is not None:
        raise AwchError(f"{lock.held_message(owner)}: its newest analyses are not finished "
                        "yet, so it is not checked now; run 'awch-scale verify' again after "
                        "that process ends")
    damage = rs.verify(read=True)
    try:
        ds = rs.open()
        runs, epochs = ds.run.values, ds.epoch.values
    except Exception:  # noqa: BLE001  (damaged coordinates: positions instead)
        runs = epochs = None
    note = ("" if rs.edited_attrs() is not None or rs.group_attrs() is None else
            " (its group attributes carry no checksums: written by an awch-scale version "
            "before they were added, so a hand edit of zarr.json cannot be detected)")
    if not damage:
        return True, [f"{store}: intact (every chunk read and checksummed){note}"]
    lines = [f"{store}: {len(damage)} damaged part(s){note}:"]
    lines += [f"  {d.where(runs, epochs)}: {d.reason[:300]}" for d in damage]
    lines.append("the group metadata or the coordinates are damaged: they cannot be "
                 "repaired in place; restore the store from a copy, or delete it and run "
                 "awch-scale analyze RECIPE again" if unrepairable(damage) else
                 "repair: awch-scale analyze RECIPE --repair (redoes only the damaged "
                 "analyses)")
    return False, lines


def _verify_sweep(sweep_dir: Path) -> tuple[bool, list[str]]:
    """Verify each point store of a sweep directory (its ``sweep.json`` lists them); the
    manifest, the point recipes and ``report/`` are not stores and are not checked. A
    point marked done whose store is missing is damage; a pending or failed point without
    a store is not; a point store a live process writes is not checked (said so)."""
    points = read_manifest(sweep_dir)["points"]
    lines = [f"{sweep_dir}: sweep directory of {len(points)} point(s) ({MANIFEST}); each "
             "point's store:"]
    counts = {"intact": 0, "damaged": 0, "not checked": 0, "not written": 0}
    for point in points:
        store = Path(point["store"])
        if not ResultStore(store).exists():
            if point["status"] == "done":
                counts["damaged"] += 1
                lines.append(f"  {store}: missing, though sweep.json marks the point done; "
                             "run the same 'awch-scale sweep' command again to redo it")
            else:
                counts["not written"] += 1
                lines.append(f"  {store}: not written (point {point['status']})")
            continue
        try:
            intact, sub = verify_report(store)
        except AwchError as exc:
            counts["not checked"] += 1
            lines.append(f"  not checked: {exc}")
            continue
        counts["intact" if intact else "damaged"] += 1
        lines += ["  " + line for line in sub]
    lines.append(", ".join(f"{n} {what}" for what, n in counts.items() if n) + " of "
                 f"{len(points)} point store(s)")
    return counts["damaged"] == 0, lines
