"""``awch-scale sweep`` on a dask LocalCluster with 2 workers: four complete stores; a
failing point is reported with its reason and does not stop the others; a finished sweep
recomputes nothing; ``table`` and ``report`` read the sweep directory."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import xarray as xr
import yaml
from stores import cli, tiny_recipe

from awch_scale.errors import RecipeError
from awch_scale.results.manifest import read_manifest
from awch_scale.run import grid as grid_mod
from awch_scale.run import sweep as sweep_mod

ONE_RUN = {"runs.seeds": [0], "analysis.epochs": [3]}


def store_files(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()
            and ".zarr" in str(p)}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    recipe = tiny_recipe(folder, **ONE_RUN)
    out = folder / "grid.sweep"
    result = cli("sweep", recipe, "--grid", "train.lr=0.1,0.2", "--grid",
                 "train.batch_size=10,20", "--workers", "2", "--out", out)
    return recipe, out, result


def test_two_by_two_sweep_gives_four_complete_stores(finished_sweep):
    _, out, result = finished_sweep
    assert result.exit_code == 0, result.output
    assert "4 done, 0 failed of 4 points" in result.output
    flat = " ".join(result.output.split())
    # progress from the start: what was submitted and what runs, then per finished point
    assert "submitted 4 point(s) to 2 worker(s): " in flat
    assert "0 running, 0 waiting)" in flat  # the last point's line
    manifest = read_manifest(out)
    assert [p["status"] for p in manifest["points"]] == ["done"] * 4
    names = sorted(p["name"] for p in manifest["points"])
    assert names == ["lr=0.1,batch_size=10", "lr=0.1,batch_size=20",
                     "lr=0.2,batch_size=10", "lr=0.2,batch_size=20"]
    for point in manifest["points"]:
        ds = xr.open_zarr(point["store"], consolidated=False)
        assert ds.done.values.all()
        recipe = yaml.safe_load(ds.attrs["recipe"])  # the overrides reached the analysis
        assert recipe["train"]["lr"] == point["values"]["train.lr"]
        assert recipe["train"]["batch_size"] == point["values"]["train.batch_size"]
        assert ds.attrs["batch_size"] == point["values"]["train.batch_size"]
        assert np.isfinite(ds.gamma.sel(estimator="covar").values).all()


def test_rerun_recomputes_nothing(finished_sweep, monkeypatch):
    recipe, out, _ = finished_sweep
    before = store_files(out)
    seconds = {p["name"]: p["seconds"] for p in read_manifest(out)["points"]}
    assert all(isinstance(t, float) and t > 0 for t in seconds.values()), seconds

    def no_cluster(*args, **kwargs):
        raise AssertionError("a finished sweep must not start any computation")

    monkeypatch.setattr(sweep_mod, "_run_on_dask", no_cluster)
    monkeypatch.setattr(sweep_mod, "run_point", no_cluster)
    result = cli("sweep", recipe, "--grid", "train.lr=0.1,0.2", "--grid",
                 "train.batch_size=10,20", "--workers", "2", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.count("already finished, skipped") == 4
    assert store_files(out) == before
    # the re-run keeps each point's recorded time
    assert {p["name"]: p["seconds"] for p in read_manifest(out)["points"]} == seconds


def test_verify_a_sweep_directory(finished_sweep, tmp_path):
    import shutil

    _, out, _ = finished_sweep
    assert cli("report", out).exit_code == 0  # <sweep>/report: not a store, not checked
    result = cli("verify", out)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "4 intact of 4 point store(s)" in text and "damaged" not in text
    assert text.count("intact (every chunk read and checksummed)") == 4
    copy = tmp_path / "copy.sweep"
    shutil.copytree(out, copy)
    gone = read_manifest(copy)["points"][1]["store"]
    shutil.rmtree(gone)
    broken = cli("verify", copy)
    assert broken.exit_code == 1, broken.output
    text = " ".join(broken.output.split())
    assert f"{gone}: missing, though sweep.json marks the point done" in text
    assert "3 intact, 1 damaged of 4 point store(s)" in text


@pytest.mark.parametrize("command", ["show", "plot"])
def test_show_and_plot_point_a_sweep_to_table_and_report(finished_sweep, command):
    _, out, _ = finished_sweep
    result = cli(command, out)
    assert result.exit_code == 2 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "is a sweep directory" in text
    assert f"'awch-scale table {out}'" in text and f"'awch-scale report {out}'" in text


def test_list_values_in_a_grid(tmp_path):
    text = tiny_recipe(tmp_path, **ONE_RUN).read_text()
    grid = grid_mod.parse_grid(["runs.seeds=[0],[0,1]"])
    assert grid == {"runs.seeds": [[0], [0, 1]]}
    manifest = sweep_mod.plan_sweep(text, grid, tmp_path / "s")
    assert [p["status"] for p in manifest["points"]] == ["pending", "pending"]
    assert [yaml.safe_load(p["recipe"])["runs"]["seeds"] for p in manifest["points"]] == \
        [[0], [0, 1]]
    assert [p["name"] for p in manifest["points"]] == ["seeds=[0]", "seeds=[0,1]"]
    with pytest.raises(RecipeError, match="is a mapping"):
        grid_mod.parse_grid(["train.lr=a: b"])


def test_table_and_report_of_a_sweep(finished_sweep, tmp_path):
    _, out, _ = finished_sweep
    result = cli("table", out, "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) == 4
    manifest = read_manifest(out)
    for row, point in zip(rows, manifest["points"], strict=True):
        assert float(row["train.lr"]) == point["values"]["train.lr"]
        assert int(row["train.batch_size"]) == point["values"]["train.batch_size"]
        g = xr.open_zarr(point["store"], consolidated=False).gamma
        assert float(row["gamma_emp_mean"]) == pytest.approx(
            float(g.sel(estimator="covar").isel(run=0, epoch=-1)), rel=1e-12)
    rep = cli("report", out, "--out", tmp_path / "rep")
    assert rep.exit_code == 0, rep.output
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "<img src='sweep_gamma.png'" in html
    assert (tmp_path / "rep" / "sweep_gamma.png").read_bytes()[:4] == b"\x89PNG"


def test_failing_point_does_not_stop_the_others(tmp_path):
    # batch 25 exceeds the 2 x 12 training samples only at train_per_class = 12
    recipe = tiny_recipe(tmp_path, **ONE_RUN)
    out = tmp_path / "bad.sweep"
    result = cli("sweep", recipe, "--grid", "train.batch_size=10,25", "--grid",
                 "data.train_per_class=30,12", "--workers", "2", "--out", out)
    assert result.exit_code == 1
    flat = " ".join(result.output.split())
    assert "3 done, 1 failed of 4 points" in flat
    assert "batch_size=25,train_per_class=12: failed" in flat
    assert "'train.batch_size' = 25 exceeds the 24 training samples" in flat
    manifest = read_manifest(out)
    status = {p["name"]: p for p in manifest["points"]}
    assert "exceeds the 24 training samples" in status["batch_size=25,train_per_class=12"][
        "reason"]
    for name, p in status.items():
        if name != "batch_size=25,train_per_class=12":
            assert p["status"] == "done"
            assert xr.open_zarr(p["store"], consolidated=False).done.values.all()
    table = cli("table", out)
    assert ("failed point train.batch_size=25, data.train_per_class=12: RecipeError: recipe "
            "'train.batch_size' = 25 exceeds") in table.output


def test_invalid_values_fail_before_running(tmp_path):
    text = tiny_recipe(tmp_path, **ONE_RUN).read_text()
    manifest = sweep_mod.plan_sweep(text, {"data.label_noise": [0, 1.5]}, tmp_path / "s")
    ok, bad = manifest["points"]
    assert ok["status"] == "pending" and ok["name"] == "label_noise=0"
    assert bad["status"] == "failed" and "data.label_noise" in bad["reason"]
    with pytest.raises(RecipeError, match="expected KEY=V1,V2"):
        grid_mod.parse_grid(["train.lr"])
    assert grid_mod.parse_grid(["a.b=0,0.2,x,null"]) == {"a.b": [0, 0.2, "x", None]}
    with pytest.raises(RecipeError, match="an empty value"):
        grid_mod.parse_grid(["train.lr=0.1,,0.2"])


@pytest.mark.parametrize("grid", ["train.foo=1,2", "train.lr=abc,nan", "train.lr=0.1,,0.2",
                                  "analysis.n_fit=6,7"])
def test_a_grid_without_any_valid_point_is_refused(tmp_path, grid):
    """An unknown key, or values that make no point a valid recipe (also by a check that
    needs no data: n_fit above k = 5), or an empty value: exit 2 before anything is
    written (not a sweep of failed points)."""
    path = tiny_recipe(tmp_path, **ONE_RUN)
    out = tmp_path / "sw"
    result = cli("sweep", path, "--grid", grid, "--out", out)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not out.exists()


def test_changed_recipe_is_not_taken_as_finished(tmp_path):
    recipe = tiny_recipe(tmp_path, **ONE_RUN)
    grid = {"train.lr": [0.1]}
    first = sweep_mod.run_sweep(recipe.read_text(), grid, tmp_path / "s", scheduler="inline",
                                echo=lambda m: None)
    assert first["points"][0]["status"] == "done"
    changed = recipe.read_text().replace("epochs: 3", "epochs: 4")
    assert changed != recipe.read_text()
    again = sweep_mod.run_sweep(changed, grid, tmp_path / "s", scheduler="inline",
                                echo=lambda m: None)
    point = again["points"][0]
    assert point["status"] == "failed" and "made by a different recipe" in point["reason"]
    assert "epochs: 3 -> 4" in point["reason"]


def test_sweep_on_a_running_scheduler(tmp_path, monkeypatch):
    import distributed
    from distributed import LocalCluster

    def no_local_cluster(*args, **kwargs):
        raise AssertionError("--scheduler must use the running scheduler")

    recipe = tiny_recipe(tmp_path, **ONE_RUN)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        monkeypatch.setattr(distributed, "LocalCluster", no_local_cluster)
        result = cli("sweep", recipe, "--grid", "train.lr=0.3", "--scheduler",
                     cluster.scheduler_address, "--out", tmp_path / "s")
        assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "s")
    (point,) = manifest["points"]
    assert point["status"] == "done" and point["name"] == "lr=0.3"
    assert xr.open_zarr(point["store"], consolidated=False).done.values.all()
