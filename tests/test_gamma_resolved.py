"""Issue 20, first class: a gamma is fitted only over resolved eigenvalues and X_ii.

The rule under test (SPEC 6, ``awch_scale.analysis.powerlaw.fit_resolved``), restated
here independently of the package:

- the fit range is the leading run of eigenvalues lambda_i (i <= n_fit) that are finite,
  positive and above max(hess_residual_i, eigen.tol, eps) |lambda_1| and tiny / eps
  (eps, tiny: machine epsilon and smallest normal of the products' dtype);
- inside it the X_ii that are finite and above max(tiny / eps, eps^2 max_j |X_jj|) are
  fitted (log10 X_ii on log10 lambda_i, least squares), the others left out;
- fewer than 3 such points: gamma is NaN. ``gamma_n`` is the number of points used, and
  ``provenance["gamma_fit"][estimator]`` gives it again with the reason for every point
  left out;
- settings that can never give 3 points (k < 3 without n_fit; n_fit > k) are refused by
  the one validator, so ``awch-scale validate`` refuses them too.

Cases (tiny models built here, float64 and float32): the issue's D = 16 block of rank 12
with k = 15 (a bias-free last layer under ce: each Q_p = diag(p) - p p^T has the null
vector 1, so H has rank (K - 1) d_in = 12), where the three eigensolvers used to give
three different gammas from lambda_13..15 ~ 1e-17 and must now agree; constant inputs
making H rank 2; weights at 1e-9 of their scale in float32 (h2 ~ 1e-37 underflows); all
weights at 1e-9 (every eigenvalue ~ 1e-37). A property test (a seeded enumeration:
hypothesis is not among the project's test dependencies) runs small targets with k up to
D - 1, constant and duplicated inputs and tiny weight scales, and checks every stored
gamma against the rule and every fitted eigenvalue against a dense float64 Hessian (an
eigenvalue of H lies within the accuracy of it).
"""

from __future__ import annotations

import json

import dense_reference as ref
import numpy as np
import pytest
import torch
from cases import run_cli, write_recipe
from scipy.stats import linregress

from awch_scale import analyze_checkpoint
from awch_scale.errors import ConvergenceError, SettingsError

N, B = 24, 4
QUICK = dict(awd={"draws": 3, "probe": 6, "partner_batches": 2}, fisher={"eigval": False},
             stats=None, spectra=None, suppression=None)


def _model(dtype, *, hidden=(5, 4), n_out=4, scale=None, seed=1):
    """make_fc with layer ``name`` multiplied by ``scale[name]``."""
    model = ref.make_fc(hidden=hidden, n_out=n_out, seed=seed, dtype=dtype)
    with torch.no_grad():
        for name, factor in (scale or {}).items():
            getattr(model, name).weight.mul_(factor)
    return model


