"""Several processes for one ``awch-scale analyze``: ``--nproc N`` (:func:`analyze_nproc`
starts the ranks with :func:`awch_scale.run.launcher.launch`) or torchrun
(:func:`analyze_torchrun`, one rank per call). Each rank runs :func:`analyze_rank`:
rank 0 trains and writes, every rank shares each analysis (:mod:`awch_scale.run.ranks`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from awch_scale.errors import AwchError
from awch_scale.run.plan import load_plan
from awch_scale.run.ranks import combined_reason
from awch_scale.run.runner import run_recipe

NPROC_PER_CORE = 4
"""``--nproc`` may be at most this many times the cores this process may run on."""


def torchrun_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when unset or not a number)."""
    try:
        return int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        return 1


def torchrun_rank() -> int:
    """RANK as torchrun sets it (0 when unset)."""
    return int(os.environ.get("RANK", "0"))


def check_nproc(nproc: int) -> None:
    """Refuse an ``--nproc`` outside 1 to :data:`NPROC_PER_CORE` x the usable cores."""
    from awch_scale.threads import available_cores

    cores = available_cores()
    if not 1 <= nproc <= NPROC_PER_CORE * cores:
        raise AwchError(f"--nproc {nproc} is out of range: allowed 1 to "
                        f"{NPROC_PER_CORE * cores} ({NPROC_PER_CORE} x the {cores} core(s) "
                        "this process may use)")


def analyze_nproc(recipe: Path, store: Path | None, nproc: int, *, threads: int | None,
                  progress: bool, repair: bool, echo: Callable[[str], None],
                  device: str | None = None) -> dict:
    """``analyze --nproc N``: check the recipe here, then run N ranks of
    :func:`analyze_rank` (:func:`~awch_scale.run.launcher.launch`).

    Args:
        recipe: the recipe file.
        store: ``--store``, replacing the recipe's store when given.
        nproc: the number of processes.
        threads: torch threads per process (default: the recipe's, or the idle cores
            divided among the processes).
        progress: show rank 0's progress bars.
        repair: checksum every chunk first and redo the damaged analyses.
        echo: where the recipe line goes.
        device: ``--device``, replacing the recipe's device when given.

    Returns:
        Rank 0's summary (:meth:`~awch_scale.run.runner.RunSummary.as_dict`).

    Raises:
        AwchError: ``nproc`` out of range, or an input error (before any process starts);
            or a rank failed or died (:func:`launch_failure`; the others were stopped).
        Interrupted: a signal (the ranks got it too and ended; see
            :func:`~awch_scale.run.launcher.launch`).
    """
    import torch

    from awch_scale.run.launcher import LaunchError, launch
    from awch_scale.threads import auto_threads

    check_nproc(nproc)
    plan = load_plan(recipe, store, device)  # input errors exit 2 before any process starts
    cuda = plan.device.type == "cuda"
    if cuda and nproc > torch.cuda.device_count():
        raise AwchError(f"--nproc {nproc} on device cuda needs {nproc} GPUs (one per "
                        f"process); {torch.cuda.device_count()} found: lower --nproc or "
                        "set device: cpu")
    per_rank = threads or plan.recipe.analysis.threads or max(1, auto_threads() // nproc)
    echo(f"{plan.describe()}, {nproc} processes x {per_rank} thread(s)")
    del plan  # every rank loads its own
    try:
        # analyze_rank's positional arguments; announce False: the recipe line is printed
        return launch(analyze_rank, nproc, recipe, store, per_rank, progress, repair,
                      False, device, backend="nccl" if cuda else "gloo")
    except LaunchError as exc:
        raise launch_failure(exc, nproc) from None


def launch_failure(exc, nproc: int) -> AwchError:
    """The one-paragraph error of a failed ``--nproc`` run (a
    :class:`~awch_scale.run.launcher.LaunchError`): an input or store error as it is, an
    I/O error as :func:`~awch_scale.run.failures.io_error_message`, else which process
    failed and how."""
    from awch_scale.run.failures import io_error_message

    if exc.kind == "error":
        return AwchError(exc.message)
    if exc.kind == "os":
        return AwchError(io_error_message(OSError(exc.errno, exc.message, exc.filename)))
    return AwchError(f"process {exc.rank} of {nproc} failed: {exc.message}. The other "
                     "processes were stopped; the analyses already marked done are "
                     "intact: fix the cause and run the same command again to resume")


def analyze_torchrun(recipe: Path, store: Path | None, *, threads: int | None,
                     progress: bool, repair: bool, device: str | None = None) -> dict | None:
    """One rank under torchrun (WORLD_SIZE > 1): join the others, :func:`analyze_rank`
    (announcing the recipe on rank 0), leave. Rank 0 returns the summary, the others None.

    Args:
        recipe: the recipe file (every rank reads the same file).
        store: ``--store``, replacing the recipe's store when given.
        threads: torch threads of this process (default: the recipe's, or the idle cores
            divided among this node's processes).
        progress: show rank 0's progress bars.
        repair: checksum every chunk first and redo the damaged analyses.
        device: ``--device``, replacing the recipe's device when given.

    Raises:
        AwchError: an input error (raised on every rank; rank 0 reports it).
        RankLost: another rank failed alone or vanished.
    """
    import torch.distributed as dist

    from awch_scale.analysis.validation import parse_device
    from awch_scale.run.recipe import load_recipe
    from awch_scale.world import World

    r, _ = load_recipe(recipe)  # every rank reads the same file: rank 0 reports
    try:
        cuda = parse_device(device or r.device).type == "cuda"
    except (AwchError, ValueError):  # not a device: load_plan reports it on every rank
        cuda = False
    if cuda:
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) %
                              max(1, torch.cuda.device_count()))
    world = World.from_env("nccl" if cuda else "gloo")
    summary = analyze_rank(world, recipe, store, threads, progress, repair, announce=True,
                           device=device)
    if dist.is_initialized():
        dist.destroy_process_group()
    return summary


