"""fit_power_law (SPEC 6) against exact power laws and an independent numpy fit.

The reference is dense_reference.loglog_fit (numpy.polyfit plus closed-form stderr
and r^2), which does not use scipy.stats.linregress. Tolerances: exact power laws
recover gamma to 1e-12 absolute; noisy data agree with the reference to 1e-10
relative (stderr 1e-8 relative). linregress computes the stderr from sqrt(1 - r^2),
so a perfect fit reports ~sqrt(eps) * |gamma| ~ 1e-8 instead of 0: exact laws
allow stderr <= 1e-7 (absolute).
"""

from __future__ import annotations

import dataclasses

import dense_reference as ref
import numpy as np
import problems
import pytest

from awch_scale.analysis.powerlaw import (
    MIN_POINTS,
    Accuracy,
    PowerLawFit,
    fit_power_law,
    fit_resolved,
    gamma_fits,
    gamma_variables,
)


def _power_law(gamma, n=20, c=3.7, lo=-3.0, hi=1.0):
    lam = np.logspace(hi, lo, n)  # descending, as eigenvalues are
    return c * lam**gamma, lam


def _assert_matches_reference(fit: PowerLawFit, want: ref.LogLogFit):
    assert fit.n == want.n
    np.testing.assert_allclose(fit.gamma, want.gamma, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fit.stderr, want.stderr, rtol=1e-8, atol=1e-7)
    np.testing.assert_allclose(fit.r2, want.r2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gamma", [2.0, 1.3, 1.0, 0.5, -0.7, 0.0])
def test_exact_power_law_recovered(gamma):
    x, lam = _power_law(gamma)
    fit = fit_power_law(x, lam, n_fit=20)
    assert isinstance(fit, PowerLawFit)
    assert abs(fit.gamma - gamma) <= 1e-12
    assert fit.n == 20
    if gamma != 0.0:  # for a constant X, r (hence r^2 and linregress' stderr) is 0/0
        assert fit.stderr <= 1e-7
        assert abs(fit.r2 - 1.0) <= 1e-12


def test_non_positive_and_non_finite_entries_are_excluded():
    x, lam = _power_law(1.6, n=12)
    x, lam = x.copy(), lam.copy()
    x[[1, 4]] = [0.0, -2.0]  # non-positive X_ii
    lam[[6, 9]] = [-1e-3, 0.0]  # non-positive eigenvalues
    x[10] = np.nan
    lam[11] = np.inf
    fit = fit_power_law(x, lam, n_fit=12)
    assert fit.n == 12 - 6
    assert abs(fit.gamma - 1.6) <= 1e-12
    _assert_matches_reference(fit, ref.loglog_fit(x, lam, 12))


def test_n_fit_truncates_to_the_leading_directions():
    x, lam = _power_law(2.0, n=15)
    x = x.copy()
    x[8:] = 5.0 * lam[8:] ** 0.5  # a different law beyond the first 8
    fit = fit_power_law(x, lam, n_fit=8)
    assert fit.n == 8 and abs(fit.gamma - 2.0) <= 1e-12
    full = fit_power_law(x, lam, n_fit=15)
    assert full.n == 15 and abs(full.gamma - 2.0) > 0.1
    # n_fit counts leading entries, before the positivity filter
    x2 = x.copy()
    x2[2] = 0.0
    assert fit_power_law(x2, lam, n_fit=8).n == 7
    # n_fit beyond the length uses everything
    assert fit_power_law(x, lam, n_fit=100).n == 15


@pytest.mark.parametrize("n_ok", [0, 1, 2])
def test_fewer_than_three_points_give_nan(n_ok):
    x, lam = _power_law(1.0, n=6)
    x = x.copy()
    x[n_ok:] = 0.0
    fit = fit_power_law(x, lam, n_fit=6)
    assert fit.n == n_ok
    assert np.isnan(fit.gamma) and np.isnan(fit.stderr) and np.isnan(fit.r2)
    want = ref.loglog_fit(x, lam, 6)
    assert want.n == n_ok and np.isnan(want.gamma)


def test_three_points_are_enough():
    x, lam = _power_law(1.2, n=3)
    fit = fit_power_law(x, lam, n_fit=3)
    assert fit.n == 3 and abs(fit.gamma - 1.2) <= 1e-12


def test_degenerate_eigenvalues_give_nan():
    lam = np.full(5, 0.3)
    fit = fit_power_law(np.arange(1.0, 6.0), lam, n_fit=5)
    assert fit.n == 5 and np.isnan(fit.gamma)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_fit_matches_independent_numpy(seed):
    rng = np.random.default_rng(seed)
    lam = np.sort(rng.lognormal(-2.0, 1.5, size=40))[::-1]
    x = 0.2 * lam**1.4 * np.exp(rng.normal(0.0, 0.4, size=40))
    x[rng.choice(40, 3, replace=False)] = 0.0
    for n_fit in (40, 25, 7):
        fit = fit_power_law(x, lam, n_fit=n_fit)
        want = ref.loglog_fit(x, lam, n_fit)
        _assert_matches_reference(fit, want)
        assert 0 < fit.r2 < 1 and fit.stderr > 0


def test_inputs_are_not_modified_and_lists_accepted():
    x, lam = _power_law(0.8, n=10)
    x0, lam0 = x.copy(), lam.copy()
    fit = fit_power_law(x, lam, n_fit=10)
    problems.assert_untouched(x0, x)
    problems.assert_untouched(lam0, lam)
    again = fit_power_law(list(x), list(lam), n_fit=10)
    for f in dataclasses.fields(fit):  # the same numbers (rtol 1e-12; n exactly)
        problems.assert_deterministic(getattr(again, f.name), getattr(fit, f.name),
                                      err_msg=f.name)


# ----------------------------------------------------------------------------- resolved points
# fit_resolved (issue 20): the leading run of eigenvalues above
# max(residual_i, tol, eps) |lambda_1| and tiny/eps, and within it the X_ii above
# max(tiny/eps, eps^2 max X_jj); fewer than 3 points give NaN with the reason.


def _accuracy(k, residual=1e-12, tol=1e-6, dtype="float64"):
    return Accuracy.of(np.full(k, residual), tol, dtype)


def test_accuracy_of_numpy_and_torch_dtypes():
    import torch

    for dtype in ("float32", np.float32, torch.float32):
        acc = Accuracy.of([1e-8], 1e-6, dtype)
        assert acc.dtype == "float32" and acc.eps == float(np.finfo(np.float32).eps)
        assert acc.underflow == float(np.finfo(np.float32).tiny / np.finfo(np.float32).eps)
    assert Accuracy.of([1e-8], 1e-6, torch.float64).underflow < 1e-290


def test_all_resolved_is_the_bare_fit():
    x, lam = _power_law(1.4, n=12)
    got = fit_resolved(x, lam, 12, _accuracy(12))
    assert got.reason is None and got.provenance() == {"n": 12, "reason": None}
    assert got.fit == fit_power_law(x, lam, 12)


@pytest.mark.parametrize("residual,tol,cut", [
    (1e-12, 1e-6, 9),  # lambda_10.. below tol |lambda_1| = 1e-6
    (1e-12, 1e-9, 12),  # a finer tol resolves all of them
    (1e-3, 1e-9, 5),  # a large residual: lambda_6.. (< 1e-3) are below it
])
def test_eigenvalues_below_the_solvers_accuracy_end_the_range(residual, tol, cut):
    lam = np.logspace(0, -8, 12)  # lambda_i = 10^(-8 (i-1)/11)
    x = 2.0 * lam**1.5
    x[cut:] = 5.0  # noise beyond the accurate eigenvalues: must not enter the fit
    got = fit_resolved(x, lam, 12, _accuracy(12, residual, tol))
    assert got.fit.n == cut and abs(got.fit.gamma - 1.5) <= 1e-12
    if cut < 12:
        assert got.reason.startswith(f"lambda_{cut + 1} = ")
        assert "below the eigensolver's accuracy" in got.reason
        assert f"fit over i <= {cut} of n_fit = 12" in got.reason
    else:
        assert got.reason is None


def test_the_range_is_a_leading_run():
    """One eigenvalue with a large residual ends the range even if later ones are fine."""
    x, lam = _power_law(1.0, n=10, lo=-2.0, hi=0.0)
    res = np.full(10, 1e-12)
    res[6] = 0.5  # lambda_7 ~ 0.04 < 0.5 |lambda_1|
    got = fit_resolved(x, lam, 10, Accuracy.of(res, 1e-6, "float64"))
    assert got.fit.n == 6 and "lambda_7 = " in got.reason
    res[6] = np.nan  # no finite residual: not resolved either
    got = fit_resolved(x, lam, 10, Accuracy.of(res, 1e-6, "float64"))
    assert got.fit.n == 6 and "without a finite residual" in got.reason


def test_non_positive_eigenvalue_ends_the_range():
    x, lam = _power_law(1.2, n=8, lo=-2.0, hi=0.0)
    lam = lam.copy()
    lam[5] = -1e-3
    got = fit_resolved(x, lam, 8, _accuracy(8))
    assert got.fit.n == 5 and "lambda_6 = -1.00e-03 is not positive" in got.reason


def test_underflowed_eigenvalues_and_diagonals():
    # float32: the floor is tiny/eps = 9.9e-32
    lam = np.logspace(-28, -30, 6)  # small, yet above the floor: resolved
    got = fit_resolved(1e-3 * (lam / lam[0])**1.1, lam, 6, _accuracy(6, 1e-8, 1e-6, "float32"))
    assert got.fit.n == 6 and abs(got.fit.gamma - 1.1) <= 1e-9 and got.reason is None
    lam = np.logspace(-36, -37, 6)  # every eigenvalue below the float32 floor
    got = fit_resolved(np.ones(6), lam, 6, _accuracy(6, 1e-8, 1e-6, "float32"))
    assert got.fit.n == 0 and np.isnan(got.fit.gamma)
    assert "lambda_1 = 1.00e-36 is below the float32 underflow floor 9.9e-32" in got.reason
    assert "no eigenvalue resolved" in got.reason and "gamma is NaN" in got.reason
    # resolved eigenvalues, X_ii from underflowed products (h2 of weights at 1e-9)
    lam = np.logspace(-19, -20, 6)
    x = np.logspace(-37, -39, 6)
    got = fit_resolved(x, lam, 6, _accuracy(6, 1e-8, 1e-6, "float32"))
    assert got.fit.n == 0 and np.isnan(got.fit.gamma)
    assert "X_ii of i = 1, 2, 3, 4, 5, 6 left out" in got.reason
    assert "float32 underflow / rounding floor" in got.reason
    # the same numbers are representable in float64: resolved there
    got = fit_resolved(x, lam, 6, _accuracy(6, 1e-12, 1e-6, "float64"))
    assert got.fit.n == 6 and abs(got.fit.gamma - 2.0) <= 1e-9


def test_diagonal_rounding_floor_is_relative_to_the_largest():
    x, lam = _power_law(1.0, n=8, lo=-2.0, hi=0.0)
    x = x.copy()
    x[[2, 5]] = 1e-15 * x.max()  # below eps32^2 max = 1.4e-14 max, above eps64^2 max
    f32 = fit_resolved(x, lam, 8, _accuracy(8, 1e-8, 1e-6, "float32"))
    assert f32.fit.n == 6 and "X_ii of i = 3, 6 left out (2 of 8" in f32.reason
    assert fit_resolved(x, lam, 8, _accuracy(8)).fit.n == 8


@pytest.mark.parametrize("n_ok", [0, 1, 2])
def test_fewer_than_min_points_give_nan_with_reason(n_ok):
    x, lam = _power_law(1.0, n=6)
    x = x.copy()
    x[n_ok:] = 0.0
    got = fit_resolved(x, lam, 6, _accuracy(6))
    assert got.fit.n == n_ok and np.isnan(got.fit.gamma) and MIN_POINTS == 3
    assert got.reason.endswith(f"{n_ok} resolved point(s), fewer than the 3 a fit needs: "
                               "gamma is NaN")


def test_equal_eigenvalues_reason():
    got = fit_resolved(np.arange(1.0, 6.0), np.full(5, 0.3), 5, _accuracy(5))
    assert got.fit.n == 5 and np.isnan(got.fit.gamma) and "all equal" in got.reason


def test_gamma_variables_with_and_without_accuracy():
    x, lam = _power_law(1.3, n=10)
    noisy = x.copy()
    noisy[7:] = 1.0
    diagonals = {"a": x, "b": noisy}
    bare = gamma_variables(diagonals, lam, 10)
    want = [fit_power_law(d, lam, 10) for d in diagonals.values()]
    np.testing.assert_array_equal(bare["gamma"][1], [f.gamma for f in want])
    np.testing.assert_array_equal(bare["gamma_n"][1], [10, 10])
    res = np.full(10, 1e-12)
    cut = gamma_variables(diagonals, lam, 10, Accuracy.of(res, lam[7] / lam[0] * 1.01,
                                                          "float64"))
    np.testing.assert_array_equal(cut["gamma_n"][1], [7, 7])
    np.testing.assert_allclose(cut["gamma"][1], [1.3, 1.3], rtol=0, atol=1e-12)
    assert cut["gamma_n"][1].dtype == np.int64 and cut["gamma"][1].dtype == np.float64
    fits = gamma_fits(diagonals, lam, 10, Accuracy.of(res, 1e-6, "float64"))
    assert list(fits) == ["a", "b"]
