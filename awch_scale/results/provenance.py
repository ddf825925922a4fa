"""How a store was computed, for ``awch-scale show --provenance``: a rich tree of the
store-level provenance (versions, device, start), the settings every analysis shares,
and, per finished analysis, only what differs (seeds, solver counts, seconds per stage).
"""

from __future__ import annotations

import itertools
import json

import numpy as np
from rich.tree import Tree

PROVENANCE_NUMBERS = ("n_hvp", "eigen_passes", "n_threads", "chunk_size", "awd_h1_rel_err")
"""Per-analysis scalars shown with the stored ``provenance`` record."""


def _flat(record: dict, prefix: str = "") -> dict[str, object]:
    """A nested record as ``{dotted key: leaf value}``."""
    out: dict[str, object] = {}
    for key, value in record.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        return ", ".join(_value(x) for x in v) or "[]"
    return str(v) if v != "" else '""'


def records(ds) -> list[tuple[str, dict[str, object]]]:
    """``(label, flat record)`` per finished analysis: the stored ``provenance`` JSON, the
    scalars of :data:`PROVENANCE_NUMBERS` and the seconds per stage. Labels read ``run 0,
    epoch 20`` (``, layer fc1`` for several targets); coordinates keep their types."""
    if "provenance" not in ds:
        return []
    prov = ds.provenance
    dims = list(prov.dims)
    out = []
    for values in itertools.product(*(prov[d].values for d in dims)):
        where = dict(zip(dims, values, strict=True))
        text = str(prov.sel(where).values)
        if not text:
            continue
        sel = ds.sel(where)
        record = _flat(json.loads(text))
        record.update({n: sel[n].values.item() for n in PROVENANCE_NUMBERS if n in sel})
        record.update({f"seconds.{str(n).removeprefix('seconds_')}": float(sel[n])
                       for n in sel.data_vars if str(n).startswith("seconds_")})
        out.append((", ".join(f"{d} {v}" for d, v in where.items()), record))
    return out


def provenance_tree(ds) -> Tree:
    """Store-level provenance, the settings common to every analysis, and per analysis
    what differs, as a rich :class:`~rich.tree.Tree` (``awch-scale show --provenance``)."""
    a = ds.attrs
    tree = Tree(f"provenance of {a.get('recipe_name', 'the store')}")
    store = tree.add("store")
    store.add(f"awch-scale {a.get('awch_scale_version', '?')} on {a.get('device', '?')} "
              f"({a.get('device_name', '')}), started {a.get('start_time', '?')}")
    store.add("versions: " + ", ".join(f"{k} {v}"
                                       for k, v in (a.get("versions") or {}).items()))
    found = records(ds)
    if not found:
        tree.add("(no per-analysis provenance in this store)")
        return tree
    keys = list(dict.fromkeys(k for _, r in found for k in r))
    common = [k for k in keys if not k.startswith("seconds.")
              and all(k in r and _same(r[k], found[0][1][k]) for _, r in found)]
    shared = tree.add(f"every analysis ({len(found)})" if len(found) > 1 else found[0][0])
    for key in common:
        shared.add(f"{key}: {_value(found[0][1][key])}")
    for label, record in found:
        node = tree.add(label) if len(found) > 1 else shared
        for key in keys:
            if key in record and key not in common and not key.startswith("seconds."):
                node.add(f"{key}: {_value(record[key])}")
        seconds = {k.removeprefix("seconds."): v for k, v in record.items()
                   if k.startswith("seconds.")}
        if seconds:
            node.add("seconds: " + ", ".join(f"{k} {_value(v)}" for k, v in seconds.items()))
    return tree


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (np.isnan(a) and np.isnan(b))
    return a == b
