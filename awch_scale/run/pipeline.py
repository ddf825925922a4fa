"""``awch-scale analyze``: recipe -> data -> training -> analysis of each checkpoint -> store.

Everything that can be wrong with a recipe (schema, data root, target layer, k, batch
size) is checked by :func:`prepare` before anything is written. :func:`run_recipe`
then resumes where an earlier, interrupted call stopped: runs whose checkpoints exist
are not retrained, and analyses whose ``done`` flag is set are skipped.

Several processes (``awch-scale analyze RECIPE --nproc N``, or torchrun; a
:class:`~awch_scale.world.World` of size > 1 passed to :func:`run_recipe`): rank 0
alone takes the lock, opens and writes the store and trains; the other ranks wait for
its commands. For each pending analysis rank 0 broadcasts (seed, epoch, checkpoint
SHA-256), every rank loads the same checkpoint and runs the same
:func:`~awch_scale.analysis.checkpoint.analyze_checkpoint` with the World (each streamed pass sums
this rank's chunks and all-reduces, see analysis.py), and the ranks exchange the outcome
(:func:`_agreed`): rank 0 writes the dataset, or records the failure every rank met.
A failure of one rank alone (or a rank that vanished) ends the whole run
(:class:`~awch_scale.world.RankLost`); the store stays as crash-safe as after a
kill (finished analyses are kept, the next run resumes).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import zarr

from awch_scale._version import __version__
from awch_scale.analysis.checkpoint import analyze_checkpoint
from awch_scale.analysis.validation import (
    DataFacts,
    SettingsError,
    TargetFacts,
    check_analysis,
    parse_device,
)
from awch_scale.errors import AwchError, CheckpointError, RecipeError, TargetError
from awch_scale.model.architectures import build_model
from awch_scale.model.problem import resolve_block
from awch_scale.results.faults import fault_point
from awch_scale.results.lock import StoreLock
from awch_scale.results.store import ResultStore, package_versions, sibling
from awch_scale.run.data import DataBundle, load_data
from awch_scale.run.recipe import Recipe
from awch_scale.run.training import train
from awch_scale.world import RankLost, World, grace_seconds

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_CURVES = ("train_loss", "train_acc", "test_loss", "test_acc", "grad_norm")


@dataclass
class Plan:
    """A validated recipe with its data and resolved settings."""

    recipe: Recipe
    text: str
    data: DataBundle
    device: torch.device
    dtype: torch.dtype
    block_sizes: dict[str, int]

    @property
    def store(self) -> ResultStore:
        """The recipe's result store."""
        return ResultStore(self.recipe.store_path)

    @property
    def checkpoint_root(self) -> Path:
        """Checkpoints live next to the store: ``<store>.ckpt/run-<seed>/epoch-<e>.pt``."""
        p = self.recipe.store_path
        return sibling(p, ".ckpt")

    def new_model(self, seed: int) -> torch.nn.Module:
        """A fresh model of the recipe's architecture, initialised from ``seed``."""
        torch.manual_seed(seed)
        return build_model(self.recipe.model, self.data.input_shape)


def prepare(recipe: Recipe, text: str) -> Plan:
    """Check everything that can be checked before writing; raise AwchError otherwise.

    The analysis settings are checked by :func:`awch_scale.analysis.validation.check_analysis`,
    the same validator :func:`analyze_checkpoint` runs, against the data and the
    targets of an untrained model of the recipe's architecture.
    """
    device = parse_device(recipe.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError("recipe 'device': cuda was requested but no CUDA device is available; "
                          "allowed: auto, cpu, cuda")
    data = load_data(recipe.data)
    check_model_size(recipe, data.input_shape)
    torch.manual_seed(0)
    model = build_model(recipe.model, data.input_shape)
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    facts, sizes = [], {}
    for target in recipe.analysis.targets:
        try:
            names, linear = resolve_block(model, target)
        except TargetError as exc:
            raise RecipeError(f"recipe 'analysis.target': {exc}") from None
        sizes[target] = sum(params[n].numel() for n in names)
        d_out = modules[linear].out_features if linear is not None else None
        facts.append(TargetFacts(target, sizes[target], linear is not None, d_out))
    try:
        check_analysis(recipe.analysis.settings(), facts,
                       DataFacts.from_labels(data.y_analysis, n_train=data.n_train),
                       batch_size=recipe.train.batch_size)
    except SettingsError as exc:
        raise RecipeError(f"recipe {exc}") from None
    return Plan(recipe, text, data, device, _DTYPES[recipe.dtype], sizes)


def check_store_path(path: Path) -> None:
    """Refuse a store path that is a file, a folder that is not a store, or not writable,
    before anything is trained or computed."""
    if path.exists() and not path.is_dir():
        raise AwchError(f"store path {path} is a file, not an awch-scale store; set 'store' "
                        "(or --store) to a new folder")
    if path.is_dir() and not (path / "zarr.json").exists() and any(path.iterdir()):
        raise AwchError(f"store path {path} is a folder that is not an awch-scale store "
                        "(no zarr.json); choose a new or empty folder")
    parent = path.parent
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise AwchError(f"cannot write the store at {path}: {blocker} is a file, not a "
                        "folder; choose a writable location")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".{path.name}.write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise AwchError(f"cannot write the store at {path}: {exc.strerror or exc} "
                        f"({parent}); choose a writable location") from None


