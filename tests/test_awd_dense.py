"""awd_analysis against a dense brute force on tiny float64 models (SPEC section 4).

The reference below is independent of ``awch_scale.analysis.awd``: it builds every per-sample
Hessian h_p (D x D) with ``torch.func.hessian`` of the single-sample loss of the whole
model with respect to the flattened target weight, every AWD perturbation dw_p and its
Jacobian with ``torch.func.jacrev`` of dw_p(w), takes a_p from a forward hook, and loops
over the draws (``pair_nu``/``pair_mu``) and probe partners recorded in the dataset.

Tolerances: all arithmetic is float64, so every variable must agree to rtol 1e-8
(plus an absolute 1e-10 times the variable's largest entry); the per-sample spectra
are compared as sets of eigenvalues, and eigenvector projections up to sign.
"""

from __future__ import annotations

import numpy as np
import problems
import pytest
import torch
from torch.func import grad

from awch_scale.analysis.awd import (
    AWD_GAMMA_ESTIMATORS,
    MATRIX_VARIABLES,
    TargetLayer,
    awd_analysis,
)
from awch_scale.analysis.powerlaw import fit_power_law
from awch_scale.model.problem import make_problem

# The models (problems.AWD_MODELS), data (problems.class_data) and the dense per-sample
# reference (dense_reference.PerSampleDense: h_p, g_p, a_p, dw_p and its Jacobian) are
# shared through the case registry; problems.awd_reference caches them per session.

# --------------------------------------------------------------------------- reference


def reference(dense, ds, V, B):
    """Every SPEC 4 variable by brute force, from the indices recorded in ds."""
    V = V.double()
    nu, mu = ds.pair_nu.values, ds.pair_mu.values
    T, k = nu.shape[0], V.shape[1]
    ref = {n: torch.zeros(k, k, dtype=torch.float64) for n in
           ("c_hh", "c_hg", "c_gg", "c_hh_sd", "c_hg_sd", "c_gg_sd", "c_pair")}
    for t in range(T):
        s1 = torch.zeros(dense.w.numel(), dtype=torch.float64)
        s2 = torch.zeros_like(s1)
        for i, j in zip(nu[t], mu[t], strict=True):
            t1, t2, _ = dense.terms(int(i), int(j))
            p1, p2 = V.T @ t1, V.T @ t2
            ref["c_hh_sd"] += torch.outer(p1, p1)
            ref["c_gg_sd"] += torch.outer(p2, p2)
            ref["c_hg_sd"] += torch.outer(p1, p2) + torch.outer(p2, p1)
            s1, s2 = s1 + t1, s2 + t2
        p1, p2 = V.T @ s1, V.T @ s2
        ref["c_hh"] += torch.outer(p1, p1)
        ref["c_gg"] += torch.outer(p2, p2)
        ref["c_hg"] += torch.outer(p1, p2) + torch.outer(p2, p1)
        g_mu = grad(lambda w, idx=list(mu[t]): dense.batch_loss(w, idx).mean())(dense.w)
        g_nu = grad(lambda w, idx=list(nu[t]): dense.batch_loss(w, idx).mean())(dense.w)
        e = V.T @ (g_mu - g_nu)
        ref["c_pair"] += 0.5 * torch.outer(e, e)
    for n in ref:
        ref[n] /= T if n == "c_pair" else 2 * B * B * T
    ref["c_awd_raw"] = ref["c_hh"] + ref["c_hg"] + ref["c_gg"]
    ref["h2"] = V.T @ torch.einsum("pij,pjk->ik", dense.h, dense.h) @ V / len(dense.x)

    # probe spectra from dense eigendecompositions of h_p (all D modes), c_hh_sd_wd as
    # sum over eigenvalues kappa of kappa^2 V^T P M_p P V (P: projector on the eigenspace,
    # M_p = E_r[dw dw^T]); for distinct kappa this is sum_m kappa_m^2 sigma2_pm (V^T u_m)..
    c_wd = torch.zeros(k, k, dtype=torch.float64)
    num = den = 0.0
    kappas = []
    for p, partners in zip(ds.probe_idx.values, ds.probe_partner.values, strict=True):
        kap, U = torch.linalg.eigh(dense.h[int(p)])
        dws = torch.stack([dense.terms(int(p), int(j))[2] for j in partners])  # (R, D)
        M = dws.T @ dws / len(partners)
        sig2 = ((dws @ U) ** 2).mean(0)
        num += float((kap**2 * sig2).sum())
        den += float((kap**2).sum())
        tol = 1e-9 * float(kap.abs().max())
        m = 0
        while m < len(kap):  # groups of equal eigenvalues (ascending order)
            g = m + 1
            while g < len(kap) and kap[g] - kap[g - 1] <= tol:
                g += 1
            if abs(float(kap[m])) > tol:
                P = U[:, m:g] @ U[:, m:g].T
                c_wd += float(kap[m:g].mean()) ** 2 * V.T @ P @ M @ P @ V
            m = g
        kappas.append((kap, U))
    ref["c_hh_sd_wd"] = c_wd / (2 * B * len(ds.probe_idx))
    ref["sigma_w2"] = torch.tensor(num / den, dtype=torch.float64)
    ref["c_li"] = ref["sigma_w2"] / (2 * B) * ref["h2"]
    return {n: r.numpy() for n, r in ref.items()}, kappas


