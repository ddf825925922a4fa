"""The rank protocol of a multi-process ``analyze`` (a :class:`~awch_scale.world.World`
of size > 1, see :func:`awch_scale.run.runner.run_recipe`).

Rank 0 alone takes the lock, opens and writes the store and trains (:func:`lead`); the
other ranks wait for its commands (:func:`follow`). For each pending analysis rank 0
broadcasts (seed, epoch, checkpoint SHA-256), every rank loads the same checkpoint and
runs the same :func:`~awch_scale.analysis.checkpoint.analyze_checkpoint` with the World
(each streamed pass sums this rank's chunks and all-reduces), and the ranks exchange the
outcome (:func:`agreed`): rank 0 writes the dataset, or records the failure every rank
met. A failure of one rank alone (or a rank that vanished) ends the whole run
(:class:`~awch_scale.world.RankLost`); the store stays as crash-safe as after a kill
(finished analyses are kept, the next run resumes).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
import xarray as xr

from awch_scale.errors import AwchError
from awch_scale.run.failures import failure_reason
from awch_scale.world import RankLost, World, grace_seconds

log = logging.getLogger(__name__)

T = TypeVar("T")

_STOP = ("stop",)
"""Rank 0's command that ends the other ranks' wait."""


def lead(world: World, run: Callable[[Callable], T], analyze: Callable) -> T:
    """Rank 0: the one-process run, with each analysis shared with the other ranks.

    Args:
        world: the processes (this is rank 0).
        run: the whole one-process run, given the function it analyses one checkpoint
            with: ``run(shared)`` where ``shared(plan, seed, epoch, progress,
            expected_sha256=None)`` returns the dataset.
        analyze: ``analyze(plan, seed, epoch, progress, expected_sha256)``, this rank's
            part of one analysis (with the World).

    Returns:
        What ``run`` returns. Whatever happens, except a lost rank or Ctrl-C, the other
        ranks are told to stop afterwards.
    """
    sent = [0]  # commands sent so far (the followers count the same)

    def command(what: tuple) -> str:
        key = f"command/{sent[0]}"
        world.broadcast_object(key, what)
        sent[0] += 1
        return key

    def shared(plan, seed, epoch, progress, expected_sha256=None):
        key = command(("analyze", seed, epoch, expected_sha256))
        return agreed(world, key, lambda: analyze(plan, seed, epoch, progress,
                                                  expected_sha256))

    stop = True
    try:
        return run(shared)
    except (RankLost, KeyboardInterrupt):
        stop = False  # the other ranks may be inside a collective: do not talk to them
        raise
    finally:
        if stop:  # the other ranks wait for a command: let them end
            try:
                command(_STOP)
            except Exception as exc:  # noqa: BLE001  (already failing or finished)
                log.warning("could not tell the other processes to stop: %s", exc)


def follow(world: World, analyze: Callable) -> None:
    """Ranks > 0: run the analyses rank 0 announces until it says stop.

    Args:
        world: the processes (this is a rank > 0).
        analyze: ``analyze(seed, epoch, expected_sha256)``, this rank's part of one
            analysis (with the World).
    """
    _warm_up()
    for n in itertools.count():
        key = f"command/{n}"
        command = world.broadcast_object(key)
        if command[0] != "analyze":
            return
        _, seed, epoch, sha = command
        try:
            agreed(world, key, lambda seed=seed, epoch=epoch, sha=sha: analyze(seed, epoch, sha))
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


def combined_reason(failed: list[tuple[int, str]], size: int, *, of_size: bool = True) -> str:
    """One reason for the failures ``(rank, reason)`` of some of ``size`` ranks.

    Args:
        failed: the ranks that failed, with their reasons.
        size: the number of ranks.
        of_size: name each rank as ``process r of size`` (else ``process r``).

    Returns:
        The reason itself when every rank met the same one, else each rank's, named.
    """
    if len(failed) == size and len({why for _, why in failed}) == 1:
        return failed[0][1]
    return "; ".join(f"process {r}{f' of {size}' if of_size else ''}: {why}"
                     for r, why in failed)


def agreed(world: World, key: str, compute):
    """Run one analysis on every rank and agree on its outcome.

    Every rank reports (failure reason or None, a digest of its numbers). A rank whose
    analysis failed waits at most :func:`~awch_scale.world.grace_seconds` for the
    others: a failure all ranks meet (the same numbers fail the same check) arrives
    everywhere; one rank's own failure leaves the others inside a collective, and the
    run is given up.

    Args:
        world: the processes.
        key: the analysis's command key (the exchange is ``<key>/outcome``).
        compute: this rank's analysis, returning its dataset.

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
        ds, mine = None, failure_reason(exc)
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
        raise AnalysisFailed(combined_reason(failed, world.size))
    digests = [d for _, d in everyone]
    if not all(_same_digest(d, digests[0]) for d in digests[1:]):
        raise AnalysisFailed(f"the {world.size} processes disagree on the results "
                             f"({digests}); they should receive the same reduced sums")
    return ds


def _digest(ds: xr.Dataset) -> tuple:
    """(n_hvp, hess_eigval) of an analysis: the ranks compare them (:func:`agreed`)."""
    return (np.asarray(ds["n_hvp"].values).tolist(),
            np.asarray(ds["hess_eigval"].values, dtype=np.float64).ravel().tolist())


def _same_digest(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and np.allclose(a[1], b[1], rtol=1e-9, atol=0, equal_nan=True)