MAX_MODEL_FRACTION = 0.25
"""A model's parameters may take at most this fraction of the machine's memory (training
needs the weights, their gradients and the analysis copies several times over)."""


def check_model_size(recipe: Recipe, input_shape) -> None:
    """Refuse, before allocating it, a model whose parameters cannot fit in memory."""
    m = recipe.model
    n_in = int(np.prod(input_shape))
    if m.arch == "fc":
        n = n_in * m.width + m.width * m.width + m.width * m.output_dim
    elif m.arch == "mlp":
        n = n_in * m.hidden + m.hidden * m.width + m.width * m.width + m.width * m.output_dim
    else:  # cnn: fixed convolutions (< 1e6 weights) plus the head
        n = 10**6 + 128 * m.width + m.width * m.output_dim
    need = n * (8 if recipe.dtype == "float64" else 4)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > MAX_MODEL_FRACTION * total:
        raise RecipeError(
            f"recipe 'model' has about {n:.3g} parameters ({need / 2**30:.1f} GiB in "
            f"{recipe.dtype}), more than {MAX_MODEL_FRACTION:.0%} of this machine's "
            f"{total / 2**30:.0f} GiB; lower model.width or model.hidden")


def _open_store(plan: Plan) -> ResultStore:
    store = plan.store
    if store.exists():
        # zarr.json itself: no xarray decoding of a foreign group; a missing array is
        # recreated by the run (_reset_damaged), so only the group is checked here
        ResultStore.for_reading(store.path, check_arrays=False)
        if store.group_attrs().get("recipe") != plan.text:
            raise AwchError(
                f"store {store.path} was made by a different recipe text; to resume, run the "
                "same recipe, or set 'store' to a new path (or delete the old store)"
            )
        return store
    r = plan.recipe
    store.create(
        seeds=r.runs.seeds, epochs=r.analysis.epochs, n_train_epochs=r.train.epochs,
        attrs={
            "recipe": plan.text, "recipe_name": r.name, "awch_scale_version": __version__,
            "versions": package_versions(), "device": str(plan.device),
            "device_name": _device_name(plan.device), "dtype": r.dtype,
            "start_time": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "loss": r.loss, "batch_size": r.train.batch_size, "k": r.analysis.k,
            "n_fit": r.n_fit, "targets": r.analysis.targets,
            "D": [plan.block_sizes[t] for t in r.analysis.targets],
            "n_analysis": plan.data.n_analysis, "failures": {},
        },
    )
    return store


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine()


def _checkpoint(plan: Plan, seed: int, epoch: int) -> Path:
    return plan.checkpoint_root / f"run-{seed}" / f"epoch-{epoch:05d}.pt"


