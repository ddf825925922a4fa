"""End-to-end tests of ``awch-scale analyze/validate/show``: errors, store, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from cases import _DELETE, run_cli, write_recipe

from awch_scale.run import runner


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"train.momentum": 0.9}, "unknown key 'train.momentum'"),
        ({"analysis.k": "many"}, "'analysis.k'"),
        ({"analysis.k": 36}, "must be smaller than the target block's D = 36"),
        ({"analysis.target": "fc9"}, "fc1 (6->6), fc2 (6->6), out (6->10)"),
        ({"data.dataset": "mnist", "data.root": "/nonexistent/mnist", "data.gauss": _DELETE},
         "/nonexistent/mnist"),
        ({"train.batch_size": 500}, "'train.batch_size' = 500 exceeds"),
        ({"loss": "hinge"}, "'loss'"),
    ],
    ids=["unknown-key", "wrong-type", "k-too-large", "unknown-target", "missing-root",
         "batch-too-large", "bad-loss"],
)
def test_bad_recipe_exit_2_nothing_written(tmp_path, changes, needle):
    path = write_recipe(tmp_path, **changes)
    for command in ("analyze", "validate"):
        result = run_cli(command, str(path))
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        flat = " ".join(result.output.split())
        assert needle in flat, flat
    assert not (tmp_path / "out").exists()


def test_missing_recipe_file(tmp_path):
    result = run_cli("analyze", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "cannot read recipe" in result.output


def test_analyze_writes_labelled_store(tmp_path):
    path = write_recipe(tmp_path)
    result = run_cli("analyze", str(path), "--quiet")
    assert result.exit_code == 0, result.output
    store = tmp_path / "out" / "tiny.zarr"
    ds = xr.open_zarr(store, consolidated=False)
    assert ds.done.values.all()
    assert ds.covar.dims == ("run", "epoch", "eig", "eig_")
    assert ds.gamma.dims == ("run", "epoch", "estimator")
    assert list(ds.run.values) == [0, 1] and list(ds.epoch.values) == [1, 3]
    for name in ds.data_vars:
        assert ds[name].attrs.get("long_name"), name
        assert ds[name].attrs.get("description"), name
    assert ds.attrs["recipe"] == path.read_text()
    assert "torch" in ds.attrs["versions"]
    # eigenvalues descending and finite; checkpoints beside the store load safely
    lam = ds.hess_eigval.values
    assert np.all(np.diff(lam, axis=-1) <= 0)
    import torch

    ckpt = tmp_path / "out" / "tiny.ckpt" / "run-1" / "epoch-00003.pt"
    assert torch.load(ckpt, weights_only=True)["fc2.weight"].shape == (6, 6)
    shown = run_cli("show", str(store))
    assert shown.exit_code == 0 and "gamma_emp" in shown.output


def test_same_recipe_same_numbers(tmp_path):
    a = write_recipe(tmp_path / "a")
    b = write_recipe(tmp_path / "b")
    assert run_cli("analyze", str(a), "-q").exit_code == 0
    assert run_cli("analyze", str(b), "-q").exit_code == 0
    da_ = xr.open_zarr(tmp_path / "a" / "out" / "tiny.zarr", consolidated=False)
    db_ = xr.open_zarr(tmp_path / "b" / "out" / "tiny.zarr", consolidated=False)
    for name in ("covar", "hess_eigval", "gamma", "covar_mb", "curve_train_loss"):
        np.testing.assert_allclose(da_[name].values, db_[name].values, rtol=1e-12, atol=0)


def test_interrupted_analyze_resumes_without_redoing(tmp_path, monkeypatch):
    path = write_recipe(tmp_path)
    calls: list[tuple[int, int]] = []
    original = runner.analyze_one

    def flaky(plan, seed, epoch, progress, **kw):
        calls.append((seed, epoch))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(plan, seed, epoch, progress, **kw)

    monkeypatch.setattr(runner, "analyze_one", flaky)
    result = run_cli("analyze", str(path), "-q")
    assert result.exit_code == 130
    store = tmp_path / "out" / "tiny.zarr"
    done = xr.open_zarr(store, consolidated=False).done.values
    assert done.tolist() == [[True, True], [False, False]]
    before = xr.open_zarr(store, consolidated=False).covar.values[0].copy()

    calls.clear()
    result = run_cli("analyze", str(path), "-q")
    assert result.exit_code == 0, result.output
    assert calls == [(1, 1), (1, 3)]  # only the unfinished analyses ran
    ds = xr.open_zarr(store, consolidated=False)
    assert ds.done.values.all()
    np.testing.assert_array_equal(ds.covar.values[0], before)  # the same chunks, not rewritten

    # the resumed store equals an uninterrupted one
    monkeypatch.setattr(runner, "analyze_one", original)
    fresh = write_recipe(tmp_path / "fresh")
    assert run_cli("analyze", str(fresh), "-q").exit_code == 0
    ref = xr.open_zarr(tmp_path / "fresh" / "out" / "tiny.zarr", consolidated=False)
    np.testing.assert_allclose(ds.covar.values, ref.covar.values, rtol=1e-12, atol=0)


def test_sigkill_then_rerun_completes(tmp_path):
    """A hard kill (SIGKILL) mid-way leaves a store that a rerun completes."""
    path = write_recipe(tmp_path, **{"runs.seeds": [0, 1, 2, 3], "analysis.k": 8})
    store = tmp_path / "out" / "tiny.zarr"
    code = textwrap.dedent("""
        import sys
        from awch_scale.cli import app
        sys.argv = ["awch-scale", "analyze", sys.argv[1], "-q"]
        app()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = False
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done_files = list((store / "done" / "c").rglob("*")) if store.exists() else []
        if store.exists() and any(f.is_file() for f in done_files):
            ds = xr.open_zarr(store, consolidated=False)
            if ds.done.values.any():
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.05)
    proc.wait()
    result = run_cli("analyze", str(path), "-q")
    assert result.exit_code == 0, result.output
    ds = xr.open_zarr(store, consolidated=False)
    assert ds.done.values.all()
    assert np.isfinite(ds.covar.values).all()
    if killed:
        assert "already done, skipped" in result.output or "already in the store" in result.output