def analyze_rank(world, recipe: Path, store: Path | None, threads: int | None,
                 progress: bool, repair: bool, announce: bool = False,
                 device: str | None = None) -> dict | None:
    """One rank of ``analyze --nproc`` / torchrun: prepare, then :func:`run_recipe` with
    the World. Rank 0 returns how it ended (a dict), the others None.

    Every rank prepares the recipe (loads its data) itself; the ranks then agree: if any
    failed, rank 0 raises an AwchError naming the failures and the others return None.
    With ``announce`` rank 0 prints the recipe line first (torchrun: no parent does).
    """
    import threading

    from tqdm.auto import tqdm

    from awch_scale.threads import auto_threads, set_threads

    # tqdm's default lock includes a multiprocessing semaphore, which a rank stopped by
    # the launcher leaves behind ("leaked semaphore" at exit); the bars are per process
    tqdm.set_lock(threading.RLock())
    if not world.is_main:
        logging.getLogger().setLevel(logging.ERROR)  # rank 0 says it once
        import warnings

        warnings.simplefilter("ignore")
    try:
        plan, why = load_plan(recipe, store, device), None
    except AwchError as exc:
        plan, why = None, str(exc)
    failed = [(r, w) for r, w in enumerate(world.exchange("prepare", why)) if w is not None]
    if failed:
        if not world.is_main:
            return None
        raise AwchError(combined_reason(failed, world.size, of_size=False))
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or world.size)
    n_threads = set_threads(threads or plan.recipe.analysis.threads or
                            max(1, auto_threads() // local))
    console = Console(stderr=True)
    if announce and world.is_main:
        console.print(f"{plan.describe()}, {world.size} processes x {n_threads} thread(s)",
                      highlight=False)
    result = run_recipe(plan, progress=progress and world.is_main, repair=repair,
                        echo=lambda m: console.print(m, highlight=False), world=world)
    if result is None:
        return None
    return result.as_dict()