def _train_run(plan: Plan, store: ResultStore, i: int, seed: int, progress: bool) -> bool:
    """Train run i (unless its checkpoints exist); returns False if it diverged."""
    r = plan.recipe
    ds = store.open()
    ckpts = [_checkpoint(plan, seed, e) for e in r.analysis.epochs]
    if bool(ds.trained.values[i]):
        if bool(ds.failed.values[i]):
            return False
        if all(p.exists() for p in ckpts):
            return True
    model = plan.new_model(seed)
    res = train(model, plan.data, r.train, r.loss, seed, r.analysis.epochs,
                ckpts[0].parent, plan.device, plan.dtype, progress=progress)
    at = {}
    for name in _CURVES:
        curve = np.asarray(res.history[name])
        at[name] = [curve[res.ckpt_epoch[e]] if e in res.ckpt_epoch else np.nan
                    for e in r.analysis.epochs]
    ckpt_epoch = [res.ckpt_epoch.get(e, -1) for e in r.analysis.epochs]
    if res.failed:
        _record_failure(store, str(seed), res.message)
    hashes = [file_sha256(p) if p.exists() else "" for p in ckpts]
    store.write_training(i, res.history, at, np.asarray(ckpt_epoch), res.failed, hashes)
    return not res.failed


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (checkpoints are tied to their run by it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(plan: Plan, seed: int, epoch: int, expected_sha256: str | None):
    """The state dict of (seed, epoch), refused unless it is the file written for it."""
    path = _checkpoint(plan, seed, epoch)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} is missing; delete the store to retrain")
    if expected_sha256 and file_sha256(path) != expected_sha256:
        raise CheckpointError(
            f"checkpoint {path} is not the one written for run {seed}, epoch {epoch} (its "
            "SHA-256 differs from the one recorded in the store): it was replaced or "
            "modified. Restore it, or delete the store and its checkpoints to retrain")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (torch's text advises weights_only=False)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded as a plain tensor state dict "
            f"({type(exc).__name__}: {first}); it is refused for safety") from None


def _record_failure(store: ResultStore, key: str, message: str) -> None:
    """Add ``key: message`` to the store attribute ``failures`` (key: seed or seed/epoch)."""
    failures = dict(store.attrs.get("failures", {}))
    failures[key] = message
    zarr.open_group(store.path, mode="r+").attrs["failures"] = failures
    log.error("%s failed: %s", key, message)


def analyze_one(plan: Plan, seed: int, epoch: int, progress: bool,
                expected_sha256: str | None = None, world: World | None = None) -> xr.Dataset:
    """Analyse the checkpoint of (seed, epoch) for every target; returns one dataset.

    With a ``world`` of several ranks every rank must call this with the same arguments
    (see :func:`awch_scale.analysis.checkpoint.analyze_checkpoint`); every rank returns the same
    numbers.
    """
    fault_point("analysis-start")
    model = plan.new_model(seed)
    model.load_state_dict(load_checkpoint(plan, seed, epoch, expected_sha256))
    x, y = plan.data.x_analysis, plan.data.y_analysis
    settings = plan.recipe.analysis.settings()
    results = []
    for target in plan.recipe.analysis.targets:
        results.append(analyze_checkpoint(
            model, target, x, y, loss=plan.recipe.loss, batch_size=plan.recipe.train.batch_size,
            settings=settings, seed=seed, device=plan.device, dtype=plan.dtype,
            progress=progress, world=world))
    if len(results) == 1:
        return results[0]
    return xr.concat(results, dim="layer", coords="minimal", compat="override").assign_coords(
        layer=plan.recipe.analysis.targets)


@dataclass
class RunSummary:
    """What one ``run_recipe`` call left in the store."""

    store: ResultStore
    n_analyses: int
    n_done: int
    failures: dict[str, str]

    @property
    def ok(self) -> bool:
        """Every analysis done and nothing failed."""
        return self.n_done == self.n_analyses and not self.failures


def run_recipe(plan: Plan, *, progress: bool = True, echo=print,
               repair: bool = False, world: World | None = None) -> RunSummary | None:
    """Run (or resume) every training run and checkpoint analysis of a prepared recipe.

    Holds the store's lock (:class:`awch_scale.results.lock.StoreLock`) throughout. Finished
    analyses are skipped after a cheap integrity check (their chunks exist); with
    ``repair`` every chunk is read and checksummed first, and the damaged analyses (and
    runs whose training records are damaged) are redone.

    Args:
        plan: the prepared recipe (every rank prepares its own, from the same file).
        progress: show progress bars (pass False on ranks > 0).
        echo: where the one-line progress messages go.
        repair: checksum every chunk first and redo the damaged analyses.
        world: several processes (module docstring); None or size 1 is the one-process
            path. Every rank calls this; rank 0 returns the summary, the others None.

    Raises:
        RankLost: with a ``world``, another rank failed alone or vanished.
    """
    if world is not None and world.size > 1:
        return _lead(plan, world, progress, echo, repair) if world.is_main else \
            _follow(plan, world)
    check_store_path(plan.recipe.store_path)
    with StoreLock(plan.recipe.store_path):
        store = _open_store(plan)
        _reset_damaged(store, repair, echo)
        return _run(plan, store, progress, echo)


