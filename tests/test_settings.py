"""Settings seam: one settings object, eigenvectors on request, separate seeds,
provenance in the store, library errors recorded as failures."""

from __future__ import annotations

import json

import dense_reference as ref
import numpy as np
import pytest
import xarray as xr
from cases import run_cli, write_recipe

from awch_scale import analyze_checkpoint
from awch_scale.analysis import stages as analysis_module
from awch_scale.errors import SettingsError
from awch_scale.run.recipe import parse_recipe
from awch_scale.settings import AnalysisSettings, AwdSettings

N = 48


@pytest.fixture(scope="module")
def tiny():
    model, x, y = ref.make_model("fc", N)
    return model, x, y


def test_recipe_section_is_the_library_settings():
    text = """
name: s
analysis: {epochs: [1], k: 7, eigen: {tol: 1.0e-9}, awd: {draws: 3}, spectra: null}
"""
    spec = parse_recipe(text).analysis
    s = spec.settings()
    assert isinstance(s, AnalysisSettings) and not isinstance(s, type(spec))
    assert (s.k, s.eigen.tol, s.awd.draws, s.spectra) == (7, 1e-9, 3, None)
    # unset fields keep the one default, declared in settings.py
    assert s.awd.partner_batches == AwdSettings().partner_batches
    assert AnalysisSettings().with_overrides(k=7, eigen={"tol": 1e-9}, awd={"draws": 3},
                                             spectra=None) == s


def test_overrides_are_validated_and_frozen():
    s = AnalysisSettings()
    with pytest.raises(TypeError, match="unknown analysis setting 'n_draws'"):
        s.with_overrides(n_draws=3)
    with pytest.raises(SettingsError, match="'eigen.tol'"):
        s.with_overrides(eigen={"tol": -1.0})
    with pytest.raises(Exception, match="frozen"):
        s.k = 3  # type: ignore[misc]
    assert s.with_overrides(awd=False).awd is None
    assert s.with_overrides(awd=True).awd == AwdSettings()


def test_eigenvectors_on_request_match_dense(tiny):
    model, x, y = tiny
    k = 4
    ds = analyze_checkpoint(model, "fc2", x, y, loss="ce", batch_size=6, k=k, awd=None,
                            store_eigvec=True, eigen={"tol": 1e-12}, dtype=None)
    V = ds.hess_eigvec.values
    assert ds.hess_eigvec.dims == ("param", "eig") and V.shape == (ds.attrs["D"], k)
    vals, U = ref.dense_eigh(ref.dense_hessian(model, "fc2", x, y, "ce"))
    sep = ref.separated_indices(vals, k, 1e-3)
    np.testing.assert_allclose(np.abs(V[:, sep]), np.abs(U[:, sep]), atol=1e-6)
    # the SPEC sign convention: the entry of largest magnitude is positive
    assert np.all(V[np.abs(V).argmax(0), np.arange(k)] > 0)
    assert "hess_eigvec" not in analyze_checkpoint(model, "fc2", x, y, loss="ce", batch_size=6,
                                                   k=k, awd=None)


def test_streams_have_separate_seeds(tiny):
    model, x, y = tiny
    kw = dict(loss="ce", batch_size=6, k=4, awd={"draws": 2, "probe": 8, "partner_batches": 2},
              eigen={"tol": 1e-12})
    base = analyze_checkpoint(model, "fc2", x, y, seed=0, **kw)
    seeds = json.loads(str(base.provenance.values))["seeds"]
    assert len(set(seeds.values())) == len(seeds)  # derived streams differ
    # a new AWD seed moves only the AWD draws
    other = analyze_checkpoint(model, "fc2", x, y, seed=0, seeds={"awd": seeds["awd"] + 1}, **kw)
    np.testing.assert_allclose(other.hess_eigval, base.hess_eigval, rtol=1e-10)
    np.testing.assert_allclose(other.covar_mb, base.covar_mb, rtol=1e-10, atol=1e-16)
    assert not np.array_equal(other.pair_nu, base.pair_nu)
    # naming every stream's seed reproduces the run exactly, whatever the run seed
    again = analyze_checkpoint(model, "fc2", x, y, seed=123, seeds=seeds, **kw)
    for name in ("hess_eigval", "covar_mb", "pair_nu", "c_pair"):
        np.testing.assert_allclose(again[name], base[name], rtol=1e-10, atol=1e-16)