def test_changed_recipe_refuses_existing_store(tmp_path):
    path = write_recipe(tmp_path)
    assert run_cli("analyze", str(path), "-q").exit_code == 0
    path2 = write_recipe(tmp_path, **{"train.lr": 0.05})
    result = run_cli("analyze", str(path2), "-q")
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "different recipe" in flat and "train.lr:" in flat and "-> 0.05" in flat


def test_comments_and_formatting_do_not_refuse_a_resume(tmp_path):
    """The recipe check compares the parsed recipe: the same values written with a comment,
    another key order and flow style resume the store (nothing recomputed)."""
    import yaml

    path = write_recipe(tmp_path)
    assert run_cli("analyze", str(path), "-q").exit_code == 0
    store = yaml.safe_load(path.read_text())["store"]
    before = {p: p.stat().st_mtime_ns for p in Path(store).rglob("*") if p.is_file()}
    recipe = yaml.safe_load(path.read_text())
    reordered = dict(reversed(list(recipe.items())))
    path.write_text("# the same values, written differently\n"
                    + yaml.safe_dump(reordered, default_flow_style=True, sort_keys=False))
    result = run_cli("analyze", str(path), "-q")
    assert result.exit_code == 0, result.output
    after = {p: p.stat().st_mtime_ns for p in Path(store).rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p.suffix != ".lock"} == \
        {p: t for p, t in before.items() if p.suffix != ".lock"}


def test_divergence_marks_run_failed(tmp_path):
    path = write_recipe(tmp_path, **{"train.lr": 1e12, "loss": "lmse", "dtype": "float32",
                                     "train.clip_grad_norm": None, "train.cosine": None,
                                     "runs.seeds": [0]})
    result = run_cli("analyze", str(path), "-q")
    assert result.exit_code == 3, result.output  # finished with failures: not 0
    flat = " ".join(result.output.split())
    assert "diverged" in flat and "0 of 2 analyses done; 1 failure(s)" in flat
    ds = xr.open_zarr(tmp_path / "out" / "tiny.zarr", consolidated=False)
    assert bool(ds.failed.values[0]) and not ds.done.values.any()
    assert "diverged" in ds.attrs["failures"]["0"]
    shown = run_cli("show", str(tmp_path / "out" / "tiny.zarr"))
    assert shown.exit_code == 0 and "failed" in shown.output