def _data(kind, dtype, n_classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 6, generator=gen, dtype=torch.float64)
    if kind == "constant":
        x = torch.ones_like(x)
    elif kind == "duplicated":  # every sample twice
        x = torch.cat([x[: N // 2], x[: N // 2]])
    return x.to(dtype), torch.arange(N) % n_classes


def _analyse(model, target, x, y, **kw):
    kw = {"loss": "ce", "batch_size": B, "device": "cpu", **QUICK, **kw}
    return analyze_checkpoint(model, target, x, y, **kw)


def _fit(ds, name):
    return json.loads(str(ds.provenance.values))["gamma_fit"][name]


# ----------------------------------------------------------------------------- the rule


def expected_fit(ds, name):
    """(range n_lam, mask of the fitted points) by the rule restated above."""
    info = np.finfo(np.dtype(ds.attrs["dtype"]))
    eps, floor = float(info.eps), float(info.tiny / info.eps)
    tol = json.loads(ds.attrs["settings"])["eigen"]["tol"]
    n_fit = int(ds.attrs["n_fit"])
    lam = ds.hess_eigval.values[:n_fit].astype(np.float64)
    res = ds.hess_residual.values[:n_fit].astype(np.float64)
    thr = np.maximum(np.maximum(res, max(tol, eps)) * abs(lam[0]), floor)
    good = np.isfinite(lam) & (lam > thr)
    n_lam = n_fit if good.all() else int(np.argmin(good))
    x = np.diag(ds[name].values) if ds[name].ndim == 2 else ds[name].values
    x = x[:n_fit].astype(np.float64)
    top = np.abs(x[np.isfinite(x)]).max() if np.isfinite(x).any() else 0.0
    mask = np.isfinite(x) & (x > max(floor, eps**2 * top))
    mask[n_lam:] = False
    return n_lam, mask


def spec_fit(x, lam, mask):
    """(gamma, stderr) as SPEC 6 fits: scipy.stats.linregress of log10 X_ii on log10
    lambda_i over the masked points (NaN with fewer than 3 points or equal lambdas)."""
    if mask.sum() < 3 or np.ptp(lam[mask]) == 0:
        return np.nan, np.nan
    fit = linregress(np.log10(lam[mask]), np.log10(x[mask]))
    return fit.slope, fit.stderr


def assert_resolved(ds, dense_eigvals=None):
    """Every stored gamma obeys the rule; its points are above the eigensolver's stated
    accuracy; gamma_n and provenance agree; with ``dense_eigvals`` (the float64 spectrum
    of H) each fitted lambda_i has an eigenvalue of H within its accuracy (Bauer-Fike)."""
    n_fit = int(ds.attrs["n_fit"])
    lam, res = ds.hess_eigval.values, ds.hess_residual.values
    tol = json.loads(ds.attrs["settings"])["eigen"]["tol"]
    eps = float(np.finfo(np.dtype(ds.attrs["dtype"])).eps)
    for name in ds.estimator.values:
        got = ds.sel(estimator=name)
        gamma, n = float(got.gamma), int(got.gamma_n)
        n_lam, mask = expected_fit(ds, name)
        assert n == int(mask.sum()), name
        x = np.diag(ds[name].values) if ds[name].ndim == 2 else ds[name].values
        want_gamma, want_stderr = spec_fit(x[:mask.size], lam[:mask.size], mask)
        if np.isfinite(gamma):
            assert n >= 3, name
            used = np.flatnonzero(mask)
            # above the residual bound and the tolerance: not a number from noise
            assert np.all(lam[used] > np.maximum(res[used], tol) * abs(lam[0])), name
            assert np.all(x[used] > 0), name
            np.testing.assert_allclose(gamma, want_gamma, rtol=1e-12, atol=1e-14,
                                       err_msg=str(name))
            np.testing.assert_allclose(float(got.gamma_stderr), want_stderr, rtol=1e-12,
                                       atol=1e-14, err_msg=str(name))
            if dense_eigvals is not None:
                for i in used:
                    gap = np.abs(dense_eigvals - lam[i]).min()
                    assert gap <= (max(res[i], tol) + 100 * eps) * abs(lam[0]), (name, i)
        else:
            assert np.isnan(want_gamma) and np.isnan(float(got.gamma_stderr)), name
        entry = _fit(ds, str(name))
        assert entry["n"] == n, name
        if n < n_fit or not np.isfinite(gamma):
            assert entry["reason"], (name, entry)
        else:
            assert entry["reason"] is None, (name, entry)
        if not np.isfinite(gamma):
            assert "gamma is NaN" in entry["reason"], (name, entry)
        if n_lam < n_fit:
            assert f"lambda_{n_lam + 1} = " in entry["reason"], (name, entry)


# ----------------------------------------------------------------------------- the issue's cases

DTYPES = [torch.float64, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_rank_12_block_with_k_15_solvers_agree(dtype):
    """D = 16, rank 12, k = 15: lambda_13..15 are below the solvers' accuracy, so every
    gamma uses at most 12 points, and auto / eigsh / block agree within their accuracy
    (they gave 1.00, 0.98 and 1.19 from the noise eigenvalues before)."""
    model = _model(dtype)
    x, y = _data("random", dtype)
    runs = {m: _analyse(model, "out", x, y, k=15, eigen={"method": m})
            for m in ("auto", "eigsh", "block")}
    for method, ds in runs.items():
        lam = ds.hess_eigval.values
        assert np.all(np.abs(lam[12:]) < 1e-5 * lam[0]), (method, lam)  # the null space
        assert_resolved(ds)
        assert np.all(ds.gamma_n.values <= 12), method
        assert int(ds.gamma_n.sel(estimator="covar")) == 12, method
        assert "lambda_13 = " in _fit(ds, "covar")["reason"]
    first = runs["auto"]
    for method, ds in runs.items():
        np.testing.assert_array_equal(ds.gamma_n.values, first.gamma_n.values, err_msg=method)
        np.testing.assert_allclose(ds.gamma.values, first.gamma.values, rtol=0,
                                   atol=1e-6 if dtype == torch.float64 else 1e-3,
                                   err_msg=method)


CASES = {
    # constant inputs and K = 3 classes: H = Q ⊗ a a^T with rank(Q) = 2, so H has rank 2;
    # lambda_3..6 are noise and every gamma must be NaN, each with its reason
    "constant-inputs-rank-2": dict(
        target="out", k=6, data="constant", model=dict(n_out=3), classes=3,
        nan=["*"], max_n=2, reason="lambda_3 = "),
    # the first layer at 1e-9 of its scale: the eigenvalues (~1e-19) and the covariances
    # are resolved, but h2 ~ 1e-37 and the AWD terms underflow float32
    "first-layer-tiny": dict(
        target="fc2", k=6, data="random", model=dict(scale={"fc1": 1e-9}),
        dtypes=[torch.float32],
        nan=["h2", "c_hh", "c_hh_sd", "c_hh_sd_wd", "c_li"], finite=["covar", "fisher"],
        reason="underflow / rounding floor"),
    # every layer at 1e-9 of its scale: lambda_1 ~ 1e-37, below float32's underflow floor
    "all-weights-tiny": dict(
        target="fc2", k=6, data="random",
        model=dict(scale={"fc1": 1e-9, "fc2": 1e-9, "out": 1e-9}), dtypes=[torch.float32],
        nan=["*"], max_n=0, reason="below the float32 underflow floor"),
    # duplicated samples: a healthy spectrum, every gamma from all k points
    "duplicated-inputs": dict(
        target="fc2", k=5, data="duplicated", finite=["*"], min_n=5),
}


@pytest.mark.parametrize(("case", "dtype"), [
    pytest.param(case, dtype, id=f"{name}-{str(dtype)[6:]}")
    for name, case in CASES.items() for dtype in case.get("dtypes", DTYPES)])
def test_issue_cases(case, dtype):
    model = _model(dtype, **case.get("model", {}))
    x, y = _data(case["data"], dtype, n_classes=case.get("classes", 4))
    ds = _analyse(model, case["target"], x, y, k=case["k"])
    dense = np.linalg.eigvalsh(ref.dense_hessian(model, case["target"], x.double(), y, "ce"))
    assert_resolved(ds, dense if dtype == torch.float64 else None)
    names = list(ds.estimator.values)
    nan = names if case.get("nan") == ["*"] else case.get("nan", [])
    finite = names if case.get("finite") == ["*"] else case.get("finite", [])
    for name in nan:
        assert np.isnan(float(ds.gamma.sel(estimator=name))), name
        assert case["reason"] in _fit(ds, name)["reason"], (name, _fit(ds, name))
    for name in finite:
        assert np.isfinite(float(ds.gamma.sel(estimator=name))), (name, _fit(ds, name))
    if "max_n" in case:
        assert np.all(ds.gamma_n.values <= case["max_n"])
    if "min_n" in case:
        assert np.all(ds.gamma_n.values >= case["min_n"]), ds.gamma_n.values


# ----------------------------------------------------------------------------- property test


def small_problems(n: int, seed: int = 20) -> list[dict]:
    """``n`` seeded draws of a small target (fc2 or out of a bias-free MLP, D 4..20), k up
    to D - 1, an n_fit, random / constant / duplicated inputs, a weight scale, a dtype, a
    loss and an eigensolver."""
    rng = np.random.default_rng(seed)
    scales = [None, {"fc1": 1e-9}, {"out": 1e-4}, {"fc1": 1e-9, "fc2": 1e-9, "out": 1e-9}]
    out = []
    for _ in range(n):
        h1, h2, n_out = int(rng.integers(2, 6)), int(rng.integers(2, 5)), int(rng.integers(2, 5))
        target = str(rng.choice(["fc2", "out"]))
        D = h1 * h2 if target == "fc2" else h2 * n_out
        k = int(rng.integers(3, D))  # 3..D-1
        n_fit = None if rng.random() < 0.5 else int(rng.integers(3, k + 1))
        out.append(dict(hidden=(h1, h2), n_out=n_out, target=target, k=k, n_fit=n_fit,
                        scale=scales[rng.integers(len(scales))],
                        data=str(rng.choice(["random", "constant", "duplicated"])),
                        dtype=DTYPES[rng.integers(2)], loss=str(rng.choice(["ce", "mse"])),
                        method=str(rng.choice(["auto", "eigsh"])), seed=int(rng.integers(4))))
    return out


PROBLEMS = small_problems(40)


@pytest.mark.parametrize("p", PROBLEMS, ids=[f"p{i}" for i in range(len(PROBLEMS))])
def test_every_stored_gamma_is_from_resolved_values(p):
    model = _model(p["dtype"], hidden=p["hidden"], n_out=p["n_out"], scale=p["scale"],
                   seed=p["seed"])
    x, y = _data(p["data"], p["dtype"], n_classes=min(p["n_out"], 4), seed=p["seed"])
    try:
        ds = _analyse(model, p["target"], x, y, k=p["k"], n_fit=p["n_fit"], loss=p["loss"],
                      eigen={"method": p["method"]}, seed=p["seed"])
    except ConvergenceError:  # an error is never a silent number (a dead block)
        return
    dense = None
    if p["dtype"] == torch.float64:
        dense = np.linalg.eigvalsh(ref.dense_hessian(model, p["target"], x, y, p["loss"]))
    assert_resolved(ds, dense)
    assert ds.attrs["n_fit"] == (p["n_fit"] or p["k"])


# ----------------------------------------------------------------------------- refused up front


def test_library_refuses_settings_that_cannot_give_three_points():
    model = _model(torch.float64)
    x, y = _data("random", torch.float64)
    with pytest.raises(SettingsError, match=r"^'k' = 2 leaves 2 point\(s\) for the gamma fits"):
        _analyse(model, "fc2", x, y, k=2)
    with pytest.raises(SettingsError, match="^'n_fit' = 6 must not exceed k = 5"):
        _analyse(model, "fc2", x, y, k=5, n_fit=6)
    with pytest.raises(SettingsError, match="'n_fit'"):
        _analyse(model, "fc2", x, y, k=2, n_fit=2)


@pytest.mark.parametrize("changes,key", [
    ({"analysis.k": 2}, "'analysis.k' = 2 leaves 2 point(s) for the gamma fits"),
    ({"analysis.k": 2, "analysis.n_fit": 3}, "'analysis.n_fit' = 3 must not exceed"),
], ids=["k-2", "n_fit-above-k-2"])
def test_validate_refuses_too_few_points(tmp_path, changes, key):
    path = write_recipe(tmp_path, **changes)
    for command in ("validate", "analyze"):
        result = run_cli(command, str(path))
        flat = " ".join(result.output.split())
        assert result.exit_code == 2 and key in flat, (command, flat)
        assert "Traceback" not in result.output
        assert not (tmp_path / "out").exists()