def test_provenance_is_stored_and_shown(tmp_path):
    path = write_recipe(tmp_path, **{"runs.seeds": [0], "analysis.epochs": [3],
                                     "analysis.awd": {"draws": 2, "probe": 6,
                                                      "partner_batches": 2}})
    assert run_cli("analyze", str(path), "-q").exit_code == 0
    store = tmp_path / "out" / "tiny.zarr"
    ds = xr.open_zarr(store, consolidated=False)
    prov = json.loads(str(ds.provenance.values[0, 0]))
    assert prov["operator"] == "KroneckerHessianOperator" and prov["eigen_method"] == "lanczos"
    assert prov["chunk_size"] == 16 and "awd_chunk_rows" in prov
    assert float(ds.awd_h1_rel_err.values[0, 0]) < 1e-6
    assert float(ds.seconds_eigen.values[0, 0]) > 0
    assert ds.covar.attrs["units"] == "loss^2/w^2"
    out = run_cli("show", str(store), "--provenance").output
    assert "KroneckerHessianOperator" in out and "versions:" in out and "torch" in out


def test_library_error_in_a_recipe_run_is_a_recorded_failure(tmp_path, monkeypatch):
    def broken(a):
        raise RuntimeError("simulated failure inside the covariance stage")

    stages = [(n, broken if n == "covariance" else f) for n, f in analysis_module.STAGES]
    monkeypatch.setattr(analysis_module, "STAGES", stages)
    path = write_recipe(tmp_path, **{"runs.seeds": [0], "analysis.epochs": [3],
                                     "analysis.awd": None})
    result = run_cli("analyze", str(path), "-q")
    assert "Traceback" not in result.output
    assert "RuntimeError: simulated failure" in " ".join(result.output.split())
    ds = xr.open_zarr(tmp_path / "out" / "tiny.zarr", consolidated=False)
    assert not bool(ds.done.values[0, 0])
    assert "simulated failure" in ds.attrs["failures"]["0/3"]


def test_eigenvectors_in_the_store_are_chunked_along_param(tmp_path, monkeypatch):
    from awch_scale.results import store as store_module

    monkeypatch.setattr(store_module, "PARAM_CHUNK", 16)
    path = write_recipe(tmp_path, **{"runs.seeds": [0], "analysis.epochs": [3],
                                     "analysis.store_eigvec": True, "analysis.awd": None})
    assert run_cli("analyze", str(path), "-q").exit_code == 0
    ds = xr.open_zarr(tmp_path / "out" / "tiny.zarr", consolidated=False)
    V = ds.hess_eigvec.values[0, 0]
    assert ds.hess_eigvec.dims == ("run", "epoch", "param", "eig") and V.shape == (36, 5)
    assert ds.hess_eigvec.encoding["chunks"] == (1, 1, 16, 5)
    np.testing.assert_allclose(V.T @ V, np.eye(5), atol=1e-5)  # float32 storage


def test_reference_conventions_reach_the_stages(tiny):
    """analysis.awd.pairing/anchors/cross_term and covar_mb.last_batch are passed through:
    the stored numbers equal the functions called with those options directly."""
    from awch_scale.analysis.awd import awd_analysis
    from awch_scale.analysis.covariance import minibatch_covariance
    from awch_scale.model.per_sample import projected_gradients
    from awch_scale.model.problem import make_problem

    model, x, y = tiny
    B = 5  # N = 48: the last minibatch is partial
    ds = analyze_checkpoint(
        model, "fc2", x, y, loss="ce", batch_size=B, k=4, eigen={"tol": 1e-12},
        awd={"draws": 3, "probe": 8, "partner_batches": 2, "pairing": "reference",
             "anchors": 4, "cross_term": "once"}, covar_mb={"last_batch": "keep"})
    seeds = json.loads(str(ds.provenance.values))["seeds"]
    problem = make_problem(model, "fc2", x, y, "ce")
    from awch_scale.analysis.context import hessian_operator
    from awch_scale.linalg.eigen import top_eigenpairs

    basis = top_eigenpairs(hessian_operator(problem), 4, seed=seeds["eigen"], tol=1e-12)
    direct = awd_analysis(problem, basis.vectors, basis.values, batch_size=B, n_draws=3,
                          n_probe=8, n_partner_batches=2, seed=seeds["awd"],
                          pairing="reference", n_anchors=4, cross_term="once")
    np.testing.assert_array_equal(ds.pair_mu, direct.pair_mu)
    for name in ("c_hg", "c_awd_raw", "c_pair"):
        np.testing.assert_allclose(ds[name], direct[name], rtol=1e-8, atol=1e-14)
    assert not np.allclose(ds.c_hg, ds.c_hg.T)  # "once": s_I s_II^T is not symmetric
    P = projected_gradients(problem, basis.vectors)
    mb = minibatch_covariance(P, B, seeds["covar_mb"], last_batch="keep").numpy()
    np.testing.assert_allclose(ds.covar_mb, 0.5 * (mb + mb.T), rtol=1e-8, atol=1e-14)
