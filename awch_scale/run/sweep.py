"""``awch-scale sweep``: a grid of recipe overrides, each point its own analysis, run on
``dask.distributed``.

A grid ``train.lr=0.05,0.1 x data.label_noise=0,0.2`` gives four points. Each point is
the recipe's YAML with its overrides applied (values parsed as YAML scalars), the name
suffixed with the point and ``store`` set to ``<point>.zarr``, relative to the sweep
directory; it is validated with :func:`awch_scale.run.recipe.parse_recipe` before
anything runs. Points run as independent tasks (:func:`run_point`: one ``prepare`` +
``run_recipe``) on a ``LocalCluster`` (processes, one thread each; the default is one
worker per core, at most one per point) or on the scheduler at ``--scheduler``, which
must answer within :data:`CONNECT_TIMEOUT` seconds before anything is written. Every
point writes only its own store, so workers never write the same zarr chunk; a cluster
reaching the files must share the file system (the data roots are made absolute).

``sweep.json`` in the sweep directory is the manifest: the grid and, per point, its
overrides, store (relative to the sweep directory, so a copied sweep directory reads
its own stores), status (``pending``, ``done``, ``failed``, or ``running``: its store is
being written by another process) and the short reason of a failure. It is rewritten
(atomically) after each point. A point whose store already holds every analysis is
skipped on a re-run; an unfinished one is resumed by ``run_recipe``. One sweep at a time
writes a sweep directory (its lock, ``<sweep dir>.lock``, like a store's).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from awch_scale.errors import AwchError, RecipeError
from awch_scale.results.lock import StoreLock, StoreLockedError
from awch_scale.results.manifest import _write_manifest, point_store, read_manifest
from awch_scale.results.queries import completion
from awch_scale.results.store import STORE_SUFFIX, ResultStore, sibling
from awch_scale.run.grid import apply_overrides, point_name, short_keys
from awch_scale.run.resume import recipe_differences

CONNECT_TIMEOUT = 10.0
"""Seconds a ``--scheduler`` has to answer before the sweep is refused."""


def run_point(text: str, store: str | Path | None = None, threads: int = 1) -> dict:
    """Run one point: the one place a sweep calls the pipeline (``prepare`` + ``run_recipe``).

    Args:
        text: the point's recipe text (stored in its store).
        store: where its store is (the recipe's ``store`` is relative to the sweep
            directory); None: the recipe's own.
        threads: torch intra-op threads of the worker (0: leave as they are).

    Executed on a dask worker. Never raises (but on Ctrl-C): returns ``{"status":
    "done"|"failed"|"running", "reason": ..., "seconds": ...}`` so that a failing point
    is reported, not lost; the reason is one short paragraph (no traceback). A store
    locked by another process is ``running``, not failed.
    """
    import dask

    from awch_scale.run.failures import failure_reason, io_error_message
    from awch_scale.run.plan import prepare
    from awch_scale.run.recipe import parse_recipe
    from awch_scale.run.runner import run_recipe
    from awch_scale.threads import scoped_threads

    t0 = time.perf_counter()
    status = "failed"
    try:
        recipe = parse_recipe(text, "sweep point")
        if store is not None:
            recipe = recipe.model_copy(update={"store": str(store)})
        plan = prepare(recipe, text)
        _thread_lock_for_tqdm()
        # the store's own dask graphs run here, not as tasks of the cluster the point
        # runs on (a worker would otherwise make a client of its own for them)
        with scoped_threads(threads if threads > 0 else None), \
                dask.config.set(scheduler="synchronous"):
            result = run_recipe(plan, progress=False, echo=lambda m: None).store
            finished = is_finished(result.path, text)
        failures = result.attrs.get("failures") or {}
        if not finished:
            reason = "; ".join(f"{k}: {v}" for k, v in failures.items()) or "analyses missing"
            return {"status": "failed", "reason": reason[:2000],
                    "seconds": time.perf_counter() - t0}
        return {"status": "done", "reason": "", "seconds": time.perf_counter() - t0}
    except StoreLockedError as exc:
        status, reason = "running", str(exc)
    except AwchError as exc:
        reason = f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        reason = io_error_message(exc, store, kept="The analyses already marked done are "
                                  "intact", move="", resume="run the sweep again to resume")
    except Exception as exc:  # noqa: BLE001 - any failure of a point is reported, not raised
        reason = failure_reason(exc)
    return {"status": status, "reason": reason[:2000], "seconds": time.perf_counter() - t0}


def _thread_lock_for_tqdm() -> None:
    """tqdm's default lock includes a multiprocessing semaphore, which a worker stopped
    while it computes leaves behind ("leaked semaphore" at exit); a thread lock will do."""
    import threading

    from tqdm import tqdm  # the base class: its lock is every progress bar's

    tqdm.set_lock(threading.RLock())


def is_finished(store: str | Path, recipe_text: str | None = None) -> bool:
    """Every (run, epoch) analysed, runs that diverged in training excepted (and, with
    ``recipe_text``, the store was made by that recipe: the same values,
    :func:`~awch_scale.run.resume.recipe_differences`)."""
    rs = ResultStore(store)
    if not rs.exists():
        return False
    ds = rs.open()
    if recipe_text is not None and recipe_differences(ds.attrs.get("recipe") or "",
                                                      recipe_text):
        return False
    return completion(ds)[2]


def default_dir(recipe_text: str) -> Path:
    """``<recipe store without .zarr>.sweep``, e.g. ``store/quickstart.sweep``."""
    from awch_scale.run.recipe import parse_recipe

    p = parse_recipe(recipe_text).store_path
    return sibling(p, ".sweep")


def plan_sweep(recipe_text: str, grid: dict[str, list], sweep_dir: Path) -> dict:
    """The manifest of a sweep: every point with its overrides, store (relative to
    ``sweep_dir``) and recipe text.

    A point whose modified recipe does not validate is ``failed`` with the reason.

    Raises:
        RecipeError: two grid values give one point name (``0.1,0.10``).
    """
    from awch_scale.run.recipe import parse_recipe

    base = parse_recipe(recipe_text, "sweep recipe")
    sweep_dir = Path(sweep_dir).resolve()
    keys = list(grid)
    short = short_keys(keys)
    points, seen = [], {}
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        name = point_name(values, short)
        if name in seen:
            raise RecipeError(f"--grid gives two points named '{name}' ({seen[name]} and "
                              f"{values}): values that read as the same YAML value (such "
                              "as 0.1 and 0.10) are one point; give each value once")
        seen[name] = values
        store = f"{name}{STORE_SUFFIX}"
        point = {"name": name, "values": values, "store": store, "status": "pending",
                 "reason": "", "seconds": None}
        try:
            point["recipe"] = _point_recipe(recipe_text, values, name, sweep_dir)
        except (AwchError, ValueError) as exc:
            point.update(status="failed", reason=f"invalid recipe: {exc}", recipe=None)
        points.append(point)
    return {"recipe_name": base.name, "recipe": recipe_text, "grid": grid, "keys": keys,
            "short": short, "points": points}


def _point_recipe(recipe_text: str, values: dict, name: str, sweep_dir: Path) -> str:
    """The point's recipe text, its ``store`` relative to the sweep directory; for a
    store that an earlier version wrote with its absolute path, that text (so it
    resumes instead of being refused as made by a different recipe)."""
    store = Path(f"{name}{STORE_SUFFIX}")
    text = apply_overrides(recipe_text, values, name=name, store=store)
    existing = ResultStore(sweep_dir / store)
    if existing.exists():
        legacy = apply_overrides(recipe_text, values, name=name, store=sweep_dir / store)
        if (existing.group_attrs() or {}).get("recipe") == legacy:
            return legacy
    return text


def connect(scheduler: str, timeout: float | None = None):
    """A ``distributed.Client`` of the scheduler at ``scheduler``.

    Raises:
        AwchError: it does not answer within ``timeout`` seconds (default
            :data:`CONNECT_TIMEOUT`), or the address is not one.
    """
    from distributed import Client

    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    try:
        return Client(scheduler, timeout=timeout)
    except (OSError, ValueError, TypeError) as exc:
        raise AwchError(f"--scheduler {scheduler}: no dask scheduler answered within "
                        f"{timeout:g} s ({exc}); start it (dask scheduler), fix the "
                        "address, or leave out --scheduler to use a LocalCluster. Nothing "
                        "was written") from None


def run_sweep(recipe_text: str, grid: dict[str, list], sweep_dir: str | Path, *,
              scheduler: str | None = None, workers: int | None = None,
              echo: Callable[[str], None] = print) -> dict:
    """Run every unfinished point of the grid on dask.distributed; returns the manifest.

    Everything that can be checked is checked before anything is written: the grid
    (every point validated, no two points with one name), ``workers``, and that the
    scheduler answers.

    Args:
        recipe_text: the base recipe (YAML text).
        grid: dotted recipe key -> values (:func:`parse_grid`).
        sweep_dir: folder for the manifest, the point recipes and the point stores.
        scheduler: address of a running dask scheduler (``tcp://host:8786``); default: a
            ``LocalCluster`` of ``workers`` processes with one thread each; ``inline``:
            no dask, the points one after another in this process (debugging, tests).
        workers: LocalCluster size, at least 1 (default: ``min(points to run,
            os.cpu_count())``).
        echo: progress lines (one per finished point, with done/failed counts).

    Raises:
        RecipeError: the grid gives no valid point, or two points with one name.
        AwchError: ``workers`` < 1, the scheduler does not answer, or another sweep
            writes the sweep directory (:class:`~awch_scale.results.lock.StoreLockedError`).
        OSError: the manifest or a point recipe cannot be written (a full disk); the
            points already done are intact.
    """
    sweep_dir = Path(sweep_dir).resolve()
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise AwchError(f"--workers {workers!r} must be a positive integer (LocalCluster "
                        "worker processes)")
    manifest = plan_sweep(recipe_text, grid, sweep_dir)
    if all(p["status"] == "failed" for p in manifest["points"]):
        # no point is a valid recipe: the grid itself is wrong (an unknown key, or values
        # of the wrong kind); refused before anything is written
        raise RecipeError(f"no point of the grid is a valid recipe; the first: "
                          f"{manifest['points'][0]['reason'][:500]}")
    client = connect(scheduler) if scheduler and scheduler != "inline" else None
    try:
        with StoreLock(sweep_dir, what="sweep directory"):
            _run_points(manifest, sweep_dir, scheduler, client, workers, echo)
    finally:
        if client is not None:
            client.close()
    return manifest


def _recorded_seconds(sweep_dir: Path) -> dict:
    """Point name -> the seconds the sweep's manifest recorded for it (none when there is
    no readable manifest): a re-run keeps them for the points it skips."""
    try:
        points = read_manifest(sweep_dir)["points"]
    except AwchError:  # no manifest yet, or a damaged one (rewritten by this run)
        return {}
    return {p["name"]: p.get("seconds") for p in points}


def _run_points(manifest, sweep_dir, scheduler, client, workers, echo) -> None:
    recorded = _recorded_seconds(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for point in manifest["points"]:
        if point["status"] == "failed":
            echo(f"{point['name']}: failed: {point['reason']}")
            continue
        (sweep_dir / f"{point['name']}.yaml").write_text(point["recipe"])
        if is_finished(point_store(sweep_dir, point), point["recipe"]):
            point.update(status="done", reason="", skipped=True,
                         seconds=recorded.get(point["name"]))
            # a worker stopped after the point's last analysis leaves its lock: stale
            StoreLock(point_store(sweep_dir, point)).clear_stale()
            echo(f"{point['name']}: already finished, skipped")
        else:
            todo.append(point)
    _write_manifest(sweep_dir, manifest)
    total = len(manifest["points"])
    if todo and scheduler == "inline":
        for i, point in enumerate(todo):
            echo(f"[{i + 1}/{len(todo)}] {point['name']}: running")
            point.update(run_point(point["recipe"], point_store(sweep_dir, point), threads=0))
            echo(f"[{i + 1}/{len(todo)}] {point['name']}: {point['status']} {point['reason']}")
            _write_manifest(sweep_dir, manifest)
    elif todo:
        _run_on_dask(todo, manifest, sweep_dir, client, workers, echo, total)
    counts = {s: sum(p["status"] == s for p in manifest["points"])
              for s in ("done", "failed", "running")}
    running = f", {counts['running']} being written by another process" \
        if counts["running"] else ""
    echo(f"sweep {sweep_dir}: {counts['done']} done, {counts['failed']} failed{running} of "
         f"{total} points")


def _run_on_dask(todo, manifest, sweep_dir, client, workers, echo, total) -> None:
    """Run ``todo`` on ``client``, or on a LocalCluster started here.

    The LocalCluster's processes are started with SIGINT, SIGTERM and SIGHUP blocked (a
    terminal's Ctrl-C reaches its whole process group): this process alone handles them
    (:mod:`awch_scale.run.signals`) and closes the cluster, which stops its workers; a
    point cut short that way leaves a stale lock, taken over by the next run.
    """
    from distributed import Client, LocalCluster, as_completed

    from awch_scale.run.signals import blocked_signals

    logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster, futures = None, {}
    try:
        if client is None:
            n = workers or max(1, min(len(todo), os.cpu_count() or 1))
            with blocked_signals():  # inherited by the cluster's threads and processes
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.CRITICAL)
                client = Client(cluster)
        futures = {client.submit(run_point, p["recipe"], str(point_store(sweep_dir, p)),
                                 key=f"awch-point-{p['name']}", pure=False): p for p in todo}
        n_workers = len(client.scheduler_info().get("workers", {}))
        echo(f"submitted {len(todo)} point(s) to {n_workers} worker(s): "
             f"{_in_flight(client, futures)}")
        for future in as_completed(futures):
            point = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker fails its point only
                result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:2000],
                          "seconds": None}
            point.update(result)
            n_done = sum(p["status"] == "done" for p in manifest["points"])
            n_failed = sum(p["status"] == "failed" for p in manifest["points"])
            secs = f" in {result['seconds']:.1f} s" if result.get("seconds") else ""
            line = f"[{n_done + n_failed}/{total}, {n_done} done, {n_failed} failed] " \
                   f"{point['name']}: {result['status']}{secs}"
            echo(line + (f": {result['reason']}" if result["status"] != "done" else "")
                 + f" ({_in_flight(client, futures)})")
            _write_manifest(sweep_dir, manifest)
    except BaseException:
        # interrupted or failing: the cluster's shutdown warnings (workers stopped while
        # they compute) are expected, not news
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        if cluster is not None and futures:
            client.cancel(list(futures))
        raise
    finally:
        if cluster is not None:
            client.close()
            cluster.close()


def _in_flight(client, futures: dict) -> str:
    """``r running, w waiting``: the sweep's points the scheduler is computing now (its
    ``processing`` table) and those not started yet."""
    keys = {f.key for f in futures if not f.done()}
    try:
        processing = client.processing()
    except Exception:  # noqa: BLE001  (a scheduler that does not answer: counts unknown)
        return f"{len(keys)} not finished"
    running = len(keys & {k for tasks in processing.values() for k in tasks})
    return f"{running} running, {len(keys) - running} waiting"
