"""The sweep's own failures (issue 20): a damaged manifest, a full disk while a point
runs, an unreachable scheduler, bad ``--workers``, duplicate grid values, a second sweep
on the same directory, a point store locked by another process, a copied sweep
directory. Each ends in one paragraph (no traceback) with the documented exit status
(docs/reliability.md), writes nothing when refused, and keeps every point's status
true. Points run with ``--scheduler inline`` (one after another in the sweep's process)
unless dask itself is the subject.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import xarray as xr
from disks import fill, tmpfs
from stores import cli, tiny_recipe

from awch_scale.run import grid as grid_mod
from awch_scale.run import sweep as sweep_mod

ONE_RUN = {"runs.seeds": [0], "analysis.epochs": [3]}
GRID = ("--grid", "train.lr=0.1,0.2")


def _flat(result) -> str:
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-point sweep (inline): (recipe, sweep dir)."""
    folder = tmp_path_factory.mktemp("sweep")
    recipe = tiny_recipe(folder, **ONE_RUN)
    out = folder / "grid.sweep"
    result = cli("sweep", recipe, *GRID, "--scheduler", "inline", "--out", out)
    assert result.exit_code == 0, result.output
    return recipe, out


DAMAGE = {
    "truncated": lambda text: text[: len(text) // 2],
    "empty": lambda text: "",
    "a list": lambda text: "[]",
    "points missing": lambda text: json.dumps({**json.loads(text), "points": None}),
    "a point without values": lambda text: json.dumps(
        {**json.loads(text), "points": [{**p, "values": {}} for p in json.loads(text)[
            "points"]]}),
    "a point without store": lambda text: json.dumps(
        {**json.loads(text), "points": [{k: v for k, v in p.items() if k != "store"}
                                        for p in json.loads(text)["points"]]}),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_manifest_is_one_paragraph(tmp_path, finished, damage):
    """table and report name the file and say how to rewrite it (exit 2); the sweep
    command rewrites it (every point finished: nothing recomputed)."""
    recipe, source = finished
    out = tmp_path / "grid.sweep"
    shutil.copytree(source, out)
    manifest = out / "sweep.json"
    manifest.write_text(DAMAGE[damage](manifest.read_text()))
    for args in (["table", out], ["report", out, "--out", tmp_path / "rep"]):
        result = cli(*args)
        flat = _flat(result)
        assert result.exit_code == 2, (args, result.output)
        assert f"the sweep manifest {manifest} is damaged" in flat, flat
        assert "Traceback" not in flat and "JSONDecodeError" not in flat
    assert not (tmp_path / "rep").exists()
    again = cli("sweep", recipe, *GRID, "--scheduler", "inline", "--out", out)
    assert again.exit_code == 0 and again.output.count("already finished, skipped") == 2
    assert cli("table", out).exit_code == 0


@pytest.mark.parametrize("free_pages", [16, 0])
def test_full_disk_while_a_point_runs(tmp_path, monkeypatch, free_pages):
    """The sweep directory on a real tmpfs that fills up before the second point: that
    point fails with a short reason (no traceback text in sweep.json). With a few pages
    left the sweep goes on and ends with status 1; with none its manifest cannot be
    written either and it ends with one paragraph (status 2). After space is freed the
    same command finishes, the first point skipped."""
    recipe = tiny_recipe(tmp_path, **ONE_RUN)
    with tmpfs(tmp_path / "disk", "8m") as disk:
        out = disk / "grid.sweep"
        original, calls = sweep_mod.run_point, []

        def fills_before_the_second(*args, **kwargs):
            calls.append(args)
            if len(calls) == 2:
                fill(disk, leave_pages=free_pages)
            return original(*args, **kwargs)

        monkeypatch.setattr(sweep_mod, "run_point", fills_before_the_second)
        result = cli("sweep", recipe, *GRID, "--scheduler", "inline", "--out", out)
        flat = _flat(result)
        assert "Traceback" not in flat, flat
        assert "the disk is full (No space left on device)" in flat, flat
        if free_pages:
            assert result.exit_code == 1, result.output
            assert "1 done, 1 failed of 2 points" in flat
            points = json.loads((out / "sweep.json").read_text())["points"]
            reason = points[1]["reason"]
            assert points[1]["status"] == "failed" and "Traceback" not in reason
            assert "\n" not in reason and "the disk is full" in reason
        else:
            assert result.exit_code == 2, result.output
            assert "I/O error while writing" in flat and "sweep.json" in flat, result.output
            assert "points already done are intact" in flat
            assert not (out / "sweep.json.tmp").exists()
        monkeypatch.undo()
        (disk / "ballast").unlink()
        again = cli("sweep", recipe, *GRID, "--scheduler", "inline", "--out", out)
        assert again.exit_code == 0, again.output
        assert "lr=0.1: already finished, skipped" in again.output
        assert not list(disk.rglob("*.lock"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REFUSED = {
    "unreachable scheduler": (["--scheduler", "tcp://127.0.0.1:{port}"],
                              "--scheduler tcp://127.0.0.1:{port}: no dask scheduler "
                              "answered within 1 s"),
    "not an address": (["--scheduler", "nonsense"], "--scheduler nonsense: no dask"),
    "workers 0": (["--workers", "0"], "Invalid value for '--workers'"),
    "workers -1": (["--workers", "-1"], "Invalid value for '--workers'"),
    "duplicate values 0.1,0.10": (["--grid", "train.lr=0.1,0.10"],
                                  "--grid gives two points named 'lr=0.1'"),
    "duplicate values 0.1,1e-1": (["--grid", "train.lr=0.1,1.0e-1"],
                                  "--grid gives two points named 'lr=0.1'"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_before_anything_is_written(tmp_path, monkeypatch, case):
    monkeypatch.setattr(sweep_mod, "CONNECT_TIMEOUT", 1.0)
    recipe = tiny_recipe(tmp_path, **ONE_RUN)
    port = _free_port()
    args, needle = REFUSED[case]
    args = [a.format(port=port) for a in args]
    grid = [] if "--grid" in args else list(GRID)
    out = tmp_path / "grid.sweep"
    t0 = time.monotonic()
    result = cli("sweep", recipe, *grid, *args, "--out", out)
    assert time.monotonic() - t0 < 20
    flat = _flat(result)
    assert result.exit_code == 2, result.output
    assert needle.format(port=port) in flat and "Traceback" not in flat, flat
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # nothing written


def _stopped(proc, timeout=240):
    deadline = time.monotonic() + timeout
    while True:
        pid, status = os.waitpid(proc.pid, os.WUNTRACED | os.WNOHANG)
        if pid:
            assert os.WIFSTOPPED(status), proc.stderr.read()[-2000:]
            return
        assert time.monotonic() < deadline, "the sweep never reached its fault point"
        time.sleep(0.02)


def test_second_sweep_on_the_same_directory(tmp_path):
    """A first sweep (a real process) is paused inside its first point. A second sweep on
    the same directory is refused (exit 2, naming the first's pid) and changes nothing:
    the first one's points are not marked failed. The first then finishes, all done."""
    recipe = tiny_recipe(tmp_path, **ONE_RUN)
    out = tmp_path / "grid.sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AWCH_SCALE_FAULT": "analysis-written:1",
           "AWCH_SCALE_FAULT_SIGNAL": "STOP"}
    first = subprocess.Popen([sys.executable, "-m", "awch_scale", "sweep", str(recipe),
                              *GRID, "--scheduler", "inline", "--out", str(out)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _stopped(first)
        manifest = (out / "sweep.json").read_text()
        second = cli("sweep", recipe, *GRID, "--scheduler", "inline", "--out", out)
        flat = _flat(second)
        assert second.exit_code == 2, second.output
        assert f"sweep directory {out}" in flat and f"by process {first.pid}" in flat
        assert "Traceback" not in flat
        assert (out / "sweep.json").read_text() == manifest
        os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=240)
        assert first.returncode == 0, err[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    points = json.loads((out / "sweep.json").read_text())["points"]
    assert [p["status"] for p in points] == ["done", "done"]
    assert not list(tmp_path.rglob("*.lock"))


def test_point_locked_by_another_process_is_running_not_failed(tmp_path):
    """A point store locked by a live process (an analyze of that point) is reported as
    being written, not failed; table shows it so and hides no finished point."""
    recipe = tiny_recipe(tmp_path, **ONE_RUN)
    out = tmp_path / "grid.sweep"
    out.mkdir()
    (out / "lr=0.2.zarr.lock").write_text(json.dumps(
        {"pid": os.getppid(), "host": os.uname().nodename, "started": "earlier"}))
    result = cli("sweep", recipe, *GRID, "--scheduler", "inline", "--out", out)
    flat = _flat(result)
    assert result.exit_code == 1, result.output
    assert "1 done, 0 failed, 1 being written by another process of 2 points" in flat
    points = {p["name"]: p for p in json.loads((out / "sweep.json").read_text())["points"]}
    assert points["lr=0.2"]["status"] == "running"
    assert f"being written by process {os.getppid()}" in points["lr=0.2"]["reason"]
    table = cli("table", out)
    assert "failed point" not in table.output and "| running |" in table.output
    assert "| done |" in table.output


def test_copied_sweep_directory_reads_its_own_stores(tmp_path, finished):
    """The manifest keeps point stores relative: a copy of the sweep directory (the
    original gone) reads and resumes its own stores, also from a manifest of an older
    version that stored absolute paths."""
    recipe, source = finished
    manifest = json.loads((source / "sweep.json").read_text())
    assert [p["store"] for p in manifest["points"]] == ["lr=0.1.zarr", "lr=0.2.zarr"]
    copy = tmp_path / "moved" / "grid.sweep"
    shutil.copytree(source, copy)
    gone = tmp_path / "gone.sweep"  # where an older manifest said the stores were
    old = {**manifest, "points": [{**p, "store": str(gone / p["store"])}
                                  for p in manifest["points"]]}
    for text in (json.dumps(manifest), json.dumps(old)):
        (copy / "sweep.json").write_text(text)
        table = cli("table", copy, "--format", "csv")
        assert table.exit_code == 0, table.output
        rows = table.output.splitlines()[1:]
        assert len(rows) == 2 and all(",done," in r for r in rows)
        for row, point in zip(rows, manifest["points"], strict=True):
            g = xr.open_zarr(copy / point["store"], consolidated=False).gamma
            assert f"{float(g.sel(estimator='covar').isel(run=0, epoch=-1))!r}" in row
    again = cli("sweep", recipe, *GRID, "--scheduler", "inline", "--out", copy)
    assert again.exit_code == 0 and again.output.count("already finished, skipped") == 2


def test_store_of_an_older_version_resumes_in_place(tmp_path):
    """A point store written when point recipes held their absolute store path is taken
    as that point's (skipped when finished), not refused as another recipe's."""
    recipe = tiny_recipe(tmp_path, **ONE_RUN)
    out = (tmp_path / "grid.sweep").resolve()
    out.mkdir()
    text = grid_mod.apply_overrides(recipe.read_text(), {"train.lr": 0.1}, name="lr=0.1",
                                     store=out / "lr=0.1.zarr")
    (out / "old.yaml").write_text(text)
    assert cli("analyze", out / "old.yaml", "-q").exit_code == 0
    result = cli("sweep", recipe, "--grid", "train.lr=0.1", "--scheduler", "inline",
                 "--out", out)
    assert result.exit_code == 0 and "lr=0.1: already finished, skipped" in result.output


def test_stale_lock_of_a_finished_point_is_removed(tmp_path, finished):
    """A worker stopped after its point's last analysis leaves the point's lock (the
    interrupted LocalCluster sweep of test_signals saw it under load): the next sweep
    skips the finished point and removes that stale lock; a live owner's lock stays."""
    recipe, source = finished
    out = tmp_path / "grid.sweep"
    shutil.copytree(source, out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = socket.gethostname()
    (out / "lr=0.1.zarr.lock").write_text(json.dumps(
        {"pid": int(dead), "host": host, "started": "earlier"}))
    (out / "lr=0.2.zarr.lock").write_text(json.dumps(
        {"pid": os.getppid(), "host": host, "started": "earlier"}))
    result = cli("sweep", recipe, *GRID, "--scheduler", "inline", "--out", out)
    assert result.exit_code == 0, result.output
    assert "lr=0.1: already finished, skipped" in _flat(result)
    assert [p.name for p in out.glob("*.lock")] == ["lr=0.2.zarr.lock"]
