"""analyze_checkpoint on tiny transformers of both kinds against dense float64 torch.func.

Models: a ViT (8x8 images, 4x4 patches, class token) and a GPT on modular arithmetic
(causal attention, the last position predicts), d_model 4, 2 heads, two blocks, every
Linear with bias; the targets are in the first block (in the last block the query of the
reading position, class token or "=", is the same for every sample, so the Hessian of
``attn.q`` there has rank <= d_model). Targets: the MLP's first Linear with its bias over the
token dimension (``blocks.0.mlp.fc1``) and an attention projection (``blocks.0.attn.q``).

The reference (tests/dense_reference.py, no awch_scale code) forms H with
``torch.func.hessian`` of the whole model's mean loss, the per-sample gradients with one
``autograd.grad`` per sample, the GGN from ``jacrev``, and every per-sample Hessian h_p
with ``torch.func.hessian``. Stored k x k matrices are checked against V^T X V with the
stored basis V (``store_eigvec``), which does not depend on eigenvector signs; V against
the dense top-k eigenspace; the eigenvalues and both gammas (covar: gamma_emp; h2:
gamma_AWD) against the dense eigenpairs, within 1e-6.
"""

from __future__ import annotations

import dense_reference as ref
import numpy as np
import pytest
import torch
from torch.func import functional_call, hessian

from awch_scale.analysis.checkpoint import analyze_checkpoint
from awch_scale.model.architectures import build_model
from awch_scale.run.recipe import ModelSpec

N, B = 24, 4


