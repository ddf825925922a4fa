"""h2 = V^T E_p[h_p^2] V for any block from per-sample Hessian-vector products
(awch_scale.model.per_sample_hessian), against a dense float64 brute force and, for a
bias-free Linear target, against the Kronecker route of the AWD analysis (1e-10).

The dense reference builds every per-sample Hessian h_p (D x D) with
``torch.func.hessian`` of the single-sample loss of the whole model (no feature cache,
no vmap) and forms V^T h_p^2 V explicitly.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, hessian

from awch_scale.analysis.awd import awd_analysis
from awch_scale.analysis.awd.block import LEFT_OUT, block_awd_analysis
from awch_scale.model.losses import get_loss
from awch_scale.model.per_sample_hessian import hessian_moments, moment_sizes
from awch_scale.model.problem import make_problem


def _mlp(bias: bool, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(6, 5, bias=bias), act1=nn.Tanh(),
        fc2=nn.Linear(5, 4, bias=bias), act2=nn.Tanh(), out=nn.Linear(4, 3, bias=bias),
    )).double()


def _data(n: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.arange(n) % 3


def _basis(D: int, k: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(D, k, generator=g, dtype=torch.float64))[0]


def dense_h2(model, names, x, y, loss, V):
    """(1/N) sum_p V^T h_p^2 V and (1/N) sum_p diag(V^T h_p V), h_p dense."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    shapes = [params[n].shape for n in names]
    w0 = torch.cat([params[n].reshape(-1) for n in names])
    loss_fn = get_loss(loss)

    def sample_loss(w, i):
        parts, off = {}, 0
        for n, s in zip(names, shapes, strict=True):
            parts[n] = w[off:off + s.numel()].view(s)
            off += s.numel()
        return loss_fn(functional_call(model, {**params, **parts}, (x[i:i + 1],)), y[i:i + 1])[0]

    h2 = torch.zeros(V.shape[1], V.shape[1], dtype=torch.float64)
    h1 = torch.zeros(V.shape[1], dtype=torch.float64)
    for i in range(len(x)):
        h = hessian(sample_loss)(w0, i)
        h2 += V.T @ h @ h @ V
        h1 += torch.diagonal(V.T @ h @ V)
    return h2 / len(x), h1 / len(x)


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("target", ["fc2", ["fc1.weight", "fc1.bias"], ["fc2.bias", "out.weight"]])
def test_h2_matches_dense_for_blocks_with_bias(target, loss):
    model, (x, y) = _mlp(bias=True).eval(), _data()
    p = make_problem(model, target, x, y, loss, chunk_size=7)
    assert p.linear_name is None and ("bias" in p.generic_reason or "module(s)" in p.generic_reason)
    V = _basis(p.D, 4)
    hm = hessian_moments(p, V, max_elements=10**6)
    want, h1 = dense_h2(model, p.block_names, x, y, loss, V)
    scale = want.abs().max()
    assert (hm.h2 - want).abs().max() <= 1e-10 * scale
    assert (hm.h1_diag - h1).abs().max() <= 1e-10 * h1.abs().max()


def test_small_budget_splits_columns_with_the_same_numbers():
    model, (x, y) = _mlp(bias=True).eval(), _data()
    p = make_problem(model, "fc2", x, y, "ce", chunk_size=8)
    V = _basis(p.D, 6)
    big = hessian_moments(p, V, max_elements=10**7)
    assert big.sizes.vectors == 6 and big.sizes.samples == 8
    small = hessian_moments(p, V, max_elements=p.D * 6 + 2 * (4 * p.D + 100))
    assert small.sizes.samples == 1 and 1 <= small.sizes.vectors < 6
    assert torch.allclose(small.h2, big.h2, rtol=1e-12, atol=0)


