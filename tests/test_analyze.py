"""analyze_checkpoint end to end on tiny models, against dense float64 references.

gamma is compared with a numpy log-log fit (dense_reference.loglog_fit) of
diag(U^T X U) on the dense eigenvalues, U the dense eigenvectors; diagonals do not
depend on eigenvector signs, and k is the longest prefix of the spectrum whose
eigenvalues are each separated from all others by 1% of |lambda_1|, so every
u_i is well defined. Tolerances: gamma 1e-6 absolute, stderr/r^2 1e-5 relative
(the eigsh tol is the default 1e-6; observed agreement ~1e-10).
"""

from __future__ import annotations

import json

import dense_reference as ref
import numpy as np
import problems
import pytest
import torch
import xarray as xr

from awch_scale.analysis.checkpoint import analyze_checkpoint
from awch_scale.errors import TargetError
from awch_scale.variables import VARIABLES

N, B = 40, 6
MIN_GAP = 0.01
ESTIMATORS = ["covar", "covar_mb", "covar_within"]
MATRICES = ["covar", "second_moment", "covar_mb", "covar_within"]


def analysed_case(kind, target, loss):
    """(model, x, y, G, dense eigenvalues, dense eigenvectors, k with separated prefix),
    from the session-cached registry case (kind, target, loss, N)."""
    d = problems.dense_reference(problems.case(kind, target, loss, N))
    sep = set(ref.separated_indices(d.vals, 10, MIN_GAP))
    k = 0
    while k in sep and k < 8:
        k += 1
    return d.model, d.x, d.y, d.G, d.vals, d.U, k


def run(model, target="fc2", x=None, y=None, **kw):
    kw = {"loss": "ce", "batch_size": B, "k": 4, "device": "cpu", "chunk_size": 9, "awd": None,
          "fisher": None, "stats": None, "spectra": None, "suppression": None,
          **kw}
    return analyze_checkpoint(model, target, x, y, **kw)


def test_dataset_structure_and_attributes():
    model, x, y, G, vals, U, _ = analysed_case("fc", "fc2", "ce")
    k = 5
    ds = run(model, "fc2", x, y, k=k, n_fit=4, seed=1)
    assert isinstance(ds, xr.Dataset)
    assert dict(ds.sizes) == {"eig": k, "eig_": k, "estimator": len(ESTIMATORS)}
    np.testing.assert_array_equal(ds.eig.values, np.arange(1, k + 1))
    np.testing.assert_array_equal(ds.eig_.values, np.arange(1, k + 1))
    assert list(ds.estimator.values) == ESTIMATORS
    dims = {"hess_eigval": ("eig",), "hess_residual": ("eig",),
            **{m: ("eig", "eig_") for m in MATRICES},
            **{g: ("estimator",) for g in ("gamma", "gamma_stderr", "gamma_r2", "gamma_n")}}
    provenance = {n for n in ds.data_vars if VARIABLES[n].stage == "provenance"}
    assert {"n_hvp", "eigen_passes", "chunk_size", "seconds_eigen", "seconds_covariance",
            "provenance"} <= provenance
    assert set(ds.data_vars) - provenance == set(dims)
    for name, d in dims.items():
        assert ds[name].dims == d, name
        assert ds[name].dtype == (np.int64 if name == "gamma_n" else np.float64), name
    prov = json.loads(str(ds.provenance.values))
    assert prov["operator"] == "KroneckerHessianOperator" and prov["eigen_method"] == "lanczos"
    assert prov["chunk_size"] == 9 and set(prov["seeds"]) >= {"eigen", "covar_mb", "awd"}
    assert int(ds.n_hvp) > 0 and int(ds.eigen_passes) > 0
    for name in ds.data_vars:
        attrs = ds[name].attrs
        assert isinstance(attrs.get("long_name"), str) and attrs["long_name"], name
        assert isinstance(attrs.get("description"), str) and attrs["description"], name
    a = ds.attrs
    assert (a["D"], a["N"], a["k"], a["n_fit"]) == (20, N, k, 4)
    assert (a["loss"], a["batch_size"], a["target"]) == ("ce", B, "fc2")
    assert a["dtype"] == "float64" and a["device"] == "cpu"
    assert np.all(ds.gamma_n.values <= 4)
    np.testing.assert_allclose(ds.hess_eigval.values, vals[:k], rtol=0, atol=1e-6 * vals[0])
    assert np.all(ds.hess_residual.values <= 1e-4)
    for m in MATRICES:  # symmetric up to round-off (not bit for bit: issue 7)
        problems.assert_symmetric(ds[m].values, 1e-15)


def test_default_n_fit_is_k_and_list_target():
    model, x, y, *_ = analysed_case("fc", "fc2", "ce")
    ds = run(model, ["fc2.weight", "out.weight"], x, y, k=3)
    assert ds.attrs["n_fit"] == 3 and ds.attrs["D"] == 20 + 16
    assert ds.attrs["target"] == "fc2.weight,out.weight"


