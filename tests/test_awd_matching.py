"""Matched draws and probe partners (SPEC section 4): balance, disjointness, optimality."""

from __future__ import annotations

import itertools

import numpy as np
import problems
import pytest
import torch
from torch.func import grad, vmap

from awch_scale.analysis.awd import match_one_to_one, matched_draws, probe_partners
from awch_scale.analysis.awd.matching import squared_distances
from awch_scale.model.problem import make_problem


def _cost(feats, nu, mu):
    return float(((feats[nu] - feats[mu]) ** 2).sum())


def _best_permutation_cost(feats, nu, mu):
    return min(_cost(feats, nu, np.asarray(p)) for p in itertools.permutations(mu))


@pytest.mark.parametrize("seed", range(4))
def test_one_to_one_matching_is_minimal(seed):
    rng = np.random.default_rng(seed)
    feats = torch.as_tensor(rng.standard_normal((12, 3)))
    nu, mu = np.arange(6), np.arange(6, 12)
    got = match_one_to_one(feats, nu, mu)
    assert sorted(got) == list(mu)  # each mu used exactly once
    assert _cost(feats, nu, got) == pytest.approx(_best_permutation_cost(feats, nu, mu),
                                                   rel=1e-12)


def test_squared_distances_match_direct_formula():
    rng = np.random.default_rng(0)
    feats = torch.as_tensor(rng.standard_normal((9, 4)))
    d = squared_distances(feats, np.array([0, 3, 5]), np.array([1, 2, 8, 4]))
    want = ((feats[[0, 3, 5]][:, None] - feats[[1, 2, 8, 4]][None]) ** 2).sum(-1).numpy()
    np.testing.assert_allclose(d, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("B", "counts"), [(7, (9, 10, 8)), (8, (9, 10, 8)), (2, (5, 4, 6))])
def test_matched_draws_balanced_disjoint_same_class_optimal(B, counts):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(labels)
    feats = torch.as_tensor(rng.standard_normal((len(labels), 3)))
    nu, mu = matched_draws(labels, feats, B, 30, np.random.default_rng(2))
    C = len(counts)
    assert nu.shape == mu.shape == (30, B) and nu.dtype == np.int64
    n_extra = np.zeros(C, dtype=int)
    for t in range(30):
        assert len(set(nu[t]) | set(mu[t])) == 2 * B  # disjoint, no repeats
        np.testing.assert_array_equal(labels[nu[t]], labels[mu[t]])  # same class per slot
        per_class = np.bincount(labels[nu[t]], minlength=C)
        assert set(per_class) <= {B // C, B // C + 1}
        assert (per_class > B // C).sum() == B % C
        n_extra += per_class > B // C
        for c in range(C):
            s = labels[nu[t]] == c
            if s.sum() > 1:
                assert _cost(feats, nu[t][s], mu[t][s]) == pytest.approx(
                    _best_permutation_cost(feats, nu[t][s], mu[t][s]), rel=1e-12)
    if B % C:
        assert (n_extra > 0).all()  # the left-over slots go to random classes


def test_too_few_samples_raise():
    labels = np.array([0] * 10 + [1] * 5)
    feats = torch.zeros(15, 2)
    with pytest.raises(ValueError, match="class 1 has 5 samples"):
        matched_draws(labels, feats, 6, 1, np.random.default_rng(0))
    matched_draws(labels, feats, 4, 1, np.random.default_rng(0))  # 2 per class: fine
    with pytest.raises(ValueError, match="class"):
        probe_partners(np.array([0, 0, 1]), torch.zeros(3, 2), 2, 3, 1,
                       np.random.default_rng(0))


@pytest.mark.parametrize("B", [6, 2, 21])  # B < C: a probe's class is still represented
def test_probe_partners_same_class_never_self(B):
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), 8)
    feats = torch.as_tensor(rng.standard_normal((24, 4)))
    probes, partners = probe_partners(labels, feats, B, 10, 5, np.random.default_rng(4))
    assert len(set(probes)) == 10 and partners.shape == (10, 5)
    d = squared_distances(feats, probes, np.arange(24))
    for i, (p, row) in enumerate(zip(probes, partners, strict=True)):
        assert (row != p).all() and (labels[row] == labels[p]).all()
        others = np.flatnonzero((labels == labels[p]) & (np.arange(24) != p))
        closer = (d[i, others][None, :] < d[i, row][:, None]).sum(1)
        # the partner is the nearest of n_y = B/C candidates among the 7 others
        assert (closer <= len(others) - B // 3).all()
        if B == 21:  # every other same-class sample is in the batch: the nearest one
            assert (row == others[np.argmin(d[i, others])]).all()


def test_mean_partner_gradient_is_grad_L_mu():
    """One-to-one matching: (1/B) sum_s g_{mu[s]} over partners is exactly grad L^mu."""
    x, y = problems.class_data((1, 2, 3))
    problem = make_problem(problems.mlp("tanh"), "fc2", x, y, "ce", dtype=torch.float64)
    nu, mu = matched_draws(y.numpy(), problem.linear_inputs, 7, 5, np.random.default_rng(0))
    g = vmap(grad(problem.sample_loss), in_dims=(None, 0, 0))(problem.w, problem.features,
                                                               problem.labels)
    for t in range(5):
        members = sorted(set(mu[t].tolist()))  # the batch mu as a set
        grad_mu = grad(lambda w, i=members: problem.per_sample_loss(
            w, problem.features[i], problem.labels[i]).mean())(problem.w)
        partners_mean = g[mu[t]].mean(0)  # partner of slot s is mu[t, s]
        torch.testing.assert_close(partners_mean, grad_mu, rtol=1e-12, atol=1e-14)
