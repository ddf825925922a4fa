"""Fault injection: crashes at chosen write points, a second writer, damaged chunks and
metadata, swapped and tampered checkpoints, full disks and bad store paths.

Each case ends with a clear message (no traceback), the documented exit status
(docs/reliability.md), and either a complete store equal to an uninterrupted run after
re-running, or ``awch-scale verify`` naming exactly what is damaged.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import xarray as xr
from cases import analysed_recipe, run_cli, write_recipe
from disks import fill, mount, tmpfs, umount

from awch_scale.results import store as store_module

ONE_RUN = {"runs.seeds": [0], "analysis.awd": {"draws": 2, "probe": 6, "partner_batches": 2},
           "analysis.spectra": None}
COMPARED = ("hess_eigval", "covar", "c_pair", "gamma", "curve_train_loss")


def _store(tmp_path):
    return tmp_path / "out" / "tiny.zarr"


def _open(path):
    return xr.open_zarr(path, consolidated=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted store of the one-run recipe."""
    tmp = tmp_path_factory.mktemp("reference")
    path = write_recipe(tmp, **ONE_RUN)
    assert run_cli("analyze", str(path), "-q").exit_code == 0
    return _open(_store(tmp)).load()


def _assert_same(store, reference):
    ds = _open(store)
    assert ds.done.values.all()
    for name in COMPARED:
        np.testing.assert_allclose(ds[name].values, reference[name].values, rtol=1e-10,
                                   atol=0, err_msg=name)


_ANALYZE = textwrap.dedent("""
    import sys
    from awch_scale.cli import app
    sys.argv = ["awch-scale", "analyze", sys.argv[1], "-q"]
    app()
""")


def _env(fault=None, signal_name="KILL"):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("AWCH_SCALE_FAULT", None)
    if fault:
        env.update(AWCH_SCALE_FAULT=fault, AWCH_SCALE_FAULT_SIGNAL=signal_name)
    return env


def _subprocess(path, fault=None, signal_name="KILL"):
    """``awch-scale analyze RECIPE -q`` in a new process (stopped at ``fault``, if given)."""
    return subprocess.run([sys.executable, "-c", _ANALYZE, str(path)],
                          env=_env(fault, signal_name), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("fault", ["store-created", "training-written", "arrays-created",
                                   "analysis-written:2", "analysis-done"])
def test_kill_9_at_a_write_point_then_rerun(tmp_path, reference, fault):
    path = write_recipe(tmp_path, **ONE_RUN)
    proc = _subprocess(path, fault)
    assert proc.returncode == -9, proc.stderr[-2000:]
    result = run_cli("analyze", str(path), "-q")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    _assert_same(_store(tmp_path), reference)
    assert not list(_store(tmp_path).parent.glob(".tiny.zarr.creating-*"))
    assert run_cli("verify", str(_store(tmp_path))).exit_code == 0


def test_kill_inside_the_array_creation_then_rerun(tmp_path, reference):
    """A kill inside the ``to_zarr`` that creates the analysis arrays can leave a new
    coordinate without its values (seen under load: ``eig`` = [0 0 0 0 0], and the
    rerun refused the store as made by a different configuration). Reproduced by a kill
    after the creation (before the arrays are listed) and the coordinate's values
    zeroed: the rerun writes them again and completes, equal to an uninterrupted run."""
    import zarr

    path = write_recipe(tmp_path, **ONE_RUN)
    proc = _subprocess(path, "arrays-created")
    assert proc.returncode == -9, proc.stderr[-2000:]
    group = zarr.open_group(_store(tmp_path), mode="r+")
    assert "eig" not in group.attrs["variables"]
    group["eig"][...] = 0
    result = run_cli("analyze", str(path), "-q")
    assert result.exit_code == 0, result.output
    _assert_same(_store(tmp_path), reference)
    assert list(_open(_store(tmp_path)).eig.values) == list(range(1, group["eig"].shape[0] + 1))
    assert run_cli("verify", str(_store(tmp_path))).exit_code == 0


def test_ctrl_c_at_a_write_point_then_rerun(tmp_path, reference):
    path = write_recipe(tmp_path, **ONE_RUN)
    proc = _subprocess(path, "analysis-written", "INT")
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "run the same command again" in proc.stderr
    assert not (tmp_path / "out" / "tiny.zarr.lock").exists()  # released on Ctrl-C
    assert run_cli("analyze", str(path), "-q").exit_code == 0
    _assert_same(_store(tmp_path), reference)


def test_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path):
    path = write_recipe(tmp_path, **ONE_RUN)
    lock = tmp_path / "out" / "tiny.zarr.lock"
    lock.parent.mkdir(parents=True)
    live = {"pid": os.getppid(), "host": os.uname().nodename, "started": "earlier"}
    lock.write_text(json.dumps(live))
    result = run_cli("analyze", str(path), "-q")
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and f"being written by process {os.getppid()}" in flat
    assert not _store(tmp_path).exists()  # nothing written
    lock.write_text(json.dumps({**live, "pid": 2**22 + 12345}))  # no such process
    assert run_cli("analyze", str(path), "-q").exit_code == 0
    assert not lock.exists()