@pytest.mark.parametrize("loss", ["ce", "mse", "lmse"])
@pytest.mark.parametrize("kind,target", [("fc", "fc2"), ("cnn", "fc1")])
def test_gamma_matches_dense_fit(kind, target, loss):
    model, x, y, G, vals, U, k = analysed_case(kind, target, loss)
    assert k >= 4, f"spectrum too degenerate for a gamma test: {vals[:10] / vals[0]}"
    assert np.all(vals[:k] > 0)
    seed = 5
    labels = np.asarray(y)
    within = sum(ref.dense_covariance(G[labels == c], 1) for c in np.unique(labels))
    dense = {"covar": ref.dense_covariance(G, B),
             "covar_mb": ref.dense_minibatch_covariance(G, B, seed),
             "covar_within": within / (B * len(np.unique(labels)))}
    for n_fit in (None, k - 1):
        ds = run(model, target, x, y, loss=loss, k=k, n_fit=n_fit, seeds={"covar_mb": seed})
        for est in ESTIMATORS:
            diag = np.einsum("di,de,ei->i", U[:, :k], dense[est], U[:, :k])
            np.testing.assert_allclose(np.diag(ds[est].values), diag, rtol=1e-6,
                                       atol=1e-6 * np.abs(diag).max())
            want = ref.loglog_fit(diag, vals[:k], n_fit or k)
            got = ds.sel(estimator=est)
            assert int(got.gamma_n) == want.n
            np.testing.assert_allclose(float(got.gamma), want.gamma, rtol=0, atol=1e-6)
            np.testing.assert_allclose(float(got.gamma_stderr), want.stderr, rtol=1e-5)
            np.testing.assert_allclose(float(got.gamma_r2), want.r2, rtol=1e-5)


def _assert_same(a: xr.Dataset, b: xr.Dataset):
    timed = [n for n in a.data_vars if str(n).startswith("seconds_")]
    a, b = a.drop_vars(timed), b.drop_vars(timed)
    assert set(a.variables) == set(b.variables) and dict(a.sizes) == dict(b.sizes)
    for name in a.variables:
        assert a[name].dims == b[name].dims and a[name].dtype == b[name].dtype, name
        va, vb = a[name].values, b[name].values
        if va.dtype.kind in "fciub":  # numbers: rtol 1e-12 (integers exactly)
            problems.assert_deterministic(va, vb, err_msg=str(name))
        else:  # strings (provenance JSON, estimator names)
            np.testing.assert_array_equal(va, vb, err_msg=str(name))
    timing = {n for n in a.attrs if n.startswith("seconds")}
    assert {n: v for n, v in a.attrs.items() if n not in timing} == \
        {n: v for n, v in b.attrs.items() if n not in timing}


def test_deterministic():
    model, x, y, *_ = analysed_case("cnn", "fc1", "mse")
    a = run(model, "fc1", x, y, loss="mse", k=4, seed=3)
    b = run(model, "fc1", x, y, loss="mse", k=4, seed=3)
    _assert_same(a, b)
    # another seed changes only the Lanczos start and the C_mb shuffle
    c = run(model, "fc1", x, y, loss="mse", k=4, seed=4)
    np.testing.assert_allclose(c.hess_eigval.values, a.hess_eigval.values, rtol=1e-6)
    for m in ("covar", "second_moment"):
        np.testing.assert_allclose(np.diag(c[m].values), np.diag(a[m].values), rtol=1e-5)
    problems.assert_differ(c.covar_mb.values, a.covar_mb.values)


def test_errors():
    model, x, y, *_ = analysed_case("fc", "fc2", "ce")
    with pytest.raises(ValueError, match="k"):
        run(model, "fc2", x, y, k=20)  # k = D
    with pytest.raises(ValueError, match="k"):
        run(model, "fc2", x, y, k=25)
    with pytest.raises(ValueError, match="k"):
        run(model, "fc2", x, y, k=0)
    with pytest.raises(ValueError, match="n_fit"):
        run(model, "fc2", x, y, k=4, n_fit=5)
    with pytest.raises(ValueError, match="batch"):
        run(model, "fc2", x, y, batch_size=N + 1)
    with pytest.raises(TargetError) as info:
        run(model, "fc7", x, y)
    msg = str(info.value)
    assert "fc7" in msg
    for layer in ("fc1", "fc2", "out"):
        assert layer in msg
    with pytest.raises(TargetError):
        run(model, ["fc2.weight", "nope.weight"], x, y)
    cnn, xc, yc, *_ = analysed_case("cnn", "fc1", "ce")
    with pytest.raises(TargetError) as info:
        run(cnn, "head", xc, yc)
    msg = str(info.value)
    assert "fc1" in msg and "out" in msg
    # a Linear target with a bias is analysed as the block (weight, bias) (SPEC 1, issue 19)
    biased = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3)).double()
    ds = run(biased, "1", x, y % 3, k=3)
    assert ds.attrs["D"] == 21 and ds.attrs["operator"] == "HessianOperator"


