"""``awch-scale sweep``: a grid of recipe overrides, each point its own analysis, run on
``dask.distributed``.

A grid ``train.lr=0.05,0.1 x data.label_noise=0,0.2`` gives four points. Each point is
the recipe's YAML with its overrides applied (values parsed as YAML scalars), the name
suffixed with the point and ``store`` set to ``<sweep dir>/<point>.zarr``; it is
validated with :func:`awch_scale.run.recipe.parse_recipe` before anything runs. Points run as
independent tasks (:func:`run_point`: one ``prepare`` + ``run_recipe``) on a
``LocalCluster`` (processes, one thread each; the default is one worker per core, at
most one per point) or on the scheduler at ``--scheduler``. Every point writes only its
own store, so workers never write the same zarr chunk; a cluster reaching the files must
share the file system (the sweep directory and the data roots are made absolute).

``sweep.json`` in the sweep directory is the manifest: the grid and, per point, its
overrides, store, status (``pending``, ``done``, ``failed``) and the reason of a failure.
It is rewritten (atomically) after each point. A point whose store already holds every
analysis is skipped on a re-run; an unfinished one is resumed by ``run_recipe``.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import yaml

from awch_scale.errors import AwchError, RecipeError
from awch_scale.results.manifest import _write_manifest
from awch_scale.results.store import STORE_SUFFIX, sibling


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["train.lr=0.05,0.1", ...]`` -> ``{"train.lr": [0.05, 0.1], ...}`` (YAML scalars)."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise RecipeError(f"--grid '{item}': expected KEY=V1,V2,... "
                              "(e.g. train.lr=0.05,0.1)")
        if key in grid:
            raise RecipeError(f"--grid key '{key}' is given twice")
        if any(not v.strip() for v in values.split(",")):
            raise RecipeError(f"--grid '{item}': an empty value between commas (write null "
                              "for a YAML null)")
        grid[key] = [yaml.safe_load(v.strip()) for v in values.split(",")]
    if not grid:
        raise RecipeError("a sweep needs at least one --grid KEY=V1,V2,...")
    return grid


def short_keys(keys: list[str]) -> dict[str, str]:
    """Dotted key -> its last part, or the whole key where last parts collide."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def point_name(values: dict, short: dict[str, str]) -> str:
    """``lr=0.1,label_noise=0``: the point's folder stem (and recipe-name suffix)."""
    return ",".join(f"{short[k]}={_fmt(v)}" for k, v in values.items())


def _fmt(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip() \
        .replace("/", "_").replace(" ", "")


def apply_overrides(text: str, values: dict, *, name: str, store: Path) -> str:
    """The recipe text with ``values`` (dotted keys) set, renamed and re-stored; validated.

    Raises:
        RecipeError: the modified recipe is not valid (the message names the field).
    """
    from awch_scale.run.recipe import parse_recipe

    recipe = yaml.safe_load(text)
    for dotted, value in values.items():
        node = recipe
        *parents, leaf = dotted.split(".")
        for p in parents:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"--grid key '{dotted}': '{p}' is not a section")
            node = child
        node[leaf] = value
    recipe["name"] = f"{recipe.get('name', 'sweep')}.{name}".replace(",", "_").replace("=", "-")
    recipe["store"] = str(store)
    data = recipe.get("data") or {}
    if data.get("root") and not Path(data["root"]).is_absolute():
        data["root"] = str(Path(data["root"]).resolve())
    out = yaml.safe_dump(recipe, sort_keys=False)
    parse_recipe(out, f"sweep point {name}")
    return out


def run_point(text: str, threads: int = 1) -> dict:
    """Run one point: the one place a sweep calls the pipeline (``prepare`` + ``run_recipe``).

    ``threads``: torch intra-op threads of the worker (0: leave as they are).

    Executed on a dask worker. Never raises: returns ``{"status": "done"|"failed",
    "reason": ..., "seconds": ...}`` so that a failing point is reported, not lost.
    """
    from awch_scale.run.plan import prepare
    from awch_scale.run.recipe import parse_recipe
    from awch_scale.run.runner import run_recipe
    from awch_scale.threads import scoped_threads

    t0 = time.perf_counter()
    try:
        recipe = parse_recipe(text, "sweep point")
        plan = prepare(recipe, text)
        with scoped_threads(threads if threads > 0 else None):
            store = run_recipe(plan, progress=False, echo=lambda m: None).store
        failures = store.attrs.get("failures") or {}
        if not is_finished(store.path, text):
            reason = "; ".join(f"{k}: {v}" for k, v in failures.items()) or "analyses missing"
            return {"status": "failed", "reason": reason,
                    "seconds": time.perf_counter() - t0}
        return {"status": "done", "reason": "", "seconds": time.perf_counter() - t0}
    except AwchError as exc:
        reason = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - any failure of a point is reported, not raised
        reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
    return {"status": "failed", "reason": reason, "seconds": time.perf_counter() - t0}