_STOP = ("stop",)
"""Rank 0's command that ends the other ranks' wait."""


def _lead(plan: Plan, world: World, progress: bool, echo, repair: bool) -> RunSummary:
    """Rank 0: the one-process path, with each analysis shared with the other ranks."""

    sent = [0]  # commands sent so far (the followers count the same)

    def command(what: tuple) -> str:
        key = f"command/{sent[0]}"
        world.broadcast_object(key, what)
        sent[0] += 1
        return key

    def analyze(plan, seed, epoch, progress, expected_sha256=None):
        key = command(("analyze", seed, epoch, expected_sha256))
        return _agreed(world, key, lambda: analyze_one(plan, seed, epoch, progress,
                                                       expected_sha256, world=world))

    stop = True
    try:
        check_store_path(plan.recipe.store_path)
        with StoreLock(plan.recipe.store_path):
            store = _open_store(plan)
            _reset_damaged(store, repair, echo)
            return _run(plan, store, progress, echo, analyze=analyze)
    except (RankLost, KeyboardInterrupt):
        stop = False  # the other ranks may be inside a collective: do not talk to them
        raise
    finally:
        if stop:  # the other ranks wait for a command: let them end
            try:
                command(_STOP)
            except Exception as exc:  # noqa: BLE001  (already failing or finished)
                log.warning("could not tell the other processes to stop: %s", exc)


def _follow(plan: Plan, world: World) -> None:
    """Ranks > 0: run the analyses rank 0 announces until it says stop."""
    _warm_up()
    for n in itertools.count():
        key = f"command/{n}"
        command = world.broadcast_object(key)
        if command[0] != "analyze":
            return
        _, seed, epoch, sha = command
        try:
            _agreed(world, key, lambda seed=seed, epoch=epoch, sha=sha: analyze_one(
                plan, seed, epoch, False, sha, world=world))
        except AnalysisFailed:
            pass  # rank 0 records it


def _warm_up() -> None:
    """torch.func's one-time forward-mode initialisation (about a second per process),
    done while rank 0 trains instead of inside this rank's first analysis, where rank 0
    would wait for it at the next all-reduce."""
    from torch.func import grad, hessian, jvp, vmap

    def f(z):
        return (z.sin() ** 2).sum()

    z = torch.ones(2, 3, dtype=torch.float64)
    vmap(lambda zz: jvp(grad(f), (zz,), (zz,))[1])(z)
    vmap(hessian(f))(z)


class AnalysisFailed(AwchError):
    """One analysis failed on some rank(s) while all ranks stayed in step (recorded as
    that analysis's failure, as in a one-process run)."""


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, AwchError) else f"{type(exc).__name__}: {exc}"


def _agreed(world: World, key: str, compute):
    """Run one analysis on every rank and agree on its outcome.

    Every rank reports (failure reason or None, a digest of its numbers). A rank whose
    analysis failed waits at most :func:`~awch_scale.world.grace_seconds` for the
    others: a failure all ranks meet (the same numbers fail the same check) arrives
    everywhere; one rank's own failure leaves the others inside a collective, and the
    run is given up.

    Returns:
        The dataset (identical numbers on every rank).

    Raises:
        AnalysisFailed: the analysis failed on some rank(s), all ranks still in step.
        RankLost: the other ranks did not arrive (the run cannot go on).
    """
    try:
        ds, mine = compute(), None
    except KeyboardInterrupt:
        raise
    except RankLost:
        raise
    except Exception as exc:  # noqa: BLE001  (agreed on below)
        ds, mine = None, _reason(exc)
    if mine is not None:
        grace = grace_seconds()
        try:
            everyone = world.exchange(f"{key}/outcome", (mine, None), timeout=grace)
        except RankLost:
            raise RankLost(f"its analysis failed ({mine[:1000]}) and the other "
                           f"processes did not reach the end of this analysis within "
                           f"{grace:g} s (AWCH_DIST_GRACE): they are blocked in a step it "
                           "left, so the run cannot go on") from None
    else:
        everyone = world.exchange(f"{key}/outcome", (None, _digest(ds)))
    failed = [(r, why) for r, (why, _) in enumerate(everyone) if why is not None]
    if failed:
        if len(failed) == world.size and len({why for _, why in failed}) == 1:
            raise AnalysisFailed(failed[0][1])  # every rank met the same failure
        raise AnalysisFailed("; ".join(f"process {r} of {world.size}: {why}"
                                       for r, why in failed))
    digests = [d for _, d in everyone]
    if not all(_same_digest(d, digests[0]) for d in digests[1:]):
        raise AnalysisFailed(f"the {world.size} processes disagree on the results "
                             f"({digests}); they should receive the same reduced sums")
    return ds


