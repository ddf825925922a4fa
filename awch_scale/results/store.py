"""The result store: one zarr group per recipe, opened with ``xarray.open_zarr``.

Layout (SPEC section 8): dims ``run`` (coordinate: seed) and ``epoch`` (coordinate:
checkpoint epoch) lead every per-analysis variable, e.g. ``covar(run, epoch, eig,
eig_)``; training curves are ``train_loss(run, epoch)`` etc. at the checkpoints and
``curve_train_loss(run, train_epoch)`` for every epoch; ``done(run, epoch)`` marks
finished analyses.

Crash safety. Every per-analysis array is chunked (1, 1, ...) along (run, epoch), and
zarr writes each chunk file atomically, so writing one analysis touches only that
analysis's chunks. ``done`` is written last, in a call of its own. A crash therefore
leaves at most one unfinished analysis whose ``done`` is still false; a rerun redoes
exactly that one. Array metadata is written once, when a variable first appears.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import warnings
from importlib import metadata
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from awch_scale.errors import (
    AwchError,
    DamagedStoreError,
    ForeignStoreError,
    NoStoreError,
)
from awch_scale.results.faults import fault_point
from awch_scale.results.integrity import (
    CHECKSUMS,
    Damage,
    edited_attrs,
    missing_arrays,
    verify_store,
    with_checksums,
)
from awch_scale.variables import annotate, stored_dtype

_PACKAGES = ("awch-scale", "torch", "numpy", "scipy", "xarray", "zarr", "backpack-for-pytorch")


def package_versions() -> dict[str, str]:
    """Versions of the packages that produce the numbers."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


STORE_SUFFIX = ".zarr"
"""The suffix of a store's folder; its siblings (checkpoints, figures, report, sweep)
replace it (:func:`sibling`)."""


def sibling(store: str | Path, suffix: str) -> Path:
    """The folder beside a store named after it: ``store/x.zarr`` -> ``store/x<suffix>``."""
    store = Path(store)
    return store.with_name(store.name.removesuffix(STORE_SUFFIX) + suffix)


def no_store_error(path: str | Path) -> NoStoreError:
    """The one message for a path with no awch-scale store."""
    return NoStoreError(f"no awch-scale store at {path} (expected a zarr folder with "
                        "zarr.json)")


def foreign_store_error(path: str | Path) -> ForeignStoreError:
    """The one message for a zarr group that awch-scale did not make."""
    return ForeignStoreError(f"{path} is a zarr group not made by awch-scale (it has no "
                             "recipe attribute)")


def _fill(dtype: np.dtype):
    if np.issubdtype(dtype, np.floating):
        return np.nan
    if np.issubdtype(dtype, np.bool_):
        return False
    if dtype == np.dtype(object):
        return ""
    return -1


def checksummed() -> dict:
    """zarr 3 encoding of every array: zstd, then a CRC-32C of each stored chunk, so a
    flipped bit or a truncated chunk is detected when it is read (``verify``)."""
    return {"compressors": (ZstdCodec(level=0), Crc32cCodec())}


def _checksum_all(ds: xr.Dataset) -> xr.Dataset:
    for name in ds.variables:
        ds[name].encoding.update(checksummed())
    return ds


PARAM_CHUNK = 1 << 16
"""Chunk length along ``param`` (``hess_eigvec``): a chunk holds at most 65,536 x k values."""


def _array_names(ds: xr.Dataset) -> list[str]:
    """Names of the arrays a Dataset writes: data variables and coordinates (the store's
    ``variables`` attribute, which :meth:`ResultStore.verify` checks against its folders)."""
    return sorted({*map(str, ds.data_vars), *map(str, ds.coords)})


def _chunks(var: xr.DataArray) -> tuple[int, ...]:
    return tuple(min(n, PARAM_CHUNK) if d == "param" else n
                 for d, n in zip(var.dims, var.shape, strict=True))


def _strings(ds: xr.Dataset) -> xr.Dataset:
    """String coordinates as variable-length strings (zarr 3's stable string type)."""
    for name, coord in ds.coords.items():
        if coord.dtype.kind == "U":
            ds = ds.assign_coords({name: coord.values.astype(object)})
    return ds


