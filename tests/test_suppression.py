"""Suppression experiment (SPEC 7) against dense per-sample Hessians, and on synthetic
probe sets built to have (or not have) X-Y correlation.

Dense route: for every probe p of the AWD stage's probe set, h_p = torch.func.hessian of
l_p (tests/dense_reference.py on the single sample), eigendecomposed by ``eigh``; its
d_out eigenvalues of largest magnitude (the nonzero part for a Linear target) sorted
descending are kappa_m, their eigenvectors u_m. Every SPEC 7 variable is then formed from
these (h~_p = sum_m kappa~_m u_m u_m^T) and compared with ``suppression_variables`` fed
the kappa and u_proj that ``awd_analysis(store_probe_spectra=True)`` returns: within
1e-6 relative to the largest value (observed <= 2e-15). Cases: fc2 of the MLP and fc1 of
the CNN head under ce, mse and lmse (hidden layers: Q_p is not a multiple of I, so the
first mode is well defined; with the output layer under lmse every kappa_m is equal and
the rank-one variants would depend on an arbitrary basis).
"""

from __future__ import annotations

import dense_reference as ref
import numpy as np
import pytest
import torch

from awch_scale.analysis.awd import awd_analysis
from awch_scale.analysis.suppression import (
    VARIANTS,
    stiff_set,
    suppression_dataset,
    suppression_variables,
)
from awch_scale.model.problem import make_problem
from awch_scale.variables import VARIABLES

CASES = [("fc", "fc2", "ce"), ("fc", "fc2", "mse"), ("fc", "fc2", "lmse"),
         ("cnn", "fc1", "ce"), ("cnn", "fc1", "mse"), ("cnn", "fc1", "lmse")]
IDS = ["-".join(c) for c in CASES]
THETA = 0.3  # large enough that the tiny probe sets have probes outside the stiff set


def dense_variants(kappa, theta):
    k1 = kappa[:, 0]
    stiff = k1 > theta * k1.max()
    out = {"original": kappa.copy()}
    r1 = kappa.copy()
    r1[:, 1:] *= 1e-5
    out["rank1"] = r1
    bg = r1.copy()
    bg[~stiff, 0] *= 1e-3
    out["rank1_bg"] = bg
    hom = bg.copy()
    hom[stiff, 0] = k1[stiff].mean()
    out["homogenised"] = hom
    return out, stiff


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_against_dense_per_sample_hessians(case):
    kind, target, loss = case
    model, x, y = ref.make_model(kind, 36)
    problem = make_problem(model, target, x, y, loss, chunk_size=16)
    H = ref.dense_hessian(model, target, x, y, loss)
    lam, V = np.linalg.eigh(H)
    k = 6
    lam, V = lam[::-1][:k].copy(), V[:, ::-1][:, :k].copy()
    ds = awd_analysis(problem, torch.from_numpy(V), lam, batch_size=4, n_draws=1, n_probe=12,
                      n_partner_batches=1, seed=2, store_probe_spectra=True)
    data, coords = suppression_variables(ds.kappa.values, ds.u_proj.values, theta=THETA)

    d_out = problem.block_shapes[0][0]
    kappa, U = [], []
    for p in ds.probe_idx.values:
        h = ref.dense_hessian(model, target, x[p:p + 1], y[p:p + 1], loss)
        ev, ew = np.linalg.eigh(h)
        top = np.sort(np.argsort(-np.abs(ev))[:d_out])[::-1]  # nonzero part, descending
        kappa.append(ev[top])
        U.append(ew[:, top])
    kappa, U = np.array(kappa), np.array(U)  # (n, d_out), (n, D, d_out)
    variants, stiff = dense_variants(kappa, THETA)
    assert 0 < stiff.sum() < len(stiff)  # every variant differs
    np.testing.assert_array_equal(stiff, stiff_set(ds.kappa.values, THETA))
    for j, name in enumerate(VARIANTS):
        kt = variants[name]
        hs = [U[p] @ np.diag(kt[p]) @ U[p].T for p in range(len(kt))]
        h1 = np.mean([np.diag(V.T @ h @ V) for h in hs], 0)
        h2 = np.mean([np.diag(V.T @ h @ h @ V) for h in hs], 0)
        for got, want in [(data["supp_h1"][1][j], h1), (data["supp_h2"][1][j], h2)]:
            err = np.abs(got - want).max() / np.abs(want).max()
            assert err <= 1e-6, name
        ok = (h1 > 0) & (h2 > 0)
        want_gamma = ref.loglog_fit(h2[ok], h1[ok]).gamma
        assert abs(data["supp_gamma"][1][j] - want_gamma) <= 1e-6, name
    P = np.einsum("pdm,di->pmi", U, V) ** 2  # (u_m . v_i)^2
    w = kappa[:, :, None] ** 2 * P
    cum = np.cumsum(w.sum(0), 0) / w.sum((0, 1))
    assert np.abs(data["mode_cumfrac"][1] - cum).max() <= 1e-6
    X, Y = kappa[:, 0] ** 2, P[:, 0, :]
    xy = [np.corrcoef(X, Y[:, i])[0, 1] for i in range(k)]
    assert np.abs(data["xy_corr"][1] - xy).max() <= 1e-6
    for name, (dims, value) in data.items():
        assert VARIABLES[name].dims == dims
        sizes = {"eig": k, **{c: len(v) for c, v in coords.items()}}
        assert np.shape(value) == tuple(sizes[dd] for dd in dims)
    assert list(coords["variant"]) == list(VARIANTS)
    sds = suppression_dataset(ds, theta=THETA)
    np.testing.assert_array_equal(sds.supp_h2.values, data["supp_h2"][1])
    assert sds.supp_h2.dims == ("variant", "eig") and list(sds.eig.values) == list(ds.eig.values)
    with pytest.raises(ValueError, match="store_probe_spectra=True"):
        suppression_dataset(ds.drop_vars(["kappa", "u_proj"]))