def assert_close(got, want, name, rtol=1e-8):
    """rtol 1e-8 entrywise plus 1e-10 of the variable's largest entry (module docstring)."""
    problems.assert_entrywise_close(got, want, rtol, 1e-10, name)


def awd_case(model_name, act, loss, k=6):
    """(dense reference, problem, V, lam) of an AWD model; dense, V, lam session-cached."""
    c = problems.awd_reference(model_name, act, loss, k)
    target = problems.AWD_MODELS[model_name][1]
    d = c.dense
    problem = make_problem(d.model, target, d.x, d.y, loss, chunk_size=7, dtype=torch.float64)
    return d, problem, c.V, c.lam


CASES = [
    ("mlp", "tanh", "ce", 6), ("mlp", "tanh", "mse", 7), ("mlp", "tanh", "lmse", 6),
    ("mlp", "softplus", "ce", 7), ("mlp", "relu", "ce", 6),
    # a piecewise-linear head: Q_p's spectrum by the low-rank route (K < d_out)
    ("mlp", "relu", "mse", 7), ("mlp", "relu", "lmse", 6), ("cnn", "relu", "ce", 6),
    ("cnn", "tanh", "ce", 6), ("cnn", "softplus", "mse", 7), ("cnn", "tanh", "lmse", 6),
    ("free", "softplus", "ce", 7), ("nested", "tanh", "mse", 6),
    ("last", "tanh", "ce", 6), ("last", "tanh", "lmse", 7),  # lmse: Q_p = (2/K) I, degenerate
]


@pytest.mark.parametrize(("model_name", "act", "loss", "B"), CASES)
def test_every_variable_matches_dense(model_name, act, loss, B):
    dense, problem, V, lam = awd_case(model_name, act, loss)
    assert torch.allclose(problem.linear_inputs, dense.a, rtol=0, atol=1e-12)
    kw = dict(batch_size=B, n_draws=3, n_probe=5, n_partner_batches=3, seed=3,
              store_probe_spectra=True)
    ds = awd_analysis(problem, V, lam, **kw)
    want_mode = "suffix" if model_name in ("mlp", "cnn", "last") else "hook"
    assert ds.attrs["awd_target_mode"] == want_mode
    assert ds.attrs["awd_h1_rel_err"] < 1e-10
    ref, spectra = reference(dense, ds, V, B)
    for name in (*MATRIX_VARIABLES, "sigma_w2"):
        assert ds[name].dims == (("eig", "eig_") if name != "sigma_w2" else ())
        assert_close(ds[name].values, ref[name], name)
    assert_close(ds.h2_diag.values, np.diag(ref["h2"]), "h2_diag")

    # kappa: the d_out nonzero-capable eigenvalues of h_p; the other D - d_out are 0
    D, d_out = dense.w.numel(), problem.block_shapes[0][0]
    for p, (kap, U) in enumerate(spectra):
        got = np.concatenate([ds.kappa.values[p], np.zeros(D - d_out)])
        np.testing.assert_allclose(np.sort(got), np.sort(kap.numpy()), rtol=1e-8,
                                   atol=1e-10 * float(kap.abs().max()))
        # u_proj up to sign, for well-separated nonzero eigenvalues
        for m, km in enumerate(ds.kappa.values[p]):
            gaps = np.abs(kap.numpy() - km)
            j = int(np.argmin(gaps))
            if abs(km) < 1e-6 * float(kap.abs().max()) or np.sort(gaps)[1] < 1e-6:
                continue
            ref_proj = (V.T @ U[:, j]).numpy()
            got_proj = ds.u_proj.values[p, m]
            sign = np.sign(got_proj @ ref_proj)
            np.testing.assert_allclose(got_proj, sign * ref_proj, atol=1e-8)

    # power-law fits: fit_power_law on the diagonals, n_fit = k
    for e, name in enumerate(AWD_GAMMA_ESTIMATORS):
        f = fit_power_law(np.diag(ds[name].values), lam, len(lam))
        assert ds.estimator.values[e] == name
        problems.assert_deterministic(ds.gamma.values[e], f.gamma)  # same fit, rtol 1e-12
        assert ds.gamma_n.values[e] == f.n