class ResultStore:
    """Read and write the store of one recipe.

    Args:
        path: folder of the zarr store.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def for_reading(cls, path: str | Path, *, check_arrays: bool = True) -> ResultStore:
        """The store at ``path``, checked for the commands that read one.

        Raises:
            NoStoreError: no store (no ``zarr.json``) at ``path``.
            DamagedStoreError: its group metadata is unreadable or was edited (its
                attribute checksums differ), or (``check_arrays``) arrays it lists are
                missing; the message names ``awch-scale verify``.
            ForeignStoreError: a zarr group that awch-scale did not make.
        """
        rs = cls(path)
        if not rs.exists():
            raise no_store_error(path)
        made_by_us = rs.made_by_us()
        if made_by_us is None:
            raise DamagedStoreError(
                f"store {path} cannot be read (its group metadata zarr.json is unreadable); "
                f"run 'awch-scale verify {path}'")
        if not made_by_us:
            raise foreign_store_error(path)
        edited = rs.edited_attrs()
        if edited:
            raise DamagedStoreError(
                f"store {path} is damaged: its group metadata zarr.json was edited after it "
                f"was written ({', '.join(edited)}: their checksums no longer match), so what "
                f"its numbers mean is not known; run 'awch-scale verify {path}'")
        missing = rs.missing_arrays() if check_arrays else []
        if missing:
            names = ", ".join(d.variable for d in missing[:10])
            raise DamagedStoreError(
                f"store {path} is damaged: {len(missing)} array(s) missing ({names}); run "
                f"'awch-scale verify {path}' and 'awch-scale analyze RECIPE --repair'")
        return rs

    # -- creation ---------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether a store (its ``zarr.json``) exists at the path."""
        return (self.path / "zarr.json").exists()

    def create(self, *, seeds: list[int], epochs: list[int], n_train_epochs: int,
               attrs: dict) -> None:
        """Create the store with its bookkeeping and training-curve arrays."""
        runs, eps = len(seeds), len(epochs)
        per_run = {
            "done": (("run", "epoch"), np.zeros((runs, eps), bool)),
            "ckpt_epoch": (("run", "epoch"), np.full((runs, eps), -1, np.int64)),
            "ckpt_sha256": (("run", "epoch"), np.full((runs, eps), "", dtype=object)),
            "trained": ("run", np.zeros(runs, bool)),
            "failed": ("run", np.zeros(runs, bool)),
        }
        for name in ("train_loss", "train_acc", "test_loss", "test_acc", "grad_norm"):
            per_run[name] = (("run", "epoch"), np.full((runs, eps), np.nan, np.float32))
            per_run[f"curve_{name}"] = (("run", "train_epoch"),
                                       np.full((runs, n_train_epochs + 1), np.nan, np.float32))
        per_run["curve_lr"] = (("run", "train_epoch"),
                               np.full((runs, n_train_epochs + 1), np.nan, np.float32))
        ds = xr.Dataset(per_run, coords={"run": seeds, "epoch": epochs,
                                         "train_epoch": np.arange(n_train_epochs + 1)})
        ds.attrs.update(attrs)
        ds.attrs.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat())
        strings = {n: ds[n] for n in ds.data_vars if ds[n].dtype == object}
        ds = annotate(ds.drop_vars(list(strings))).chunk({"run": 1, "epoch": 1})
        for name, var in strings.items():  # numpy-backed, one chunk per (run, epoch) too
            ds[name] = var
            ds[name].encoding["chunks"] = (1,) * var.ndim
        ds = _checksum_all(annotate(ds))
        ds.attrs["variables"] = _array_names(ds)
        ds.attrs = with_checksums(ds.attrs)
        # Build beside the final path (a symlink's target), then rename: a crash leaves
        # either no store or a complete one (and a temporary folder the next creation
        # removes); a failed creation removes its temporary folder at once.
        final = self.path.resolve()
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(f".{final.name}.creating-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.with_name(f".{final.name}.creating-{os.getpid()}")
        try:
            ds.to_zarr(tmp, mode="w-", consolidated=False)
            fault_point("store-created")
            if final.is_dir() and not any(final.iterdir()):
                final.rmdir()
            os.rename(tmp, final)
        except BaseException:  # a full disk, Ctrl-C: give the space back
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # -- reading ----------------------------------------------------------------------
    def open(self) -> xr.Dataset:
        """The store as a lazy dataset (``xarray.open_zarr``, no consolidated metadata)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            return xr.open_zarr(self.path, consolidated=False)

    @property
    def attrs(self) -> dict:
        """The store's attributes (recipe text, versions, failures, ...)."""
        return dict(self.open().attrs)

    def done(self) -> np.ndarray:
        """``done`` (run, epoch) as booleans."""
        return self.open()["done"].values

    def checkpoint_hashes(self) -> np.ndarray:
        """``ckpt_sha256`` (run, epoch): SHA-256 of each checkpoint ('' when unknown)."""
        ds = self.open()
        if "ckpt_sha256" not in ds:
            return np.full(ds["done"].shape, "", dtype=object)
        return ds["ckpt_sha256"].values

    def set_trained(self, run: int, value: bool) -> None:
        """Write ``trained`` of run position ``run``."""
        self._region(xr.Dataset({"trained": ("run", np.array([value]))}),
                     {"run": slice(run, run + 1)})

    def trained(self) -> np.ndarray:
        """``trained`` (run) as booleans."""
        return self.open()["trained"].values

    # -- writing ----------------------------------------------------------------------
    def _region(self, ds: xr.Dataset, region: dict) -> None:
        ds = ds.drop_vars([c for c in ds.coords], errors="ignore")
        ds.to_zarr(self.path, region=region, consolidated=False)

    def _add_variables(self, ds: xr.Dataset) -> None:
        """Create arrays (metadata only) for variables of ``ds`` that the store lacks, then
        list them in the group's ``variables`` attribute (:meth:`_list_arrays`).

        In that order, so that a process killed in between never leaves the group listing
        an array (or a coordinate) that does not exist, which would read as damage that
        cannot be repaired in place; arrays not listed yet are listed by the next write.
        """
        current = self.open()
        new = [v for v in ds.data_vars if v not in current.data_vars]
        if new:
            self._create_arrays(ds, current, new)
            fault_point("arrays-created")
            current = self.open()
        self._list_arrays(current)

    def _create_arrays(self, ds: xr.Dataset, current: xr.Dataset, new: list[str]) -> None:
        """Write the metadata of the arrays ``new`` of ``ds`` (and of coordinates the store
        lacks), filled with their missing value; the group's attributes unchanged."""
        shape = (current.sizes["run"], current.sizes["epoch"])
        tmpl = {}
        for name in new:
            var = ds[name]
            dtype = stored_dtype(name, var.dtype)
            full = shape + var.shape
            values = (np.full(full, _fill(dtype), dtype=dtype) if dtype == np.dtype(object)
                      else da.full(full, _fill(dtype), dtype=dtype, chunks=(1, 1, *_chunks(var))))
            tmpl[name] = (("run", "epoch", *var.dims), values, var.attrs)
        coords = {c: ds.coords[c] for c in ds.coords if c not in current.coords}
        out = _strings(xr.Dataset(tmpl, coords={"run": current.run, "epoch": current.epoch,
                                                **coords}))
        for name in new:  # numpy-backed (string) templates: one chunk per (run, epoch) too
            if not isinstance(out[name].data, da.Array):
                out[name].encoding["chunks"] = (1, 1, *_chunks(ds[name]))
        out = _checksum_all(out)
        out.attrs = dict(current.attrs)  # an append rewrites the group's attributes: as they are
        out.to_zarr(self.path, mode="a", compute=False, consolidated=False)

    def _list_arrays(self, current: xr.Dataset) -> None:
        """Add to the group's ``variables`` attribute (what ``verify`` and the readers
        expect to find) every array the store holds, with fresh attribute checksums."""
        listed = current.attrs.get("variables")
        names = sorted(set(listed or []) | set(_array_names(current)))
        if listed is not None and names == sorted(listed):
            return
        attrs = {**current.attrs, "variables": names}
        if CHECKSUMS in current.attrs:  # a store of an older version stays without
            attrs = with_checksums(attrs)
        zarr.open_group(self.path, mode="r+").attrs.update(attrs)

    def write_analysis(self, run: int, epoch: int, ds: xr.Dataset) -> None:
        """Write one analysis (no run/epoch dims) into slot (run, epoch), then mark done.

        Args:
            run: position along ``run`` (not the seed).
            epoch: position along ``epoch`` (not the epoch number).
            ds: the dataset from :func:`awch_scale.analyze_checkpoint`; its numeric
                attributes that vary per analysis should already be variables.
        """
        ds = _strings(ds)
        self._check_coords(ds)
        self._add_variables(ds)
        ds = xr.Dataset({n: v.astype(stored_dtype(n, v.dtype)) for n, v in ds.data_vars.items()})
        region = {"run": slice(run, run + 1), "epoch": slice(epoch, epoch + 1)}
        self._region(ds.expand_dims(run=1, epoch=1), region)
        fault_point("analysis-written")
        self.set_done(run, epoch, True)
        fault_point("analysis-done")

    def set_done(self, run: int, epoch: int, value: bool) -> None:
        """Write ``done`` of slot (run, epoch) (positions, not seed/epoch numbers)."""
        region = {"run": slice(run, run + 1), "epoch": slice(epoch, epoch + 1)}
        self._region(xr.Dataset({"done": (("run", "epoch"), np.full((1, 1), value))}), region)

    def _check_coords(self, ds: xr.Dataset) -> None:
        """Refuse coordinates that differ from the store's. One exception: a coordinate the
        group does not list yet (``variables``) was created by a write cut short before
        it listed its arrays, possibly before its values were written (a kill inside
        ``to_zarr`` left ``eig`` = [0 0 0 0 0]); it is not part of the store yet, so its
        values are written again (same shape only)."""
        current = self.open()
        listed = current.attrs.get("variables")
        for name in ds.coords:
            if name in current.coords and not np.array_equal(current[name].values,
                                                             ds[name].values):
                if (listed is not None and name not in listed
                        and current[name].shape == ds[name].shape):
                    zarr.open_group(self.path, mode="r+")[name][...] = ds[name].values
                    continue
                raise AwchError(
                    f"store {self.path} has coordinate '{name}' = {current[name].values}, "
                    f"but this analysis produced {ds[name].values}; the store was made by a "
                    "different configuration"
                )

    def write_training(self, run: int, history: dict[str, np.ndarray],
                       at_checkpoints: dict[str, np.ndarray], ckpt_epoch: np.ndarray,
                       failed: bool, ckpt_sha256: list[str] | None = None) -> None:
        """Write one run's training curves, checkpoint metrics and checkpoint hashes,
        then mark it trained."""
        n = self.open().sizes["train_epoch"]
        curves = {}
        for name, values in history.items():
            full = np.full(n, np.nan, np.float32)
            full[: min(n, len(values))] = np.asarray(values, np.float32)[:n]
            curves[f"curve_{name}"] = (("run", "train_epoch"), full[None])
        self._region(xr.Dataset(curves), {"run": slice(run, run + 1)})
        per_epoch = {name: (("run", "epoch"), np.asarray(v, np.float32)[None])
                     for name, v in at_checkpoints.items()}
        per_epoch["ckpt_epoch"] = (("run", "epoch"), np.asarray(ckpt_epoch, np.int64)[None])
        if ckpt_sha256 is not None:
            per_epoch["ckpt_sha256"] = (("run", "epoch"), np.array([ckpt_sha256], dtype=object))
        self._region(xr.Dataset(per_epoch), {"run": slice(run, run + 1)})
        fault_point("training-written")
        flags = {"failed": ("run", np.array([failed])), "trained": ("run", np.array([True]))}
        self._region(xr.Dataset(flags), {"run": slice(run, run + 1)})

    # -- integrity --------------------------------------------------------------------
    def group_attrs(self) -> dict | None:
        """The group's attributes read straight from ``zarr.json`` (no xarray), or None
        when that file is missing or unreadable."""
        try:
            meta = json.loads((self.path / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        return meta.get("attributes", {}) if isinstance(meta, dict) else None

    def made_by_us(self) -> bool | None:
        """Whether the group was written by awch-scale (it has a ``recipe`` attribute);
        None when its metadata cannot be read."""
        attrs = self.group_attrs()
        return None if attrs is None else "recipe" in attrs

    def missing_arrays(self, attrs: dict | None = None) -> list[Damage]:
        """Arrays the store's ``variables`` attribute lists whose folder is gone (cheap:
        no chunk is read; ``attrs``: the group attributes, if already read). Stores
        written before that attribute existed are checked for the bookkeeping arrays
        every store has."""
        attrs = (self.group_attrs() if attrs is None else attrs) or {}
        return missing_arrays(self.path, attrs)

    def edited_attrs(self) -> list[str] | None:
        """Group attributes edited since they were written (their checksums differ);
        None for a store written before the checksums existed (or unreadable metadata)."""
        attrs = self.group_attrs()
        return None if attrs is None else edited_attrs(attrs)

    def verify(self, *, read: bool = True) -> list[Damage]:
        """Every problem of the store: unreadable or edited group metadata (attribute
        checksums, :mod:`awch_scale.results.integrity`), arrays missing from the store,
        chunks that fail their checksum or cannot be decoded (``read``), and chunks
        missing from an analysis whose ``done`` is set. An empty list means the store is
        intact."""
        return verify_store(self.path, read=read)