def test_moment_sizes():
    assert moment_sizes(10, 2, 5, 10**6, 64) == moment_sizes(10, 2, 5, 10**9, 64)
    assert moment_sizes(10, 2, 5, 10**6, 64).samples == 64
    s = moment_sizes(1000, 20, 100, 50_000, 64)  # one sample holds D k = 20000
    assert s.samples == 1 and s.vectors == 6  # (50000 - 20000) // (4 D + 4 A)
    assert moment_sizes(1000, 20, 100, 10, 64).vectors == 1  # never fewer than one


@pytest.mark.parametrize("loss", ["ce", "mse", "lmse"])
def test_generic_h2_equals_kronecker_route_for_bias_free_linear(loss):
    """The Kronecker path stays for bias-free Linear targets; both paths agree."""
    model, (x, y) = _mlp(bias=False).eval(), _data(30)
    p = make_problem(model, "fc2", x, y, loss, chunk_size=11)
    assert p.linear_name == "fc2"
    V = _basis(p.D, 5)
    kron = awd_analysis(p, V, np.linspace(1.0, 0.1, 5), batch_size=6, n_draws=2, n_probe=3,
                        n_partner_batches=2, seed=0)
    hm = hessian_moments(p, V, max_elements=10**6)
    want = torch.as_tensor(kron.h2.values)
    assert (hm.h2 - want).abs().max() <= 1e-10 * want.abs().max()


def test_block_awd_analysis_c_pair_and_left_out():
    model, (x, y) = _mlp(bias=True).eval(), _data(36)
    p = make_problem(model, "fc2", x, y, "ce", chunk_size=10)
    V = _basis(p.D, 4)
    with pytest.warns(UserWarning, match="left out c_awd_raw"):
        ds = block_awd_analysis(p, V, np.array([4.0, 3.0, 2.0, 1.0]), batch_size=6,
                                n_draws=3, seed=0, max_chunk_elements=10**6)
    assert set(ds.data_vars) >= {"c_pair", "h2", "h2_diag", "pair_nu", "pair_mu", "gamma"}
    assert not set(ds.data_vars) & set(LEFT_OUT)
    assert list(ds.estimator.values) == ["c_pair", "h2"]
    # c_pair from explicit per-sample gradients of the recorded draws
    params = {n: q.detach() for n, q in model.named_parameters()}
    w0 = torch.cat([params[n].reshape(-1) for n in p.block_names])

    def batch_loss(w, idx):
        wt, b = w[:20].view(4, 5), w[20:]
        out = functional_call(model, {**params, "fc2.weight": wt, "fc2.bias": b}, (x[idx],))
        return get_loss("ce")(out, y[idx]).mean()

    ref = torch.zeros(4, 4, dtype=torch.float64)
    for nu, mu in zip(ds.pair_nu.values, ds.pair_mu.values, strict=True):
        e = V.T @ (grad(batch_loss)(w0, list(mu)) - grad(batch_loss)(w0, list(nu)))
        ref += 0.5 * torch.outer(e, e)
    ref /= 3
    got = torch.as_tensor(ds.c_pair.values)
    assert (got - ref).abs().max() <= 1e-10 * ref.abs().max()
    assert "sigma_w2" in ds.attrs["awd_left_out"]


def test_float64_sums_by_row_slices_give_the_same_numbers(monkeypatch):
    import awch_scale.model.per_sample_hessian as psh

    model, (x, y) = _mlp(bias=True).eval(), _data()
    p = make_problem(model, ["fc1.weight", "fc1.bias", "fc2.weight"], x, y, "ce", chunk_size=8)
    V = _basis(p.D, 5)
    whole = hessian_moments(p, V, max_elements=10**7)
    monkeypatch.setattr(psh, "ROW_SLICE", 7 * 8 * 5)  # 7 rows of the (8, D, 5) products
    sliced = hessian_moments(p, V, max_elements=10**7)
    assert torch.allclose(sliced.h2, whole.h2, rtol=1e-13, atol=0)
    assert torch.allclose(sliced.h1_diag, whole.h1_diag, rtol=1e-13, atol=0)
