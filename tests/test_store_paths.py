"""One writer per store through any path, and no output inside a store (issue 20).

A store reached through a symlink is the same store as its target: one lock, taken on
the resolved path, refuses a second real ``analyze`` process whichever path it uses.
``--store`` naming a symlink to a missing or empty folder creates the store at the
target and leaves no temporary folder. ``verify`` during an ``analyze`` names the
writing process instead of reporting damage. ``--out`` of ``report``, ``plot`` and
``sweep`` (and ``--store`` of ``analyze``) inside a store or at a store's path is
refused with exit 2 naming the option, and nothing is written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import xarray as xr
from cases import analysed_recipe, run_cli, write_recipe

ONE_RUN = {"runs.seeds": [0], "analysis.awd": {"draws": 2, "probe": 6, "partner_batches": 2},
           "analysis.spectra": None}


def _tree(folder):
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _paused_analyze(recipe, store):
    """``analyze RECIPE --store STORE`` in a new process, paused (SIGSTOP) after writing
    its first analysis, holding the lock; returns the process once it is stopped."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AWCH_SCALE_FAULT": "analysis-written:1",
           "AWCH_SCALE_FAULT_SIGNAL": "STOP"}
    env.pop("AWCH_SCALE_FAULT_RANK", None)
    proc = subprocess.Popen([sys.executable, "-m", "awch_scale", "analyze", str(recipe),
                             "-q", "--store", str(store)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while True:
        pid, status = os.waitpid(proc.pid, os.WUNTRACED | os.WNOHANG)
        if pid:
            assert os.WIFSTOPPED(status), proc.stderr.read()[-2000:]
            return proc
        assert time.monotonic() < deadline, "the analysis never reached its fault point"
        time.sleep(0.02)


def _finish(proc):
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]


@pytest.mark.slow
def test_symlinked_store_has_one_writer_and_verify_names_it(tmp_path):
    """A writes st/real.zarr (paused, holding the lock). B, a second real process,
    names the same store through st/link.zarr: refused (exit 2, A's pid), nothing
    written. verify, through either path, says A is writing it (exit 2), not that it is
    damaged. A finishes; verify then finds it intact."""
    st = tmp_path / "st"
    st.mkdir()
    real, link = st / "real.zarr", st / "link.zarr"
    link.symlink_to("real.zarr")
    recipe = write_recipe(tmp_path, **ONE_RUN)
    a = _paused_analyze(recipe, real)
    try:
        before = _tree(st)
        b = subprocess.run([sys.executable, "-m", "awch_scale", "analyze", str(recipe), "-q",
                            "--store", str(link)], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        flat = " ".join(b.stderr.split())
        assert b.returncode == 2, b.stderr[-2000:]
        assert f"is being written by process {a.pid}" in flat and "Traceback" not in flat
        assert str(real) in flat  # the lock names the store the link points to
        assert _tree(st) == before  # no second lock, no link.ckpt, no epoch written
        for path in (real, link):
            v = run_cli("verify", str(path))
            flat = " ".join(v.output.split())
            assert v.exit_code == 2, v.output
            assert f"is being written by process {a.pid}" in flat, flat
            assert "damaged" not in flat and "--repair" not in flat
    finally:
        if a.poll() is None:
            _finish(a)
    assert not (st / "link.ckpt").exists() and not list(st.glob("*.lock"))
    assert run_cli("verify", str(link)).exit_code == 0


@pytest.mark.parametrize("target", ["missing", "empty"])
def test_store_through_a_symlink_to_a_missing_or_empty_folder(tmp_path, target):
    st = tmp_path / "st"
    st.mkdir()
    if target == "empty":
        (st / "target.zarr").mkdir()
    link = st / "link.zarr"
    link.symlink_to(st / "target.zarr")
    recipe = write_recipe(tmp_path, **{**ONE_RUN, "analysis.epochs": [3]})
    result = run_cli("analyze", str(recipe), "-q", "--store", str(link))
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and (st / "target.zarr" / "zarr.json").exists()
    assert not [p for p in st.iterdir() if ".creating-" in p.name or p.suffix == ".lock"]
    assert xr.open_zarr(link, consolidated=False).done.values.all()
    assert run_cli("verify", str(link)).exit_code == 0


def test_stale_lock_does_not_stop_verify(tmp_path):
    """A lock left by a process that is gone (kill -9) is not a writer: verify runs."""
    recipe = write_recipe(tmp_path, **{**ONE_RUN, "analysis.epochs": [3]})
    assert run_cli("analyze", str(recipe), "-q").exit_code == 0
    store = tmp_path / "out" / "tiny.zarr"
    lock = store.with_name("tiny.zarr.lock")
    lock.write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename,
                                "started": "earlier"}))
    assert run_cli("verify", str(store)).exit_code == 0


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return analysed_recipe(tmp_path_factory.mktemp("finished"), **ONE_RUN)


CASES = {
    "report --out STORE/report": (["report", "{store}", "--out", "{store}/report"], "--out"),
    "report --out STORE": (["report", "{store}", "--out", "{store}"], "--out"),
    "plot --out STORE/covar/figs": (["plot", "{store}", "--out", "{store}/covar/figs"],
                                    "--out"),
    "plot --out through a symlink": (["plot", "{store}", "--out", "{link}/figs"], "--out"),
    "sweep --out STORE": (["sweep", "{recipe}", "--grid", "train.lr=0.1,0.2", "--out",
                           "{store}"], "--out"),
    "sweep --out STORE/sweep": (["sweep", "{recipe}", "--grid", "train.lr=0.1", "--out",
                                 "{store}/sweep"], "--out"),
    "analyze --store STORE/inner.zarr": (["analyze", "{recipe}", "-q", "--store",
                                          "{store}/inner.zarr"], "lies inside the store"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_nothing_is_written_into_a_store(tmp_path, finished, case):
    """Every way of writing into a finished store is refused before anything is
    written: exit 2, one paragraph naming the option and the store; the store is
    untouched and still verifies intact."""
    recipe, store = finished
    link = tmp_path / "link"
    link.symlink_to(store)
    args, needle = CASES[case]
    args = [a.format(store=store, link=link, recipe=recipe) for a in args]
    before = _tree(store.parent)
    result = run_cli(*args)
    flat = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert needle in flat and str(store) in flat and "Traceback" not in flat, flat
    assert "outside any store" in flat
    assert _tree(store.parent) == before
    assert run_cli("verify", str(store)).exit_code == 0