def _wait_stopped(proc, timeout=120):
    """Wait until ``proc`` is stopped (SIGSTOP at its fault point); fail if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status = os.waitpid(proc.pid, os.WUNTRACED | os.WNOHANG)
        if pid:
            assert os.WIFSTOPPED(status), f"exited first: {proc.stderr.read()[-2000:]}"
            return
        assert time.monotonic() < deadline, "the first analyze never reached its fault point"
        time.sleep(0.02)


def test_two_real_analyze_processes_on_one_store(tmp_path, reference):
    """A holds the lock, paused between writing its first analysis and marking it done
    (SIGSTOP at the fault point analysis-written:1). B, a second analyze process on the
    same store, does not wait: it exits 2 at once naming A's pid, and changes nothing.
    A then finishes (exit 0); a later run C skips everything and writes nothing."""
    path = write_recipe(tmp_path, **ONE_RUN)
    out = tmp_path / "out"
    lock = out / "tiny.zarr.lock"
    a = subprocess.Popen([sys.executable, "-c", _ANALYZE, str(path)],
                         env=_env("analysis-written:1", "STOP"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        _wait_stopped(a)
        assert json.loads(lock.read_text())["pid"] == a.pid  # A holds the lock
        before = _tree(out)
        b = _subprocess(path)
        flat = " ".join(b.stderr.split())
        assert b.returncode == 2, b.stderr[-2000:]
        assert f"is being written by process {a.pid} on {os.uname().nodename}" in flat
        assert "wait for it to finish" in flat and "Traceback" not in b.stderr
        assert _tree(out) == before  # B wrote nothing, A's lock is untouched
        os.kill(a.pid, signal.SIGCONT)
        _, err = a.communicate(timeout=120)
        assert a.returncode == 0, err[-2000:]
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert not lock.exists()
    _assert_same(_store(tmp_path), reference)
    finished = _tree(out)
    c = run_cli("analyze", str(path), "-q")
    assert c.exit_code == 0 and "run 0: all 2 analyses already in the store" in c.output
    assert _tree(out) == finished  # nothing recomputed: no file written or touched


def _chunk(store, name, *idx):
    return store / name / "c" / "/".join(str(i) for i in idx)


def test_bit_flip_is_found_by_verify_and_repaired(tmp_path, reference):
    path = write_recipe(tmp_path, **ONE_RUN)
    assert run_cli("analyze", str(path), "-q").exit_code == 0
    store = _store(tmp_path)
    f = _chunk(store, "hess_eigval", 0, 1, 0)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))
    result = run_cli("verify", str(store))
    assert result.exit_code == 1
    assert "hess_eigval (run 0, epoch 3): chunk unreadable" in result.output
    assert "checksum" in result.output
    shown = run_cli("show", str(store))
    assert shown.exit_code == 2 and "awch-scale verify" in " ".join(shown.output.split())
    # a plain re-run does not read every chunk; --repair does and redoes only that analysis
    repaired = run_cli("analyze", str(path), "-q", "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert "run 0, epoch 1: already done, skipped" in repaired.output
    assert run_cli("verify", str(store)).exit_code == 0
    _assert_same(store, reference)


def test_missing_chunk_of_a_finished_analysis_is_redone(tmp_path, reference):
    path = write_recipe(tmp_path, **ONE_RUN)
    assert run_cli("analyze", str(path), "-q").exit_code == 0
    store = _store(tmp_path)
    _chunk(store, "covar", 0, 0, 0, 0).unlink()
    out = run_cli("verify", str(store)).output
    assert "covar (run 0, epoch 1): chunk missing" in out
    result = run_cli("analyze", str(path), "-q")  # the cheap check finds it
    assert result.exit_code == 0 and "redoing" in result.output
    _assert_same(store, reference)


def test_truncated_metadata_is_reported(tmp_path):
    path = write_recipe(tmp_path, **ONE_RUN)
    assert run_cli("analyze", str(path), "-q").exit_code == 0
    store = _store(tmp_path)
    meta = store / "covar" / "zarr.json"
    meta.write_text(meta.read_text()[:40])
    result = run_cli("verify", str(store))
    assert result.exit_code == 1 and "covar: metadata unreadable" in result.output
    again = run_cli("analyze", str(path), "-q")
    assert again.exit_code == 2 and "Traceback" not in again.output
    root = store / "zarr.json"
    root.write_text(root.read_text()[:40])
    assert run_cli("verify", str(store)).exit_code == 1
    for command in (["show"], ["table"], ["plot"], ["report", "--out", str(tmp_path / "r")]):
        shown = run_cli(command[0], str(store), *command[1:])
        flat = " ".join(shown.output.split())
        assert shown.exit_code == 2 and "Traceback" not in shown.output, command
        assert "zarr.json is unreadable" in flat and "awch-scale verify" in flat, command
    assert not (tmp_path / "r").exists()  # a refused report leaves no output folder


def test_deleted_array_folders_are_found_and_redone(tmp_path, reference):
    """An analysis variable's whole folder deleted: verify names it (exit 1), the reading
    commands refuse (exit 2, naming verify), and a plain re-run recreates it by redoing
    the analyses (training is kept). A deleted coordinate cannot be rebuilt in place:
    the re-run says so (exit 2)."""
    path = write_recipe(tmp_path, **ONE_RUN)
    assert run_cli("analyze", str(path), "-q").exit_code == 0
    store = _store(tmp_path)
    shutil.rmtree(store / "gamma")
    result = run_cli("verify", str(store))
    assert result.exit_code == 1 and "gamma: array missing" in result.output
    for command in ("show", "table", "plot"):
        shown = run_cli(command, str(store))
        flat = " ".join(shown.output.split())
        assert shown.exit_code == 2 and "array(s) missing (gamma)" in flat, command
        assert "Traceback" not in shown.output
    again = run_cli("analyze", str(path), "-q")
    assert again.exit_code == 0 and "redoing" in again.output, again.output
    assert run_cli("verify", str(store)).exit_code == 0
    _assert_same(store, reference)
    shutil.rmtree(store / "run")
    assert "run: array missing" in run_cli("verify", str(store)).output
    again = run_cli("analyze", str(path), "-q")
    flat = " ".join(again.output.split())
    assert again.exit_code == 2 and "cannot be repaired in place" in flat


def test_swapped_and_tampered_checkpoints_are_refused(tmp_path):
    path = write_recipe(tmp_path, **{**ONE_RUN, "runs.seeds": [0, 1]})
    assert run_cli("analyze", str(path), "-q").exit_code == 0
    ckpt = tmp_path / "out" / "tiny.ckpt"
    store = _store(tmp_path)
    from awch_scale.results.store import ResultStore

    rs = ResultStore(store)
    rs.set_done(0, 1, False)
    shutil.copy(ckpt / "run-1" / "epoch-00003.pt", ckpt / "run-0" / "epoch-00003.pt")
    result = run_cli("analyze", str(path), "-q")
    flat = " ".join(result.output.split())
    assert result.exit_code == 3 and "is not the one written for run 0, epoch 3" in flat
    assert "weights_only=False" not in flat
    # a tampered file (not a tensor state dict), with the hash matching, is refused too
    target = ckpt / "run-0" / "epoch-00003.pt"
    target.write_bytes(b"\x80\x04not a checkpoint")
    from awch_scale.run.checkpoints import file_sha256

    ds = _open(store)
    hashes = ds.ckpt_sha256.values.copy()
    hashes[0, 1] = file_sha256(target)
    rs._region(xr.Dataset({"ckpt_sha256": (("run", "epoch"), hashes.astype(object))}),
               {"run": slice(0, 2), "epoch": slice(0, 2)})
    result = run_cli("analyze", str(path), "-q")
    flat = " ".join(result.output.split())
    assert result.exit_code == 3 and "cannot be loaded as a plain tensor state dict" in flat
    assert "weights_only=False" not in flat and "Traceback" not in flat


def test_full_disk_is_a_message_and_resumable(tmp_path, reference, monkeypatch):
    path = write_recipe(tmp_path, **ONE_RUN)
    original = store_module.ResultStore.write_analysis
    calls = []

    def full(self, run, epoch, ds):
        calls.append((run, epoch))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return original(self, run, epoch, ds)

    monkeypatch.setattr(store_module.ResultStore, "write_analysis", full)
    result = run_cli("analyze", str(path), "-q")
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and "the disk is full" in flat and "Traceback" not in flat
    assert not (tmp_path / "out" / "tiny.zarr.lock").exists()
    monkeypatch.setattr(store_module.ResultStore, "write_analysis", original)
    assert run_cli("analyze", str(path), "-q").exit_code == 0
    _assert_same(_store(tmp_path), reference)


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB tmpfs (a full analysis of the one-run recipe takes about 1 MiB)."""
    with tmpfs(tmp_path / "disk") as mnt:
        yield mnt


