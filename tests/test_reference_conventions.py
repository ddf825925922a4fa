"""Reference-compatible conventions against the AW-CH reference code's own formulas.

The brute force below is written from the reference's published definitions
(``AWD_cuda.cal_C_cuda`` and ``utils.cal_noise_covar_minibatch`` of the authors' code,
summarised in docs/quantities.md, "From the reference code"), independently of
``awch_scale.analysis.awd``: per-sample Hessians are dense ``torch.func.hessian`` matrices of the
single-sample loss, dw_p and its Jacobian come from ``torch.func.jacrev``, everything is
rotated into the full eigenbasis ``components`` (rows = eigenvectors of H in ascending
order, as ``numpy.linalg.eigh`` returns them), and the reference's sums are divided by
the number of processed samples and by its ``batch_size`` argument (64).

Each test then applies the conversion of the docs/quantities.md table (a constant,
the reversal of the ascending order, and the eigenvector signs) and compares with what
awch-scale stores, at 1e-6 relative (float64 throughout; the measured errors are <= 4e-15).
"""

from __future__ import annotations

import dense_reference as ref
import numpy as np
import pytest
import torch
from torch.func import hessian, jacrev

from awch_scale.analysis.awd import awd_analysis
from awch_scale.analysis.awd.matching import REFERENCE_SELF_DISTANCE
from awch_scale.analysis.covariance import minibatch_covariance
from awch_scale.model.problem import make_problem

RTOL = 1e-6
REF_DIVISOR = 64  # the reference's cal_C_cuda(batch_size=64): its sums are divided by it
TARGET = "fc2"
K = 6


def assert_rel(got, want, name, rtol=RTOL):
    scale = float(np.abs(want).max())
    assert scale > 0, name
    err = float(np.abs(np.asarray(got) - want).max()) / scale
    assert err < rtol, f"{name}: max relative error {err:.2e}"


class Case:
    """A tiny trained-free FC model (ce or mse), its dense per-sample quantities and bases."""

    def __init__(self, loss="ce", n_per_class=(11, 11, 10), seed=0):
        self.model = ref.make_fc(d_in=6, hidden=(5, 4), n_out=3, seed=seed)
        gen = torch.Generator().manual_seed(seed + 5)
        y = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
        y = y[torch.randperm(len(y), generator=gen)]
        x = torch.randn(len(y), 1, 2, 3, generator=gen, dtype=torch.float64)
        x += 0.8 * y.double().view(-1, 1, 1, 1)
        self.x, self.y, self.loss, self.N = x, y, loss, len(y)
        self.w = ref.flat_block(self.model, TARGET)
        self.shape = dict(self.model.named_parameters())[f"{TARGET}.weight"].shape
        self.h = np.stack([
            hessian(ref.block_loss(self.model, TARGET, x[i:i + 1], y[i:i + 1], loss))(self.w)
            .detach().numpy() for i in range(self.N)])
        self.h = 0.5 * (self.h + self.h.transpose(0, 2, 1))
        self.g = ref.per_sample_gradients(self.model, TARGET, x, y, loss)
        seen = []
        hook = self.model.fc2.register_forward_hook(lambda _m, i, _o: seen.append(i[0]))
        with torch.no_grad():
            self.model(x)
        hook.remove()
        self.a = seen[0].detach().reshape(self.N, -1).double()
        H = self.h.mean(0)
        lam, U = ref.dense_eigh(H)  # descending, SPEC signs
        self.eigvals, self.V = lam[:K], U[:, :K]
        # the reference's basis: numpy eigh, ascending, rows are eigenvectors
        _, vecs = np.linalg.eigh(H)
        self.components = vecs.T
        D = H.shape[0]
        self.D = D
        # our eigenvector i (descending) is the reference's row D-1-i, up to sign
        self.rev = np.arange(D - 1, D - 1 - K, -1)
        self.sign = np.sign(np.einsum("id,di->i", self.components[self.rev], self.V))

    def problem(self):
        return make_problem(self.model, TARGET, self.x, self.y, self.loss, chunk_size=7,
                            dtype=torch.float64)

    def top_block(self, M):
        """The reference's D x D matrix M (ascending basis) as our k x k block."""
        s = self.sign
        return M[np.ix_(self.rev, self.rev)] * s[:, None] * s[None, :]

    def dw(self, p, q):
        """w -> dw_p for partner q: vec((W (a_q - a_p)) a_p^T) / |a_p|^2 (paper Eq. 9)."""
        a, da = self.a[p], self.a[q] - self.a[p]
        return lambda w: torch.outer(w.view(self.shape) @ da, a).reshape(-1) / (a @ a)