@pytest.mark.parametrize(("model_name", "act", "loss"),
                         [("mlp", "tanh", "mse"), ("cnn", "softplus", "ce"),
                          ("free", "tanh", "lmse")])
def test_fast_path_matches_generic_autodiff(model_name, act, loss):
    _, problem, V, lam = awd_case(model_name, act, loss)
    kw = dict(batch_size=6, n_draws=4, n_probe=4, n_partner_batches=2, seed=5)
    fast = awd_analysis(problem, V, lam, method="kron", **kw)
    slow = awd_analysis(problem, V, lam, method="autodiff", **kw)
    for name in (*MATRIX_VARIABLES, "sigma_w2", "h2_diag"):
        assert_close(fast[name].values, slow[name].values, name, rtol=1e-10)
    np.testing.assert_array_equal(fast.pair_mu.values, slow.pair_mu.values)  # indices


@pytest.mark.parametrize("k", [3, 6])  # k < d_out = 4: Q_p Y_p by k z-space HVPs
def test_h2_routes_agree(k):
    dense, problem, V, lam = awd_case("mlp", "softplus", "ce", k=k)
    kw = dict(batch_size=6, n_draws=1, n_probe=2, n_partner_batches=1, seed=0)
    want = (V.T @ torch.einsum("pij,pjk->ik", dense.h, dense.h) @ V / len(dense.x)).numpy()
    for route in ("direct", "weight", "auto"):
        ds = awd_analysis(problem, V, lam, h2_route=route, **kw)
        assert ds.attrs["awd_h2_route"] == (("weight" if k == 6 else "direct")
                                            if route == "auto" else route)
        assert_close(ds.h2.values, want, route)
        assert ds.attrs["awd_h1_rel_err"] < 1e-10


def test_diag_only_and_chunking():
    _, problem, V, lam = awd_case("mlp", "tanh", "ce")
    kw = dict(batch_size=6, n_draws=5, n_probe=6, n_partner_batches=2, seed=0)
    full = awd_analysis(problem, V, lam, **kw)
    diag = awd_analysis(problem, V, lam, diag_only=MATRIX_VARIABLES, **kw)
    mixed = awd_analysis(problem, V, lam, diag_only=("c_hh", "h2"), **kw)
    tiny = awd_analysis(problem, V, lam, max_chunk_elements=1, **kw)  # one sample per chunk
    for name in MATRIX_VARIABLES:
        assert diag[name].dims == ("eig",)
        assert_close(diag[name].values, np.diag(full[name].values), name, rtol=1e-12)
        assert_close(tiny[name].values, full[name].values, name, rtol=1e-10)
        want_dims = ("eig",) if name in ("c_hh", "h2") else ("eig", "eig_")
        assert mixed[name].dims == want_dims
    assert_close(mixed.c_awd_raw.values, full.c_awd_raw.values, "c_awd_raw", rtol=1e-12)
    assert_close(mixed.c_li.values, full.c_li.values, "c_li", rtol=1e-12)
    np.testing.assert_allclose(diag.gamma.values, full.gamma.values, rtol=1e-12)
    assert full.attrs["awd_chunk_rows"] == 7 and tiny.attrs["awd_chunk_rows"] == 1


def test_fit_gamma_off_changes_nothing_else():
    """analyze_checkpoint's AWD stage skips the gamma fits (its gamma stage fits every
    estimator once); every other variable is the same."""
    _, problem, V, lam = awd_case("mlp", "tanh", "ce")
    kw = dict(batch_size=6, n_draws=2, n_probe=3, n_partner_batches=2, seed=0)
    on = awd_analysis(problem, V, lam, **kw)
    off = awd_analysis(problem, V, lam, fit_gamma=False, **kw)
    gammas = {"gamma", "gamma_stderr", "gamma_r2", "gamma_n"}
    assert gammas <= set(on.data_vars) and not gammas & set(off.data_vars)
    assert "estimator" not in off.coords
    assert set(off.data_vars) == set(on.data_vars) - gammas
    for name in off.data_vars:
        np.testing.assert_array_equal(off[name].values, on[name].values, err_msg=name)