def _leftovers(disk):
    """Locks, temporary stores, checkpoints and chunks left by an interrupted write."""
    return sorted(str(p.relative_to(disk)) for p in disk.rglob("*")
                  if p.name.endswith((".lock", ".partial")) or ".creating-" in p.name
                  or ".tmp-" in p.name)


@pytest.mark.parametrize("when", ["lock", "store-creation", "checkpoint", "analysis"])
def test_real_full_disk_is_a_message_and_resumable(tmp_path, reference, small_disk,
                                                    monkeypatch, when):
    """The store on a real tmpfs that fills up (a ballast file, as another process would)
    at four points: before the lock is written, before the store is created, before the
    second checkpoint, before the second analysis is written. Every write fails with the
    kernel's ENOSPC; analyze exits 2 with one paragraph naming the disk and the store,
    leaves no lock or temporary file, and after the disk is remounted bigger the same
    command finishes the store, equal to an uninterrupted run."""
    from awch_scale.run import training

    store = small_disk / "tiny.zarr"
    path = write_recipe(tmp_path, **ONE_RUN)
    if when in ("lock", "store-creation"):
        fill(small_disk, leave_pages=0 if when == "lock" else 1)  # 1 page: the lock's
    else:
        module, name = ((training, "_save_atomic") if when == "checkpoint"
                        else (store_module.ResultStore, "write_analysis"))
        original, calls = getattr(module, name), []

        def filled_before_the_second_call(*args):
            calls.append(args)
            if len(calls) == 2:
                fill(small_disk)
            return original(*args)

        monkeypatch.setattr(module, name, filled_before_the_second_call)
    result = run_cli("analyze", str(path), "--store", str(store), "-q")
    flat = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "the disk is full (No space left on device)" in flat, flat
    assert f"I/O error while writing {small_disk}/" in flat and "Traceback" not in flat
    assert "free space on that disk" in flat and "run the same command again" in flat
    assert _leftovers(small_disk) == []
    if when == "analysis":  # the first analysis was written and marked done before
        assert _open(store).done.values.tolist() == [[True, False]]
    monkeypatch.undo()
    mount(small_disk, "-o", "remount,size=8m")
    again = run_cli("analyze", str(path), "--store", str(store), "-q")
    assert again.exit_code == 0, again.output
    assert ("run 0, epoch 1: already done, skipped" in again.output) == (when == "analysis")
    assert run_cli("verify", str(store)).exit_code == 0
    _assert_same(store, reference)
    assert _leftovers(small_disk) == []