def reference_cal_C(case: Case, batches, partners, divisor=REF_DIVISOR):
    """The reference's cal_C_cuda sums over the given processing batches, dense.

    ``batches[t]`` are the sample indices of processing batch t and ``partners[t]`` their
    anchors. Returns a dict of D x D matrices in the reference's (ascending) basis:
    C1_dia, C2_dia, C3_dia, C1, C2, C3, C1_dia_w_dia, C1_h, H_1_d, H_2_d.
    """
    comp = case.components
    D = case.D
    acc = {n: np.zeros((D, D)) for n in ("C1_dia", "C2_dia", "C3_dia", "C1", "C2", "C3",
                                          "C1_dia_w_dia", "C1_h", "H_1_d", "H_2_d")}
    n_proc = 0
    for batch, anchor in zip(batches, partners, strict=True):
        s1 = np.zeros(D)
        s2 = np.zeros(D)
        for p, q in zip(batch, anchor, strict=True):
            p, q = int(p), int(q)
            f = case.dw(p, q)
            w_raw = f(case.w).detach().numpy()
            J = jacrev(f)(case.w).detach().numpy()  # a_raw: d dw / d w
            h = comp @ case.h[p] @ comp.T
            g = comp @ case.g[p]
            w = comp @ w_raw
            a = comp @ J @ comp.T
            hw = h @ w
            ga = a.T @ g  # einsum('si,sim->m')
            acc["C1_dia"] += np.outer(hw, hw)
            acc["C2_dia"] += np.outer(hw, ga)
            acc["C3_dia"] += np.outer(ga, ga)
            s1 += hw
            s2 += ga
            L, v = np.linalg.eigh(h)
            proj = v.T @ w
            acc["C1_dia_w_dia"] += (v * (L * proj) ** 2) @ v.T
            acc["C1_h"] += h @ h
            acc["H_1_d"] += h
            acc["H_2_d"] += h @ h
            n_proc += 1
        acc["C1"] += np.outer(s1, s1)
        acc["C2"] += np.outer(s1, s2)
        acc["C3"] += np.outer(s2, s2)
    out = {n: m / n_proc / divisor for n, m in acc.items()}
    out["H_1_d"] = acc["H_1_d"] / n_proc  # the reference does not divide H_1_d by 64
    out["C"] = out["C1"] + out["C2"] + out["C3"]
    return out


def reference_covar(case: Case, batch_size: int, perm: np.ndarray):
    """utils.cal_noise_covar_minibatch: mean over all loader batches (last partial kept,
    its gradient the mean over its samples) of g_b g_b^T, minus g g^T; raw basis."""
    F = np.zeros((case.D, case.D))
    batches = [perm[s:s + batch_size] for s in range(0, case.N, batch_size)]
    for b in batches:
        gb = case.g[b].mean(0)
        F += np.outer(gb, gb)
    g = case.g.mean(0)
    return F / len(batches) - np.outer(g, g)


@pytest.fixture(scope="module")
def ce_case():
    return Case("ce")


@pytest.fixture(scope="module")
def mse_case():
    return Case("mse", seed=1)


