"""``awch-scale analyze``: a prepared recipe (:mod:`awch_scale.run.plan`) -> training ->
analysis of each checkpoint -> store.

:func:`run_recipe` resumes where an earlier, interrupted call stopped: runs whose
checkpoints exist are not retrained, and analyses whose ``done`` flag is set are
skipped. With several processes (``awch-scale analyze RECIPE --nproc N``, or torchrun; a
:class:`~awch_scale.world.World` of size > 1) rank 0 runs this one-process loop and
shares each analysis with the other ranks (:mod:`awch_scale.run.ranks`).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from awch_scale._version import __version__
from awch_scale.analysis.checkpoint import analyze_checkpoint
from awch_scale.errors import AwchError
from awch_scale.results.faults import fault_point
from awch_scale.results.lock import StoreLock
from awch_scale.results.store import ResultStore, package_versions
from awch_scale.run.checkpoints import load_checkpoint, train_run
from awch_scale.run.failures import clear_failure, failure_reason, record_failure
from awch_scale.run.plan import Plan, check_store_path
from awch_scale.run.ranks import follow, lead
from awch_scale.run.resume import different_recipe_error
from awch_scale.world import RankLost, World


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

    def as_dict(self) -> dict:
        """The summary as plain values (``store`` as a path string), e.g. to return it
        from another process."""
        return {"store": str(self.store.path), "ok": self.ok, "n_done": self.n_done,
                "n_analyses": self.n_analyses, "failures": self.failures}


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
        world: several processes (:mod:`awch_scale.run.ranks`); None or size 1 is the
            one-process path. Every rank calls this; rank 0 returns the summary, the
            others None.

    Raises:
        RankLost: with a ``world``, another rank failed alone or vanished.
    """

    def run(analyze=None) -> RunSummary:
        check_store_path(plan.recipe.store_path)
        with StoreLock(plan.recipe.store_path):
            store = _open_store(plan)
            _reset_damaged(store, repair, echo)
            return _run(plan, store, progress, echo, analyze=analyze)

    if world is None or world.size == 1:
        return run()
    if not world.is_main:
        return follow(world, lambda seed, epoch, sha: analyze_one(
            plan, seed, epoch, False, sha, world=world))
    return lead(world, run, lambda plan, seed, epoch, progress, sha: analyze_one(
        plan, seed, epoch, progress, sha, world=world))


def _open_store(plan: Plan) -> ResultStore:
    store = plan.store
    if store.exists():
        # zarr.json itself: no xarray decoding of a foreign group; a missing array is
        # recreated by the run (_reset_damaged), so only the group is checked here
        ResultStore.for_reading(store.path, check_arrays=False)
        error = different_recipe_error(store.path, store.group_attrs().get("recipe"),
                                       plan.text)
        if error is not None:
            raise error
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


def _reset_damaged(store: ResultStore, repair: bool, echo) -> None:
    damage = store.verify(read=repair)
    if not damage:
        return
    from awch_scale.results.integrity import unrepairable

    per_analysis = {(d.run, d.epoch) for d in damage if d.epoch is not None}
    per_run = {d.run for d in damage if d.run is not None and d.epoch is None}
    other = unrepairable(damage)
    # an analysis variable whose whole array is gone is recreated by the next write of
    # any analysis: every analysis marked done is redone (training is kept)
    if any(d.run is None and d not in other for d in damage):
        done = store.done()
        per_analysis |= {(int(r), int(e)) for r, e in zip(*np.nonzero(done), strict=True)}
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
        if not train_run(plan, store, i, seed, progress):
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
                reason = failure_reason(exc)
                failures[f"{seed}/{epoch}"] = reason
                record_failure(store, f"{seed}/{epoch}", reason)
                echo(f"run {seed}, epoch {epoch}: analysis failed, not marked done: {reason}")
                continue
            store.write_analysis(i, j, ds)
            clear_failure(store, f"{seed}/{epoch}")
            g = ds["gamma"].sel(estimator="covar").values
            echo(f"run {seed}, epoch {epoch}: lambda_1 = {ds.hess_eigval.values.ravel()[0]:.4g}, "
                 f"gamma_emp = {np.ravel(g)[0]:.3f}")
    done = store.done()
    return RunSummary(store, int(done.size), int(done.sum()), failures)