def is_finished(store: str | Path, recipe_text: str | None = None) -> bool:
    """Every (run, epoch) analysed, runs that diverged in training excepted (and, with
    ``recipe_text``, the store was made by exactly that recipe text)."""
    from awch_scale.results.store import ResultStore

    rs = ResultStore(store)
    if not rs.exists():
        return False
    ds = rs.open()
    if recipe_text is not None and ds.attrs.get("recipe") != recipe_text:
        return False
    done = ds["done"].values
    failed = ds["failed"].values.reshape(-1, *([1] * (done.ndim - 1)))
    return bool((done | failed).all())


def default_dir(recipe_text: str) -> Path:
    """``<recipe store without .zarr>.sweep``, e.g. ``store/quickstart.sweep``."""
    from awch_scale.run.recipe import parse_recipe

    p = parse_recipe(recipe_text).store_path
    return sibling(p, ".sweep")


def plan_sweep(recipe_text: str, grid: dict[str, list], sweep_dir: Path) -> dict:
    """The manifest of a sweep: every point with its overrides, store and recipe text.

    A point whose modified recipe does not validate is ``failed`` with the reason.
    """
    from awch_scale.run.recipe import parse_recipe

    base = parse_recipe(recipe_text, "sweep recipe")
    sweep_dir = Path(sweep_dir).resolve()
    keys = list(grid)
    short = short_keys(keys)
    points = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        name = point_name(values, short)
        store = sweep_dir / f"{name}{STORE_SUFFIX}"
        point = {"name": name, "values": values, "store": str(store), "status": "pending",
                 "reason": "", "seconds": None}
        try:
            point["recipe"] = apply_overrides(recipe_text, values, name=name, store=store)
        except (AwchError, ValueError) as exc:
            point.update(status="failed", reason=f"invalid recipe: {exc}", recipe=None)
        points.append(point)
    return {"recipe_name": base.name, "recipe": recipe_text, "grid": grid, "keys": keys,
            "short": short, "points": points}


def run_sweep(recipe_text: str, grid: dict[str, list], sweep_dir: str | Path, *,
              scheduler: str | None = None, workers: int | None = None,
              echo: Callable[[str], None] = print) -> dict:
    """Run every unfinished point of the grid on dask.distributed; returns the manifest.

    Args:
        recipe_text: the base recipe (YAML text).
        grid: dotted recipe key -> values (:func:`parse_grid`).
        sweep_dir: folder for the manifest, the point recipes and the point stores.
        scheduler: address of a running dask scheduler (``tcp://host:8786``); default: a
            ``LocalCluster`` of ``workers`` processes with one thread each; ``inline``:
            no dask, the points one after another in this process (debugging, tests).
        workers: LocalCluster size (default: ``min(points to run, os.cpu_count())``).
        echo: progress lines (one per finished point, with done/failed counts).
    """
    sweep_dir = Path(sweep_dir).resolve()
    manifest = plan_sweep(recipe_text, grid, sweep_dir)
    if all(p["status"] == "failed" for p in manifest["points"]):
        # no point is a valid recipe: the grid itself is wrong (an unknown key, or values
        # of the wrong kind); refused before anything is written
        raise RecipeError(f"no point of the grid is a valid recipe; the first: "
                          f"{manifest['points'][0]['reason'][:500]}")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for point in manifest["points"]:
        if point["status"] == "failed":
            echo(f"{point['name']}: failed: {point['reason']}")
            continue
        (sweep_dir / f"{point['name']}.yaml").write_text(point["recipe"])
        if is_finished(point["store"], point["recipe"]):
            point.update(status="done", reason="", skipped=True)
            echo(f"{point['name']}: already finished, skipped")
        else:
            todo.append(point)
    _write_manifest(sweep_dir, manifest)
    total = len(manifest["points"])
    if todo and scheduler == "inline":
        for i, point in enumerate(todo):
            point.update(run_point(point["recipe"], threads=0))
            _write_manifest(sweep_dir, manifest)
            echo(f"[{i + 1}/{len(todo)}] {point['name']}: {point['status']} {point['reason']}")
    elif todo:
        _run_on_dask(todo, manifest, sweep_dir, scheduler, workers, echo, total)
    n_done = sum(p["status"] == "done" for p in manifest["points"])
    n_failed = sum(p["status"] == "failed" for p in manifest["points"])
    echo(f"sweep {sweep_dir}: {n_done} done, {n_failed} failed of {total} points")
    return manifest


def _run_on_dask(todo, manifest, sweep_dir, scheduler, workers, echo, total) -> None:
    from distributed import Client, LocalCluster, as_completed

    logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler:
        client, cluster = Client(scheduler), None
    else:
        n = workers or max(1, min(len(todo), os.cpu_count() or 1))
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        futures = {client.submit(run_point, p["recipe"], key=f"awch-point-{p['name']}",
                                 pure=False): p for p in todo}
        for future in as_completed(futures):
            point = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker fails its point only
                result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                          "seconds": None}
            point.update(result)
            _write_manifest(sweep_dir, manifest)
            n_done = sum(p["status"] == "done" for p in manifest["points"])
            n_failed = sum(p["status"] == "failed" for p in manifest["points"])
            secs = f" in {result['seconds']:.1f} s" if result.get("seconds") else ""
            line = f"[{n_done + n_failed}/{total}, {n_done} done, {n_failed} failed] " \
                   f"{point['name']}: {result['status']}{secs}"
            echo(line + (f": {result['reason']}" if result["status"] == "failed" else ""))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