@pytest.mark.parametrize("where", ["file", "folder", "unwritable"])
def test_bad_store_paths_fail_before_training(tmp_path, where):
    target = tmp_path / "out" / "tiny.zarr"
    target.parent.mkdir(parents=True)
    if where == "file":
        target.write_text("not a store")
        store, needle = target, "is a file"
    elif where == "folder":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
        store, needle = target, "not an awch-scale store"
    else:
        blocker = tmp_path / "blocker"
        blocker.write_text("a file where a folder should be")
        store, needle = blocker / "tiny.zarr", "cannot write the store"
    path = write_recipe(tmp_path, **ONE_RUN)
    result = run_cli("analyze", str(path), "--store", str(store), "-q")
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and needle in flat and "Traceback" not in flat
    assert not (tmp_path / "out" / "tiny.ckpt").exists()  # nothing trained


def _tree(folder):
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize("where", ["read-only disk", "folder on a read-only disk",
                                   "finished store on a read-only disk"])
def test_real_read_only_location_is_refused_before_training(tmp_path, monkeypatch, where):
    """A read-only mount (root bypasses permission bits, not a read-only file system):
    analyze refuses before training with exit 2, naming the location; nothing is
    written. On a read-only finished store, verify and show still work (they only read)."""
    from awch_scale.run import checkpoints

    path = write_recipe(tmp_path, **ONE_RUN)
    ro = tmp_path / "ro"
    ro.mkdir()
    if where == "finished store on a read-only disk":
        assert run_cli("analyze", str(path), "-q").exit_code == 0
        source = tmp_path / "out"
        before = _tree(source)
        mount(ro, "--bind", str(source))
        try:
            mount(ro, "-o", "remount,bind,ro")
        except BaseException:
            umount(ro)
            raise
        store = ro / "tiny.zarr"
    else:
        mount(ro, "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs")
        store = ro / "tiny.zarr" if where == "read-only disk" else ro / "results" / "tiny.zarr"
    try:
        assert subprocess.run(["touch", str(ro / "probe")], capture_output=True).returncode
        def no_training(*args, **kwargs):
            raise AssertionError("training started on a read-only store location")

        monkeypatch.setattr(checkpoints, "train", no_training)
        result = run_cli("analyze", str(path), "--store", str(store), "-q")
        flat = " ".join(result.output.split())
        assert result.exit_code == 2, result.output
        assert f"cannot write the store at {store}: Read-only file system" in flat, flat
        assert "choose a writable location" in flat and "Traceback" not in flat
        if where == "finished store on a read-only disk":
            assert _tree(source) == before  # nothing written (the bind is read-only too)
            assert run_cli("verify", str(store)).exit_code == 0
            shown = run_cli("show", str(store))
            assert shown.exit_code == 0 and "Traceback" not in shown.output
        else:
            assert list(ro.iterdir()) == []
    finally:
        umount(ro)