@pytest.mark.parametrize(("loss", "B"), [("ce", 8), ("ce", 5), ("mse", 8)])
def test_reference_pairing_and_once_reproduce_cal_C(request, loss, B):
    """pairing=reference + cross_term=once: every cal_C_cuda output from the stored indices.

    With T draws of B the draws are the processing batches; the conversion is
    X_ref = (2B/64) X_ours for the AWD sums, H_2_d = C1_h = h2/64, H_1_d = diag(lambda).
    B = 8 (T = 4): one full shuffled pass, each sample once, as the reference's pass;
    B = 5 (T = 9): more than one pass.
    """
    case = request.getfixturevalue(f"{loss}_case")
    T = 4 if B == 8 else 9
    ds = awd_analysis(case.problem(), case.V, case.eigvals, batch_size=B, n_draws=T,
                      n_probe=case.N, n_partner_batches=1, seed=11, pairing="reference",
                      n_anchors=4, cross_term="once")
    nu, mu = ds.pair_nu.values, ds.pair_mu.values
    if B == 8:  # one pass: every sample exactly once
        assert sorted(nu.ravel().tolist()) == list(range(case.N))
    const = 2.0 * B / REF_DIVISOR
    r = reference_cal_C(case, nu, mu)
    pairs = {"C1": "c_hh", "C2": "c_hg", "C3": "c_gg", "C1_dia": "c_hh_sd",
             "C2_dia": "c_hg_sd", "C3_dia": "c_gg_sd", "C": "c_awd_raw"}
    for rname, ours in pairs.items():
        assert_rel(ds[ours].values * const, case.top_block(r[rname]), f"{rname} vs {ours}")
    if B == 8:  # one pass: the reference's E_p is over the whole analysis set
        # C1_h and H_2_d are the same matrix E_p[h_p^2]/64 (full, not a diagonal): h2/64
        assert_rel(ds.h2.values / REF_DIVISOR, case.top_block(r["C1_h"]), "C1_h vs h2")
        assert_rel(ds.h2.values / REF_DIVISOR, case.top_block(r["H_2_d"]), "H_2_d vs h2")
        assert_rel(np.diag(ds.h2_diag.values) / REF_DIVISOR,
                   np.diag(np.diag(case.top_block(r["H_2_d"]))), "diag H_2_d vs h2_diag")
        assert_rel(np.diag(case.eigvals), case.top_block(r["H_1_d"]), "H_1_d vs hess_eigval")
    # C1_dia_w_dia: the reference's every-sample/one-partner formula on the probe pairs
    rp = reference_cal_C(case, [ds.probe_idx.values], [ds.probe_partner.values[:, 0]])
    assert_rel(ds.c_hh_sd_wd.values * const, case.top_block(rp["C1_dia_w_dia"]),
               "C1_dia_w_dia vs c_hh_sd_wd")
    # the cross term once is not symmetric, and its diagonal is half the symmetrised one
    sym = awd_analysis(case.problem(), case.V, case.eigvals, batch_size=B, n_draws=T,
                       n_probe=case.N, n_partner_batches=1, seed=11, pairing="reference",
                       n_anchors=4)
    np.testing.assert_array_equal(sym.pair_mu.values, mu)
    assert_rel(sym.c_hg.values, ds.c_hg.values + ds.c_hg.values.T, "symmetrised = once + T")
    assert_rel(sym.c_hg_sd.values, ds.c_hg_sd.values + ds.c_hg_sd.values.T, "sd")
    assert_rel(sym.c_hh.values, ds.c_hh.values, "c_hh does not depend on cross_term")
    asym = np.abs(ds.c_hg.values - ds.c_hg.values.T).max() / np.abs(ds.c_hg.values).max()
    assert asym > 1e-3


def test_reference_pairing_c_pair_and_spec_formulas(ce_case):
    """Under pairing=reference the SPEC formulas still apply to the stored indices."""
    case = ce_case
    B, T = 6, 5
    ds = awd_analysis(case.problem(), case.V, case.eigvals, batch_size=B, n_draws=T,
                      n_probe=7, n_partner_batches=3, seed=2, pairing="reference",
                      n_anchors=3)
    V = case.V
    c_pair = np.zeros((K, K))
    for nu, mu in zip(ds.pair_nu.values, ds.pair_mu.values, strict=True):
        e = V.T @ (case.g[mu].mean(0) - case.g[nu].mean(0))
        c_pair += 0.5 * np.outer(e, e) / T
    assert_rel(ds.c_pair.values, c_pair, "c_pair")
    # symmetrised c_hg from the reference sums: C2 + C2^T, with the constant
    r = reference_cal_C(case, ds.pair_nu.values, ds.pair_mu.values)
    const = 2.0 * B / REF_DIVISOR
    assert_rel(ds.c_hg.values * const, case.top_block(r["C2"] + r["C2"].T), "c_hg sym")
    assert_rel(ds.c_awd_raw.values * const,
               case.top_block(r["C1"] + r["C2"] + r["C2"].T + r["C3"]), "c_awd_raw sym")
    assert ds.attrs["awd_pairing"] == "reference" and ds.attrs["awd_n_anchors"] == 3
    assert ds.attrs["awd_cross_term"] == "symmetrised"