def test_seed_reproducible_and_spectra_options():
    _, problem, V, lam = awd_case("mlp", "softplus", "lmse")
    kw = dict(batch_size=6, n_draws=2, n_probe=3, n_partner_batches=2)
    a = awd_analysis(problem, V, lam, seed=11, store_probe_spectra=True, n_modes=2, **kw)
    b = awd_analysis(problem, V, lam, seed=11, **kw)
    c = awd_analysis(problem, V, lam, seed=12, **kw)
    np.testing.assert_array_equal(a.pair_nu.values, b.pair_nu.values)  # indices
    np.testing.assert_array_equal(a.probe_partner.values, b.probe_partner.values)
    assert not np.array_equal(a.pair_nu.values, c.pair_nu.values)  # indices
    assert a.kappa.shape == (3, 2) and a.u_proj.shape == (3, 2, V.shape[1])
    assert list(a.mode.values) == [1, 2] and "kappa" not in b
    assert np.all(np.diff(a.kappa.values, axis=1) <= 0)
    assert a.c_hh.attrs["long_name"].startswith("AWD")


def test_argument_errors():
    _, problem, V, lam = awd_case("mlp", "tanh", "ce")
    kw = dict(batch_size=6, n_draws=2, n_probe=3, n_partner_batches=2, seed=0)
    with pytest.raises(ValueError, match="diag_only"):
        awd_analysis(problem, V, lam, diag_only=("covar",), **kw)
    with pytest.raises(ValueError, match="eigvals"):
        awd_analysis(problem, V, lam[:-1], **kw)
    with pytest.raises(ValueError, match="n_modes"):
        awd_analysis(problem, V, lam, n_modes=5, **kw)
    with pytest.raises(ValueError, match="class"):
        awd_analysis(problem, V, lam, **{**kw, "batch_size": 20})
    x, y = problems.class_data((1, 2, 3))
    conv = make_problem(problems.cnn("tanh"), "conv",
                        torch.randn(30, 1, 6, 6, dtype=torch.float64), y, "ce",
                        dtype=torch.float64)
    with pytest.raises(ValueError, match="nn.Linear"):
        TargetLayer(conv)


@pytest.mark.parametrize(("act", "low_rank"), [("relu", True), ("tanh", False)])
def test_q_spectrum_route(act, low_rank):
    """A piecewise-linear head takes the low-rank route (K = 3 modes of d_out = 4, the
    rest exact zeros) and agrees with the full eigh of Q_p to 1e-12 of its scale, with
    the same eigenvectors up to sign; a smooth head takes the full route."""
    from awch_scale.analysis.awd.spectra import q_spectrum

    _, problem, _, _ = awd_case("mlp", act, "ce")
    tl = TargetLayer(problem)
    _, z, x, y = tl.index(torch.arange(6))
    lam, S = q_spectrum(tl, z, x, y)
    assert tl.ggn_exact is low_rank
    assert lam.shape[1] == (tl.n_logits if low_rank else z.shape[1])
    assert tl.n_logits < z.shape[1]
    full, U = torch.linalg.eigh(tl.q_full(z, x, y).double())
    full, U = full.flip(-1), U.flip(-1)
    scale = full.abs().max()
    c = lam.shape[1]
    top = full[:, :c] if low_rank else full
    np.testing.assert_allclose(lam.numpy(), top.numpy(), rtol=0, atol=1e-12 * scale.item())
    if low_rank:  # the rest of Q_p's spectrum is 0
        assert full[:, c:].abs().max() <= 1e-12 * scale
    checked = 0
    for p in range(lam.shape[0]):
        for m in range(c):
            gap = (full[p] - lam[p, m]).abs().sort().values[1]
            if lam[p, m].abs() > 1e-6 * scale and gap > 1e-6 * scale:
                assert abs((S[p, :, m] @ U[p, :, m]).abs().item() - 1) <= 1e-10
                checked += 1
    assert checked >= lam.shape[0]  # at least one separated mode per sample