def tiny(kind: str):
    """(model, x, y) float64: a ViT on random 8x8 images or a GPT on a b = tokens."""
    g = torch.Generator().manual_seed(5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        if kind == "vit":
            spec = ModelSpec(arch="vit", d_model=4, heads=2, depth=2, mlp_ratio=2, patch=4,
                             pool="cls", output_dim=3)
            model = build_model(spec, (1, 8, 8))
            x = torch.rand(N, 1, 8, 8, generator=g, dtype=torch.float64)
            y = torch.arange(N) % 3
        else:
            spec = ModelSpec(arch="gpt", d_model=4, heads=2, depth=2, mlp_ratio=2, vocab=6,
                             output_dim=5)
            model = build_model(spec, (3,))
            a, b = torch.randint(0, 5, (2, N), generator=g)
            x = torch.stack([a, b, torch.full_like(a, 5)], 1).to(torch.float64)
            y = (a + b) % 5
    return model.double().eval(), x, y


def dense_h2(model, target, x, y, loss, V):
    """(1/N) sum_p V^T h_p^2 V with h_p = torch.func.hessian of the single-sample loss."""
    names = ref.block_parameter_names(model, target)
    params = {n: p.detach() for n, p in model.named_parameters()}
    w0 = ref.flat_block(model, target)
    loss_fn = ref.LOSSES[loss] if isinstance(loss, str) else loss

    def sample_loss(w, i):
        parts = ref.unflatten_block(model, names, w)
        return loss_fn(functional_call(model, {**params, **parts}, (x[i:i + 1],)), y[i:i + 1])[0]

    out = np.zeros((V.shape[1], V.shape[1]))
    for i in range(len(x)):
        h = hessian(sample_loss)(w0, i).numpy()
        out += V.T @ h @ h @ V
    return out / len(x)


def separated_k(vals: np.ndarray, k_max: int = 8, gap: float = 0.05,
                floor: float = 1e-4) -> int:
    """The longest prefix of eigenvalues above ``floor * lambda_1``, each 5% of its own
    size from all others (the spectra are steep: a gap relative to lambda_1 leaves two)."""
    k = 0
    while k < min(k_max, len(vals) - 1):
        others = np.delete(vals, k)
        if vals[k] <= floor * vals[0] or np.min(np.abs(others - vals[k])) < gap * vals[k]:
            break
        k += 1
    return k


def assert_matches_dense(model, target, x, y, loss: str, ref_loss, dense_fisher):
    """analyze_checkpoint against the dense float64 reference: the eigenpairs, covar,
    second_moment, fisher, h2 and both gammas within 1e-6. ``ref_loss``: the reference's
    per-sample loss; ``dense_fisher``: the dense GGN. Returns the dataset."""
    H = ref.dense_hessian(model, target, x, y, ref_loss)
    vals, U = ref.dense_eigh(H)
    k = separated_k(vals)
    if k < 4 or vals[k - 1] <= 0:
        pytest.skip(f"no well-separated positive top-k (k = {k}) for this case")
    with pytest.warns(UserWarning, match="left out"):
        ds = analyze_checkpoint(model, target, x, y, loss=loss, batch_size=B, k=k, seed=0,
                                device="cpu", dtype=torch.float64, store_eigvec=True,
                                eigen={"tol": 1e-10}, awd={"draws": 4}, stats=None,
                                spectra=None, fisher={"eigval": False})
    lam1 = abs(vals[0])
    np.testing.assert_allclose(ds.hess_eigval.values, vals[:k], rtol=0, atol=1e-6 * lam1)
    V = ds.hess_eigvec.values
    assert ref.projector_distance(V, U[:, :k]) < 1e-6
    G = ref.per_sample_gradients(model, target, x, y, ref_loss)
    dense = {"covar": ref.dense_covariance(G, B), "second_moment": ref.dense_second_moment(G),
             "fisher": dense_fisher}
    for name, X in dense.items():
        want = V.T @ X @ V
        np.testing.assert_allclose(ds[name].values, want, rtol=0,
                                   atol=1e-6 * np.abs(want).max(), err_msg=name)
    h2 = dense_h2(model, target, x, y, ref_loss, V)
    np.testing.assert_allclose(ds.h2.values, h2, rtol=0, atol=1e-6 * np.abs(h2).max())
    # both gammas from the dense eigenpairs (diagonals do not depend on signs)
    Uk = U[:, :k]
    gam = dict(zip(ds.estimator.values, ds.gamma.values, strict=True))
    fit_c = ref.loglog_fit(np.diag(Uk.T @ dense["covar"] @ Uk), vals[:k])
    fit_h = ref.loglog_fit(np.diag(dense_h2(model, target, x, y, ref_loss, Uk)), vals[:k])
    assert abs(gam["covar"] - fit_c.gamma) < 1e-6
    assert abs(gam["h2"] - fit_h.gamma) < 1e-6
    assert np.isfinite([gam["covar"], gam["h2"]]).all()
    assert np.isfinite(ds.c_pair.values).all()
    return ds


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("target", ["blocks.0.mlp.fc1", "blocks.0.attn.q"])
@pytest.mark.parametrize("kind", ["vit", "gpt"])
def test_stored_variables_match_dense_float64(kind, target, loss):
    model, x, y = tiny(kind)
    ds = assert_matches_dense(model, target, x, y, loss, loss,
                              ref.dense_ggn(model, target, x, y, loss))
    assert float(ds.awd_h1_rel_err) < 1e-8


def tiny_token_gpt():
    """(model, x, y) float64: the tiny GPT reading every position (no last-token pool):
    logits (N, 3, K); labels (N, 3): position 0 predicts b, position 1 ("b" read, "="
    next) is not predicted (-100), position 2 predicts (a + b) mod 5."""
    model, x, _ = tiny("gpt")
    model.pool = torch.nn.Identity()
    a, b = x[:, 0].long(), x[:, 1].long()
    y = torch.stack([b, torch.full_like(a, -100), (a + b) % 5], 1)
    return model, x, y


def token_loss(name: str):
    """The per-sequence loss written from the reference's per-token losses: the mean over
    the predicted positions (label >= 0) of ``ref.LOSSES[name]``."""
    per_token = ref.LOSSES[name]

    def loss(z, y):
        n, t, k = z.shape
        mask = (y >= 0).to(z.dtype)
        values = per_token(z.reshape(n * t, k), y.clamp_min(0).reshape(n * t)).reshape(n, t)
        return (values * mask).sum(1) / mask.sum(1)
    return loss


def dense_token_ggn(model, target, x, y, name):
    """F = (1/N) sum_i J_i^T Lambda_i J_i, J_i the (T K) x D Jacobian of sample i's logits,
    Lambda_i block-diagonal: (1/n_i) times the written-out per-token Lambda (dense_ggn's)
    at each of its n_i predicted positions, 0 elsewhere."""
    names = ref.block_parameter_names(model, target)
    params = {n: p.detach() for n, p in model.named_parameters()}
    w0 = ref.flat_block(model, target)

    def logits(w, xi):
        parts = ref.unflatten_block(model, names, w)
        return functional_call(model, {**params, **parts}, (xi[None],))[0]

    F = np.zeros((w0.numel(), w0.numel()))
    for xi, yi in zip(x, y, strict=True):
        J = torch.func.jacrev(logits)(w0, xi).detach().numpy()  # (T, K, D)
        z = logits(w0, xi).detach().numpy()
        T, K = z.shape
        predicted = [t for t in range(T) if yi[t] >= 0]
        for t in predicted:
            p = np.exp(z[t] - z[t].max())
            p /= p.sum()
            S = np.diag(p) - np.outer(p, p)
            Lam = {"ce": S, "mse": (2.0 / K) * S @ S}[name]
            F += J[t].T @ Lam @ J[t] / len(predicted)
    return F / len(x)


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("target", ["blocks.0.mlp.fc1", "blocks.0.attn.q"])
def test_per_token_labels_match_dense_float64(target, loss):
    """Sequences labelled per token (labels (N, T), -100 where not predicted): a sample's
    loss is the mean over its predicted tokens; the set is one class for the AWD draws and
    covar_within (= covar). Every stored matrix and both gammas within 1e-6."""
    model, x, y = tiny_token_gpt()
    ds = assert_matches_dense(model, target, x, y, loss, token_loss(loss),
                              dense_token_ggn(model, target, x, y, loss))
    np.testing.assert_allclose(ds.covar_within.values, ds.covar.values, rtol=1e-12,
                               atol=1e-14)


def test_per_token_labels_are_checked():
    from awch_scale.errors import SettingsError

    model, x, y = tiny_token_gpt()
    kw = dict(loss="ce", batch_size=B, k=4, device="cpu", dtype=torch.float64, awd=None,
              stats=None, spectra=None, fisher=None, progress=False)
    bad = y.clone()
    bad[3] = -100
    with pytest.raises(SettingsError, match="1 sequence\\(s\\) without a predicted token"):
        analyze_checkpoint(model, "blocks.0.mlp.fc1", x, bad, **kw)
    with pytest.raises(SettingsError, match="must lie in 0..4"):
        analyze_checkpoint(model, "blocks.0.mlp.fc1", x, y.clamp_min(0) + 3, **kw)
    last = tiny("gpt")[0]  # predicts the last position only: logits (N, K)
    with pytest.raises(SettingsError, match="the model must return logits \\(samples, 3, K\\)"):
        analyze_checkpoint(last, "blocks.0.mlp.fc1", x, y, **kw)
