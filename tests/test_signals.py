"""SIGTERM and SIGHUP are handled like Ctrl-C by every command (issue 20, signals).

Real signals to real processes: ``analyze`` at a write point, ``analyze --nproc 2``
(the launcher forwards the signal to its ranks and waits for them; a launcher killed
with SIGKILL takes its ranks along), ``report`` between drawing and moving its folder
into place, a LocalCluster ``sweep`` signalled as a terminal does (its whole process
group). Each ends with one ``interrupted (SIG...)`` line, exit 128 + the signal's
number (130, 143, 129; docs/reliability.md), no traceback, no lock or temporary folder
left, and a store that the same command completes, equal to an uninterrupted run.
The other commands share the same wrapper (checked in-process).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr
from cases import analysed_recipe, run_cli, write_recipe

from awch_scale.run.signals import Interrupted

ONE_RUN = {"runs.seeds": [0], "analysis.awd": {"draws": 2, "probe": 6, "partner_batches": 2},
           "analysis.spectra": None}
STATUS = {"INT": 130, "TERM": 143, "HUP": 129}


def _env(fault=None, sig="KILL", rank=None):
    """The environment of a child process, stopped at ``fault`` by ``sig`` (in ``rank``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in [k for k in env if k.startswith("AWCH_SCALE_FAULT")]:
        env.pop(key)
    if fault:
        env.update(AWCH_SCALE_FAULT=fault, AWCH_SCALE_FAULT_SIGNAL=sig)
    if rank is not None:
        env["AWCH_SCALE_FAULT_RANK"] = str(rank)
    return env


def _cli(*args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "awch_scale", *map(str, args)],
                            env=env or _env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _clean(err: str) -> None:
    assert "Traceback" not in err and "Exception raised from" not in err, err[-3000:]


def _store(tmp_path):
    return tmp_path / "out" / "tiny.zarr"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(recipe, store) of an uninterrupted run of the one-run recipe."""
    return analysed_recipe(tmp_path_factory.mktemp("finished"), **ONE_RUN)


@pytest.fixture(scope="module")
def reference(finished):
    return xr.open_zarr(finished[1], consolidated=False).load()


def _assert_same(store, reference):
    ds = xr.open_zarr(store, consolidated=False)
    assert ds.done.values.all()
    for name in ("hess_eigval", "covar", "gamma", "curve_train_loss"):
        np.testing.assert_allclose(ds[name].values, reference[name].values, rtol=1e-10,
                                   atol=0, err_msg=name)


@pytest.mark.parametrize("sig, point", [("TERM", "analysis-written"),
                                        ("HUP", "store-created")])
def test_analyze_signal_at_a_write_point(tmp_path, reference, sig, point):
    """The process signals itself at the write point (a real signal, at a known place;
    SIGINT there is tests/test_reliability.py's): message, exit 128 + N, lock and
    temporary store folder gone; the re-run completes the store, equal to an
    uninterrupted one."""
    path = write_recipe(tmp_path, **ONE_RUN)
    proc = _cli("analyze", path, "-q", env=_env(point, sig))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == STATUS[sig], err[-2000:]
    _clean(err)
    flat = " ".join(err.split())
    assert f"interrupted (SIG{sig}): finished analyses are in the store; run the same " \
           "command again to resume" in flat
    out = tmp_path / "out"
    assert not (out / "tiny.zarr.lock").exists()
    assert not list(out.glob(".tiny.zarr.creating-*"))
    again = run_cli("analyze", str(path), "-q")
    assert again.exit_code == 0, again.output
    _assert_same(_store(tmp_path), reference)
    assert run_cli("verify", str(_store(tmp_path))).exit_code == 0


def _wait_for_stopped_lock_owner(lock, proc, timeout=240):
    """The pid in ``lock`` once that process is stopped (SIGSTOP at its fault point)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        try:
            pid = json.loads(lock.read_text())["pid"]
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "T":
                    return pid
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError("the analysis never reached its fault point")


def _children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _gone(pids, timeout=30.0):
    """Wait until none of ``pids`` runs (zombies count as gone); return those left."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for p in pids:
            try:
                with open(f"/proc/{p}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                        left.append(p)
            except OSError:
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM to the launcher", "SIGKILL to the launcher"])
def test_nproc_ranks_follow_the_launcher(tmp_path, how):
    """``analyze --nproc 2``, rank 0 paused after marking its first analysis done
    (holding the lock). SIGTERM to the launcher: it forwards the signal, waits for both ranks and
    exits 143 with one message; SIGKILL to the launcher: the kernel sends its ranks
    SIGTERM (no orphan goes on writing). Either way both ranks end, the lock is released
    and the store verifies clean and resumes."""
    path = write_recipe(tmp_path, **ONE_RUN)
    lock = tmp_path / "out" / "tiny.zarr.lock"
    proc = _cli("analyze", path, "-q", "--threads", "1", "--nproc", "2",
                env=_env("analysis-done:1", "STOP", rank=0))
    try:
        rank0 = _wait_for_stopped_lock_owner(lock, proc)
        ranks = _children(proc.pid)  # the two ranks (and multiprocessing's tracker)
        assert rank0 in ranks
        os.kill(proc.pid, signal.SIGTERM if how.startswith("SIGTERM") else signal.SIGKILL)
        time.sleep(0.3)
        os.kill(rank0, signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if how.startswith("SIGTERM"):
        assert proc.returncode == 143, err[-3000:]
        assert "interrupted (SIGTERM): finished analyses are in the store" in " ".join(
            err.split())
        _clean(err)
    else:
        assert proc.returncode == -9
    assert _gone(ranks) == [], "a rank outlived its launcher"
    assert not lock.exists()
    assert run_cli("verify", str(_store(tmp_path))).exit_code == 0
    done = xr.open_zarr(_store(tmp_path), consolidated=False).done.values
    assert done.tolist() == [[True, False]]  # the first analysis was marked done
    resumed = run_cli("analyze", str(path), "-q", "--threads", "1")
    assert resumed.exit_code == 0 and "already done, skipped" in resumed.output


@pytest.mark.slow
def test_report_interrupted_leaves_no_partial_folder(tmp_path, finished):
    """The report is complete beside --out when SIGTERM comes (fault point output-built):
    nothing at --out, no temporary folder. The hidden folder a report killed there
    leaves (its process gone) is removed by the next report."""
    _, store = finished
    out, sig = tmp_path / "rep", "TERM"
    proc = _cli("report", store, "--out", out, env=_env("output-built", sig))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == STATUS[sig], err[-2000:]
    _clean(err)
    assert f"interrupted (SIG{sig}): no report written" in " ".join(err.split())
    assert not out.exists() and list(tmp_path.iterdir()) == []
    stale = tmp_path / f".rep.writing-{2**22 + 12345}"  # left by a report killed there
    stale.mkdir()
    (stale / "power_law.png").write_bytes(b"half")
    result = run_cli("report", str(store), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "index.html").exists() and [p.name for p in tmp_path.iterdir()] == ["rep"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["INT"])
def test_localcluster_sweep_interrupted_from_the_terminal(tmp_path, sig):
    """A LocalCluster sweep signalled as a terminal does (its whole process group, the
    dask workers included): one message, exit 130, no traceback (no "IOLoop is
    closed"), no worker left, no live lock left; the same command then finishes."""
    path = write_recipe(tmp_path, **{**ONE_RUN, "analysis.epochs": [3]})
    out = tmp_path / "sw"
    args = ("sweep", path, "--grid", "train.lr=0.1,0.2", "--workers", "2", "--out", out)
    proc = _cli(*args, start_new_session=True)
    deadline = time.monotonic() + 240
    while not list(out.glob("*.zarr.lock")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, getattr(signal, f"SIG{sig}"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == STATUS[sig], err[-3000:]
    _clean(err)
    assert "IOLoop is closed" not in err and "CancelledError" not in err
    assert f"interrupted (SIG{sig}): the finished points are in their stores" in " ".join(
        err.split())
    left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True)
    assert _gone([int(p) for p in left.stdout.split()]) == []
    assert not out.with_name("sw.lock").exists()  # the sweep's own lock is released
    # a point whose worker was stopped while it computed may leave its lock: stale (its
    # process is gone), so the next sweep takes it over
    for lock in out.glob("*.lock"):
        assert _gone([json.loads(lock.read_text())["pid"]], timeout=0) == []
    again = run_cli(*map(str, args), "--scheduler", "inline")  # the same, without dask
    assert again.exit_code == 0, again.output
    assert not list(out.glob("*.lock"))


@pytest.mark.parametrize("command", ["verify", "show", "table", "plot", "report",
                                     "validate"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_every_command_ends_like_ctrl_c(tmp_path, finished, monkeypatch, command, sig):
    """The commands share one wrapper: a signal while they work is one message and exit
    128 + N (here raised where the command reads the store)."""
    from awch_scale.results.store import ResultStore
    from awch_scale.run import plan

    path, store = finished

    def interrupted(*args, **kwargs):
        raise Interrupted(sig)

    monkeypatch.setattr(ResultStore, "open", interrupted)
    monkeypatch.setattr(ResultStore, "verify", interrupted)
    monkeypatch.setattr(plan, "prepare", interrupted)
    args = [str(path)] if command == "validate" else [str(store)]
    if command in ("plot", "report"):
        args += ["--out", str(tmp_path / "figs")]
    result = run_cli(command, *args)
    assert result.exit_code == 128 + sig, result.output
    assert f"interrupted ({signal.Signals(sig).name})" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "figs").exists()