def test_awd_variables_in_store_and_show(tmp_path):
    path = write_recipe(tmp_path, **{"runs.seeds": [0],
                                     "analysis.awd": {"draws": 3, "probe": 8,
                                                      "partner_batches": 2,
                                                      "probe_spectra": True, "n_modes": 2},
                                     "analysis.diag_only": ["c_gg", "covar_mb"]})
    assert run_cli("analyze", str(path), "-q").exit_code == 0
    store = tmp_path / "out" / "tiny.zarr"
    ds = xr.open_zarr(store, consolidated=False)
    assert ds.h2.dims == ("run", "epoch", "eig", "eig_")
    assert ds.c_gg.dims == ("run", "epoch", "eig") and ds.covar_mb.dims == ds.c_gg.dims
    assert ds.pair_nu.dims == ("run", "epoch", "draw", "slot") and ds.pair_nu.shape[-2:] == (3, 10)
    assert ds.kappa.dims == ("run", "epoch", "probe", "mode") and ds.kappa.shape[-1] == 2
    assert {"covar", "h2", "c_awd_raw", "c_pair"} <= set(ds.estimator.values.tolist())
    assert ds.gamma_n.dtype == np.int64
    assert np.isfinite(ds.gamma.sel(estimator="h2").values).all()
    shown = run_cli("show", str(store))
    assert "gamma_AWD" in shown.output


def test_several_target_layers(tmp_path):
    path = write_recipe(tmp_path, **{"runs.seeds": [0], "analysis.epochs": [3],
                                     "analysis.target": ["fc1", "fc2"],
                                     "analysis.awd": {"draws": 2, "probe": 6,
                                                      "partner_batches": 2}})
    result = run_cli("analyze", str(path), "-q")
    assert result.exit_code == 0, result.output
    ds = xr.open_zarr(tmp_path / "out" / "tiny.zarr", consolidated=False)
    assert list(ds.layer.values) == ["fc1", "fc2"]
    assert ds.covar.dims == ("run", "epoch", "layer", "eig", "eig_")
    # each layer equals a single-layer analysis of the same checkpoint
    import torch

    from awch_scale import analyze_checkpoint
    from awch_scale.run.plan import prepare
    from awch_scale.run.recipe import load_recipe

    plan = prepare(*load_recipe(path))
    model = plan.new_model(0)
    model.load_state_dict(torch.load(tmp_path / "out" / "tiny.ckpt" / "run-0" / "epoch-00003.pt",
                                     weights_only=True))
    one = analyze_checkpoint(model, "fc1", plan.data.x_analysis, plan.data.y_analysis, seed=0,
                             dtype=torch.float64, loss=plan.recipe.loss,
                             batch_size=plan.recipe.train.batch_size,
                             settings=plan.recipe.analysis.settings())
    np.testing.assert_allclose(ds.hess_eigval.sel(layer="fc1").values[0, 0],
                               one.hess_eigval.values, rtol=1e-6)
    np.testing.assert_allclose(ds.h2.sel(layer="fc1").values[0, 0], one.h2.values, rtol=1e-5,
                               atol=1e-12)
    assert "layer" in run_cli("show", str(tmp_path / "out" / "tiny.zarr")).output


def test_awd_on_non_linear_target_validates_and_c_awd_raw_is_a_recipe_error(tmp_path):
    """AWD on a conv block computes h2 and c_pair (issue 19); c_awd_raw needs a Linear."""
    changes = {"analysis.target": "conv1", "data.dataset": "digits", "data.gauss": _DELETE,
               "model.arch": "cnn"}
    assert run_cli("validate", str(write_recipe(tmp_path, **changes))).exit_code == 0
    path = write_recipe(tmp_path, **changes,
                        **{"analysis.stats": {"covariance": ["covar", "c_awd_raw"]}})
    result = run_cli("validate", str(path))
    assert result.exit_code == 2
    assert "analysis.stats.covariance" in " ".join(result.output.split())


def test_plot_writes_pngs(tmp_path):
    path = write_recipe(tmp_path, **{"runs.seeds": [0], "analysis.epochs": [3],
                                     "analysis.awd": {"draws": 2, "probe": 6,
                                                      "partner_batches": 2}})
    assert run_cli("analyze", str(path), "-q").exit_code == 0
    store = tmp_path / "out" / "tiny.zarr"
    result = run_cli("plot", str(store), "--out", str(tmp_path / "figs"))
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "figs").glob("*.png"))
    assert [p.name for p in pngs] == ["powerlaw_run0_epoch3.png"]
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_cli("plot", str(tmp_path / "nope.zarr")).exit_code == 2