def test_not_an_awch_scale_group(tmp_path):
    """A zarr group of someone else's (with an array, so xarray could half-read it): every
    command refuses it with exit 2 and says so; an empty folder is not a store either."""
    import zarr

    store = tmp_path / "out" / "tiny.zarr"
    group = zarr.open_group(store, mode="w")
    group.attrs["made_by"] = "someone else"
    group.create_array("x", shape=(3,), dtype="f8")[:] = 1.0
    path = write_recipe(tmp_path, **ONE_RUN)
    result = run_cli("analyze", str(path), "-q")
    assert result.exit_code == 2 and "not made by awch-scale" in " ".join(result.output.split())
    for command in ("verify", "show", "table", "plot", "report"):
        out = run_cli(command, str(store))
        flat = " ".join(out.output.split())
        assert out.exit_code == 2 and "not made by awch-scale" in flat, (command, flat)
        assert "Traceback" not in out.output
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run_cli("verify", str(empty))
    assert out.exit_code == 2 and "no awch-scale store" in out.output


def test_truncated_chunk_is_found_by_verify(tmp_path):
    path = write_recipe(tmp_path, **ONE_RUN)
    assert run_cli("analyze", str(path), "-q").exit_code == 0
    store = _store(tmp_path)
    f = _chunk(store, "c_pair", 0, 0, 0, 0)
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    result = run_cli("verify", str(store))
    assert result.exit_code == 1 and "c_pair (run 0, epoch 1): chunk unreadable" in result.output
    assert run_cli("analyze", str(path), "-q", "--repair").exit_code == 0
    assert run_cli("verify", str(store)).exit_code == 0