@pytest.mark.parametrize("n_anchors", [3, 100])
def test_reference_partner_rule(ce_case, n_anchors):
    """Partners: same class, never the sample itself, nearest among the draw's anchors.

    With n_anchors >= every class size, the anchors are the whole class and the partner
    is the nearest other same-class sample, checked exactly; with 3 anchors, at most 3
    distinct partners per class and draw, each sample's partner the nearest of them.
    """
    case = ce_case
    labels = case.y.numpy()
    a = case.a.numpy()
    ds = awd_analysis(case.problem(), case.V, case.eigvals, batch_size=8, n_draws=6,
                      n_probe=10, n_partner_batches=4, seed=5, pairing="reference",
                      n_anchors=n_anchors)
    groups = [(ds.pair_nu.values[t], ds.pair_mu.values[t]) for t in range(6)]
    groups += [(ds.probe_idx.values, ds.probe_partner.values[:, r]) for r in range(4)]
    for nu, mu in groups:
        assert (labels[nu] == labels[mu]).all()
        dist = np.linalg.norm(a[nu] - a[mu], axis=1)
        assert (dist >= REFERENCE_SELF_DISTANCE).all()
        for c in np.unique(labels[nu]):
            rows = labels[nu] == c
            anchors = np.unique(mu[rows])
            if n_anchors >= 100:
                anchors = np.flatnonzero(labels == c)
            assert len(anchors) <= n_anchors
            for p, q in zip(nu[rows], mu[rows], strict=True):
                d = np.linalg.norm(a[anchors] - a[p], axis=1)
                d = d[d >= REFERENCE_SELF_DISTANCE]
                assert np.linalg.norm(a[q] - a[p]) <= d.min() * (1 + 1e-12)


def test_reference_pairing_seeded_and_errors(ce_case):
    case = ce_case
    kw = dict(batch_size=6, n_draws=3, n_probe=4, n_partner_batches=2, pairing="reference")
    d1 = awd_analysis(case.problem(), case.V, case.eigvals, seed=9, **kw)
    d2 = awd_analysis(case.problem(), case.V, case.eigvals, seed=9, **kw)
    for n in ("pair_nu", "pair_mu", "probe_idx", "probe_partner"):
        np.testing.assert_array_equal(d1[n].values, d2[n].values)
    assert_rel(d1.c_hh.values, d2.c_hh.values, "same seed", rtol=1e-12)
    with pytest.raises(ValueError, match="n_anchors"):
        awd_analysis(case.problem(), case.V, case.eigvals, seed=9, n_anchors=1, **kw)
    with pytest.raises(ValueError, match="pairing"):
        awd_analysis(case.problem(), case.V, case.eigvals, seed=9,
                     **{**kw, "pairing": "nearest"})
    with pytest.raises(ValueError, match="cross_term"):
        awd_analysis(case.problem(), case.V, case.eigvals, seed=9, cross_term="twice", **kw)


@pytest.mark.parametrize(("B", "seed"), [(5, 0), (7, 3), (8, 1)])
def test_minibatch_covariance_keep_is_reference_covar(ce_case, B, seed):
    """last_batch=keep is the reference's Covar (partial batch kept, equal weight), projected.

    ``Covar`` is D x D in the raw weight basis; projected on the reference's components and
    mapped to our order it equals covar_mb(keep) for the same permutation.
    """
    case = ce_case
    perm = np.random.default_rng(seed).permutation(case.N)  # covar_mb's documented shuffle
    covar = reference_covar(case, B, perm)
    P = torch.as_tensor(case.g @ case.V)
    keep = minibatch_covariance(P, B, seed, last_batch="keep").numpy()
    assert_rel(keep, case.top_block(case.components @ covar @ case.components.T),
               "Covar vs covar_mb keep")
    drop = minibatch_covariance(P, B, seed).numpy()
    if case.N % B == 0:
        assert_rel(drop, keep, "drop == keep when B | N", rtol=1e-12)
    else:
        full = perm[: (case.N // B) * B].reshape(-1, B)
        gb = np.stack([case.g[b].mean(0) for b in full]) @ case.V
        g = case.g.mean(0) @ case.V
        assert_rel(drop, gb.T @ gb / len(full) - np.outer(g, g), "drop")
        assert np.abs(drop - keep).max() > 1e-6 * np.abs(keep).max()
    with pytest.raises(ValueError, match="last_batch"):
        minibatch_covariance(P, B, seed, last_batch="pad")


def test_spec_defaults_unchanged(ce_case):
    """Explicit SPEC options give exactly the defaults (matched pairs, symmetrised)."""
    case = ce_case
    kw = dict(batch_size=6, n_draws=3, n_probe=5, n_partner_batches=2, seed=4)
    d0 = awd_analysis(case.problem(), case.V, case.eigvals, **kw)
    d1 = awd_analysis(case.problem(), case.V, case.eigvals, pairing="matched", n_anchors=7,
                      cross_term="symmetrised", **kw)
    for n in ("pair_nu", "pair_mu", "probe_partner"):
        np.testing.assert_array_equal(d0[n].values, d1[n].values)
    for n in ("c_hh", "c_hg", "c_awd_raw", "c_hh_sd_wd"):
        assert_rel(d1[n].values, d0[n].values, n, rtol=1e-12)
    assert d0.attrs["awd_pairing"] == "matched" and d0.attrs["awd_cross_term"] == "symmetrised"
