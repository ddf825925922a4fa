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

from awch_scale.analysis.powerlaw import PowerLawFit, fit_power_law


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