def _digest(ds: xr.Dataset) -> tuple:
    """(n_hvp, hess_eigval) of an analysis: the ranks compare them (:func:`_agreed`)."""
    return (np.asarray(ds["n_hvp"].values).tolist(),
            np.asarray(ds["hess_eigval"].values, dtype=np.float64).ravel().tolist())


def _same_digest(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and np.allclose(a[1], b[1], rtol=1e-9, atol=0, equal_nan=True)


def _reset_damaged(store: ResultStore, repair: bool, echo) -> None:
    damage = store.verify(read=repair)
    if not damage:
        return
    from awch_scale.results.store import ARRAY_MISSING
    from awch_scale.variables import VARIABLES

    per_analysis = {(d.run, d.epoch) for d in damage if d.epoch is not None}
    per_run = {d.run for d in damage if d.run is not None and d.epoch is None}
    # an analysis variable whose whole array is gone is recreated by the next write of
    # any analysis: every analysis marked done is redone (training is kept)
    lost = [d for d in damage if d.variable in VARIABLES and d.reason == ARRAY_MISSING]
    if lost:
        done = store.done()
        per_analysis |= {(int(r), int(e)) for r, e in zip(*np.nonzero(done), strict=True)}
    other = [d for d in damage if d.run is None and d not in lost]
    if other:
        raise AwchError(f"store {store.path} has damaged metadata or coordinates "
                        f"({'; '.join(d.variable + ': ' + d.reason for d in other)[:500]}); "
                        "it cannot be repaired in place: delete it and run again")
    if per_analysis or per_run:
        what = ", ".join(sorted({d.variable for d in damage}))
        echo(f"store: {len(per_analysis)} analysis slot(s) and {len(per_run)} run record(s) "
             f"damaged or incomplete ({what}); redoing them")
    for run, epoch in sorted(per_analysis):
        store.set_done(run, epoch, False)
    for run in sorted(per_run):
        store.set_trained(run, False)


def _run(plan: Plan, store: ResultStore, progress: bool, echo, analyze=None) -> RunSummary:
    analyze = analyze or analyze_one  # looked up now (tests replace analyze_one)
    r = plan.recipe
    failures: dict[str, str] = {}
    for i, seed in enumerate(r.runs.seeds):
        done = store.done()[i]
        if done.all():
            echo(f"run {seed}: all {len(done)} analyses already in the store")
            continue
        if not _train_run(plan, store, i, seed, progress):
            failures[str(seed)] = store.attrs.get("failures", {}).get(str(seed),
                                                                       "training diverged")
            echo(f"run {seed}: training diverged; see the store attribute 'failures'")
            continue
        hashes = store.checkpoint_hashes()[i]
        for j, epoch in enumerate(r.analysis.epochs):
            if done[j]:
                echo(f"run {seed}, epoch {epoch}: already done, skipped")
                continue
            try:
                ds = analyze(plan, seed, epoch, progress, expected_sha256=hashes[j] or None)
            except (KeyboardInterrupt, RankLost):
                raise
            except Exception as exc:  # noqa: BLE001  (recorded as this analysis's failure)
                reason = str(exc) if isinstance(exc, AwchError) else \
                    f"{type(exc).__name__}: {exc}"
                failures[f"{seed}/{epoch}"] = reason
                _record_failure(store, f"{seed}/{epoch}", reason)
                echo(f"run {seed}, epoch {epoch}: analysis failed, not marked done: {reason}")
                continue
            store.write_analysis(i, j, ds)
            _clear_failure(store, f"{seed}/{epoch}")
            g = ds["gamma"].sel(estimator="covar").values
            echo(f"run {seed}, epoch {epoch}: lambda_1 = {ds.hess_eigval.values.ravel()[0]:.4g}, "
                 f"gamma_emp = {np.ravel(g)[0]:.3f}")
    done = store.done()
    return RunSummary(store, int(done.size), int(done.sum()), failures)


def _clear_failure(store: ResultStore, key: str) -> None:
    failures = dict(store.attrs.get("failures", {}))
    if key in failures:
        del failures[key]
        zarr.open_group(store.path, mode="r+").attrs["failures"] = failures