@pytest.mark.parametrize("dtype", [None, torch.float64])
def test_callers_model_and_data_unchanged(dtype):
    model, x, y = ref.make_model("cnn", N, dtype=torch.float32)
    model.train()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    x0, y0 = x.clone(), y.clone()
    flags = [m.training for m in model.modules()]
    ds = run(model, "fc1", x, y, k=3, dtype=dtype)
    assert ds.attrs["dtype"] == ("float32" if dtype is None else "float64")
    assert [m.training for m in model.modules()] == flags and model.training
    after = model.state_dict()
    assert after.keys() == before.keys()
    for n, t in before.items():
        problems.assert_untouched(t, after[n])
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    problems.assert_untouched(x0, x)
    problems.assert_untouched(y0, y)


def test_float32_model_close_to_float64():
    model32, x32, y = ref.make_model("fc", N, dtype=torch.float32)
    a = run(model32, "fc2", x32, y, k=4)
    b = run(model32, "fc2", x32, y, k=4, dtype=torch.float64)
    assert a.attrs["dtype"] == "float32" and b.attrs["dtype"] == "float64"
    np.testing.assert_allclose(a.hess_eigval.values, b.hess_eigval.values, rtol=1e-4)
    for m in ("covar", "second_moment"):
        d = np.abs(np.diag(b[m].values)).max()
        np.testing.assert_allclose(np.diag(a[m].values), np.diag(b[m].values), rtol=0,
                                   atol=1e-4 * d)


@pytest.mark.parametrize("n_fit", [-1, -10])
def test_negative_n_fit_raises(n_fit):
    model, x, y, *_ = analysed_case("fc", "fc2", "ce")
    with pytest.raises(ValueError, match="n_fit"):
        run(model, "fc2", x, y, k=5, n_fit=n_fit)


@pytest.mark.parametrize("batch_size", [0, -6])
def test_non_positive_batch_size_raises_value_error(batch_size):
    model, x, y, *_ = analysed_case("fc", "fc2", "ce")
    with pytest.raises(ValueError, match="batch"):
        run(model, "fc2", x, y, batch_size=batch_size)


def test_memory_plan_chunk_follows_the_route():
    """Generic blocks: a chunk holds ~4 * chunk * D per-sample gradient values in a
    quarter of the budget; a Linear target on the rank-one route (k given) instead holds
    ~3 * chunk * d_out * max(k, 64) values (no D-vector per sample)."""
    from awch_scale.analysis.memory import memory_plan
    from awch_scale.model.problem import make_problem

    model, x, y = ref.make_model("fc", 2000)
    problem = make_problem(model, "fc2", x, y, "ce", dtype=torch.float64)  # D 20, d_out 4
    quarter = 2**20 // 4
    assert memory_plan(problem, 1.0).chunk_size == quarter // (4 * 20 * 8)  # 409
    assert memory_plan(problem, 1.0, k=10).chunk_size == quarter // (3 * 4 * 64 * 8)  # 42
    assert memory_plan(problem, 1.0, k=200).chunk_size == max(8, quarter // (3 * 4 * 200 * 8))
    assert memory_plan(problem, 1.0, chunk_size=7, k=10).chunk_size == 7


def test_library_chooses_threads_like_the_cli(monkeypatch):
    """A plain library call runs with the CLI's automatic thread count (not torch's
    default); analysis.threads wins; a process that chose its threads keeps them."""
    import awch_scale.threads as threads

    model, x, y, *_ = analysed_case("fc", "fc2", "ce")
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_chosen", [])
    monkeypatch.setattr(threads, "auto_threads", lambda *a, **k: 1)
    monkeypatch.setattr(threads, "_TORCH_DEFAULT", 2)  # as if torch started with 2
    try:
        torch.set_num_threads(2)
        assert int(run(model, x=x, y=y).n_threads) == 1  # auto, as the CLI chooses
        assert torch.get_num_threads() == 2  # restored after the call
        assert int(run(model, x=x, y=y, threads=2).n_threads) == 2  # the setting wins
        torch.set_num_threads(3)  # set directly (not torch's default): left as it is
        assert int(run(model, x=x, y=y).n_threads) == 3
        torch.set_num_threads(2)
        threads.set_threads(2)  # the CLI (or a rank) chose: the library leaves them
        assert int(run(model, x=x, y=y).n_threads) == 2
    finally:
        torch.set_num_threads(before)


def test_progress_defaults_to_interactive_sessions(monkeypatch, capsys):
    """progress=None shows bars only when stderr is a terminal; progress=False never."""
    import sys

    model, x, y, *_ = analysed_case("fc", "fc2", "ce")
    run(model, x=x, y=y, progress=None)
    assert "per-sample gradients" not in capsys.readouterr().err  # not a terminal: silent

    class Tty:
        def __init__(self, real):
            self.real = real

        def isatty(self):
            return True

        def __getattr__(self, name):
            return getattr(self.real, name)

    monkeypatch.setattr(sys, "stderr", Tty(sys.stderr))
    run(model, x=x, y=y, progress=None)
    assert "per-sample gradients" in capsys.readouterr().err  # a terminal: bars
    run(model, x=x, y=y, progress=False)
    assert capsys.readouterr().err == ""