@pytest.mark.parametrize("k, method", [(5, "eigsh"), (32, "block")])
def test_dead_network_is_a_recorded_failure(tmp_path, k, method):
    """lr = 100 switches every ReLU off: H of fc2 is 0. ARPACK (k = 5) and the block
    solver (k = 32, D = 36) record the same failure, exit status 3."""
    from awch_scale.linalg.eigen import zero_operator_error

    path = write_recipe(tmp_path, **{**ONE_RUN, "train.lr": 100.0, "analysis.k": k,
                                     "analysis.eigen": {"method": method}})
    result = run_cli("analyze", str(path), "-q")
    flat = " ".join(result.output.split())
    assert result.exit_code == 3, result.output
    assert "0 of 2 analyses done" in flat and "dead network" in flat
    assert "Traceback" not in flat and "lambda_1 = 0," not in flat
    ds = _open(_store(tmp_path))
    assert not ds.done.values.any()
    assert ds.attrs["failures"] == {"0/1": str(zero_operator_error()),
                                    "0/3": str(zero_operator_error())}
    shown = run_cli("show", str(_store(tmp_path)))
    assert shown.exit_code == 0 and "run 0, epoch 3 failed" in shown.output


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(recipe, store) of one finished analysis, shared by read-only commands."""
    return analysed_recipe(tmp_path_factory.mktemp("finished"), **ONE_RUN)


@pytest.mark.parametrize("command", ["plot", "report", "sweep"])
@pytest.mark.parametrize("where", ["file", "under a file", "read-only disk"])
def test_bad_output_folders_are_messages(tmp_path, finished, command, where):
    """``--out`` naming a file, a folder below a file, or a read-only mount: exit 2 with
    one paragraph naming ``--out``, no traceback, nothing written; for ``sweep`` before
    anything is computed."""
    if command == "sweep":
        path, store = write_recipe(tmp_path, **ONE_RUN), _store(tmp_path)
    else:
        path, store = finished
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    ro = tmp_path / "ro"
    if where == "read-only disk":
        ro.mkdir()
        mount(ro, "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs")
    out = {"file": blocker, "under a file": blocker / "figs", "read-only disk": ro / "figs"}
    try:
        args = ([command, str(store)] if command != "sweep" else
                [command, str(path), "--grid", "train.lr=0.1,0.2", "--workers", "1"])
        result = run_cli(*args, "--out", str(out[where]))
        flat = " ".join(result.output.split())
        assert result.exit_code == 2, result.output
        assert f"--out {out[where]}" in flat and "Traceback" not in flat, flat
        assert blocker.read_text() == "a file"
        if where == "read-only disk":
            assert list(ro.iterdir()) == []
        if command == "sweep":
            assert not store.exists()
    finally:
        if where == "read-only disk":
            umount(ro)


def test_resumed_large_k_analysis_equals_an_uninterrupted_one(tmp_path):
    """docs/reliability.md promises a resumed store equal to an uninterrupted one (1e-10).
    With k >= 32, method auto once chose its solver by timing, so a resumed k = 40
    analysis took another solver and differed by 3.5e-8; the choice is now a rule of D,
    k, operator, dtype and device, recorded in provenance, and the promise holds."""
    big = {**ONE_RUN, "model.width": 8, "analysis.k": 40}  # fc2: D = 64
    whole = write_recipe(tmp_path / "whole", **big)
    assert run_cli("analyze", str(whole), "-q").exit_code == 0
    cut = write_recipe(tmp_path / "cut", **big)
    proc = _subprocess(cut, "analysis-written:2")
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert run_cli("analyze", str(cut), "-q").exit_code == 0
    a, b = _open(_store(tmp_path / "whole")), _open(_store(tmp_path / "cut"))
    assert a.done.values.all() and b.done.values.all()
    for name in (*COMPARED, "covar_mb", "second_moment", "hess_residual", "n_hvp"):
        np.testing.assert_allclose(b[name].values, a[name].values, rtol=1e-10, atol=0,
                                   err_msg=name)
    methods = {json.loads(str(p))["eigen_choice"]["method"] for p in b.provenance.values.ravel()}
    assert len(methods) == 1, methods  # one solver for every analysis, by the rule