def synthetic_probes(correlated: bool, n: int = 6000, k: int = 30, d_out: int = 4,
                     seed: int = 0):
    """Probe spectra in a k-dim block with V = I (so u_proj[p, m] = u_m).

    Probe p has its first mode along e_{c_p}, c_p drawn with P(c = i) ~ 1/i (so supp_h1
    varies over i), and d_out - 1 weaker modes (kappa_m = 0.05 kappa_1) along other
    basis vectors, drawn with the same P (so that, without correlation, they add to
    supp_h1 and supp_h2 in proportion). kappa_1 = s_j with s_i = i^-0.7 times a factor
    uniform in [0.95, 1.05] (max/min < 1/0.05, so every probe is in the stiff set at
    theta = 0.05). Correlated: j = c_p, the mode's size goes with its direction.
    Uncorrelated: j drawn independently from the same distribution.
    """
    rng = np.random.default_rng(seed)
    prob = 1.0 / np.arange(1, k + 1)
    prob /= prob.sum()
    c = rng.choice(k, size=n, p=prob)
    j = c if correlated else rng.choice(k, size=n, p=prob)
    s = np.arange(1, k + 1) ** -0.7
    k1 = s[j] * rng.uniform(0.95, 1.05, size=n)
    kappa = np.concatenate([k1[:, None], 0.05 * k1[:, None] * np.ones((n, d_out - 1))], 1)
    u_proj = np.zeros((n, d_out, k))
    for p in range(n):
        rest = np.delete(np.arange(k), c[p])
        others = rng.choice(rest, size=d_out - 1, replace=False, p=prob[rest] / prob[rest].sum())
        u_proj[p, np.arange(d_out), np.concatenate([[c[p]], others])] = 1.0
    return kappa, u_proj


def test_synthetic_with_xy_correlation():
    """Expected slopes, from supp_h1_i ~ P_i s_i and supp_h2_i ~ P_i s_i^2 with P_i ~ 1/i,
    s_i ~ i^-0.7: gamma = 2.4 / 1.7 = 1.41 for ``original`` (the weak modes change it
    little), exactly 1 for ``homogenised`` (kappa~_1 constant: supp_h2 / supp_h1 = const
    up to the 1e-5 remainder of the other modes). Thresholds: original > 1.3 (clearly
    superlinear; sampling noise on the slope is ~0.01 at n = 6000), |homogenised - 1| <
    0.02; the X-Y correlation is positive on the top directions. Observed (seeds 0-2):
    original 1.54 (the weak modes push it above 1.41), homogenised 1 + 3e-7."""
    kappa, u_proj = synthetic_probes(True)
    data, _ = suppression_variables(kappa, u_proj, theta=0.05)
    g = dict(zip(VARIANTS, data["supp_gamma"][1], strict=True))
    assert g["original"] > 1.3
    assert abs(g["homogenised"] - 1) < 0.02
    assert stiff_set(kappa, 0.05).all()
    assert np.mean(data["xy_corr"][1][:5]) > 0.05  # observed 0.12 (Y_i is 0 or 1)


def test_synthetic_without_xy_correlation():
    """With kappa_1 independent of the direction, supp_h2_i / supp_h1_i = E[kappa^2] /
    E[kappa] for every i, so every variant's slope is 1 up to sampling noise (the per-
    direction means of kappa over ~n P_i probes: |gamma - 1| ~ 0.02 here); threshold
    0.1. The X-Y correlation is near 0 (|r| < 0.1 on average over the top directions).
    Observed (seeds 0-2): original 1.02-1.03, homogenised 1 + 2e-7, mean |r| < 3e-3."""
    kappa, u_proj = synthetic_probes(False)
    data, _ = suppression_variables(kappa, u_proj, theta=0.05)
    g = dict(zip(VARIANTS, data["supp_gamma"][1], strict=True))
    assert abs(g["original"] - 1) < 0.1
    assert abs(g["homogenised"] - 1) < 0.1
    assert abs(np.mean(data["xy_corr"][1][:5])) < 0.1


def test_input_checks():
    with pytest.raises(ValueError, match="must be"):
        suppression_variables(np.ones((3, 2)), np.ones((3, 3, 4)))
    with pytest.raises(ValueError, match="empty"):
        suppression_variables(np.ones((0, 2)), np.ones((0, 2, 4)))
