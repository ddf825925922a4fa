"""Fisher / generalised Gauss-Newton matrix of the target block (SPEC section 5).

    F = (1/N) sum_i J_i^T Lambda_i J_i,    J_i = d z_i / d w  (z the logits, K outputs)

(sequences labelled per token: z_i holds the logits of every position, and Lambda_i is
block-diagonal over them, :func:`logit_curvature`)

with Lambda_i the Hessian of the loss in the logits for ``ce`` (diag(p_i) - p_i p_i^T,
so F is the true Fisher) and ``lmse`` ((2/K) I), and for ``mse`` the Gauss-Newton
matrix of the softmax outputs, S_i^T (2/K) S_i with S_i = d softmax(z_i)/d w, i.e.
Lambda_i = (2/K) J_sm^2 with J_sm = diag(p_i) - p_i p_i^T the (symmetric) softmax
Jacobian. Near a minimum the Fisher approximation predicts C proportional to F
proportional to H; the store lets a user test it.

Two operators, the same matrix (the tests hold them against each other and against a
dense float64 GGN from explicit per-sample Jacobians):

- :class:`GGNOperator` (any block): per chunk, one linearisation of w -> z (a VJP
  closure built once), then for a block of vectors a vmapped JVP, Lambda in logit
  space, and the VJP: two network passes per vector block, no D x D array.
- :class:`KroneckerGGNOperator` (bias-free Linear target, z = W a): the per-sample GGN
  is G_i (x) a_i a_i^T with G_i = J_{z,i}^T Lambda_i J_{z,i} (d_out x d_out, J_z the
  Jacobian of the logits with respect to the layer's output), exactly as the Hessian
  is Q_i (x) a_i a_i^T; so products cost what a Kronecker Hessian product costs.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap

from awch_scale.model.losses import LOSSES, token_weights
from awch_scale.model.operators.base import BlockOperator
from awch_scale.model.operators.kronecker import KroneckerHessianOperator
from awch_scale.world import SINGLE, World


def logit_curvature(loss: str, z: Tensor, U: Tensor, y: Tensor | None = None) -> Tensor:
    """Lambda_i U_i for logits z (n, K) and a block U (n, K, m), per SPEC 5.

    Sequences labelled per token (z (n, T, K), U (n, T, K, m), labels y (n, T)): a
    sample's loss is the mean over its n_i predicted tokens (label >= 0,
    :mod:`awch_scale.model.losses`), so Lambda_i is block-diagonal over the positions,
    (1/n_i) Lambda_t at a predicted position t and 0 elsewhere.
    """
    if z.ndim == 3:
        n, t, k = z.shape
        flat = logit_curvature(loss, z.reshape(n * t, k), U.reshape(n * t, k, -1))
        return flat.reshape(U.shape) * token_weights(y, z.dtype)[:, :, None, None]
    K = z.shape[-1]
    if loss == "lmse":
        return (2.0 / K) * U
    p = torch.softmax(z, dim=-1)[:, :, None]

    def sm(X):  # the softmax Jacobian J_sm X = p * X - p (p^T X), symmetric
        return p * X - p * (p * X).sum(1, keepdim=True)

    if loss == "ce":
        return sm(U)
    if loss == "mse":
        return (2.0 / K) * sm(sm(U))
    raise ValueError(f"unknown loss {loss!r}; allowed: ce, mse, lmse")


def loss_name(problem) -> str:
    """The SPEC 1 name of the problem's loss function."""
    for name, fn in LOSSES.items():
        if fn is problem.loss:
            return name
    raise ValueError("the Fisher needs one of the losses ce, mse, lmse")


class GGNOperator(BlockOperator):
    """F = (1/N) sum_i J_i^T Lambda_i J_i for any block (module docstring).

    Args:
        problem: the block problem.
        max_vectors: columns per product.
        world: a :class:`~awch_scale.world.World`; products then sum this rank's
            chunks and all-reduce (see :class:`BlockOperator`).
    """

    def __init__(self, problem, *, max_vectors: int = 32, world: World | None = SINGLE):
        super().__init__(problem, max_vectors=max_vectors, world=world)
        self.loss = loss_name(problem)

    def _chunk_matmat(self, chunk: slice, x: Tensor, y: Tensor, V: Tensor) -> Tensor:
        p = self.problem

        def logits(w: Tensor) -> Tensor:
            return p.logits(w, x)

        z, pull = vjp(logits, p.w)
        JV = vmap(lambda v: jvp(logits, (p.w,), (v,))[1], in_dims=1, out_dims=-1)(V)
        LJV = logit_curvature(self.loss, z.detach(), JV, y)
        return vmap(lambda u: pull(u)[0], in_dims=-1, out_dims=1)(LJV)


class KroneckerGGNOperator(KroneckerHessianOperator):
    """F = (1/N) sum_i G_i (x) a_i a_i^T for a bias-free Linear target (module docstring).

    Shares the caching and products of :class:`KroneckerHessianOperator`; only the
    per-sample d_out x d_out matrix differs (G_i instead of Q_i).
    """

    def __init__(self, problem, **kw):
        self.loss = loss_name(problem)
        super().__init__(problem, **kw)

    def _factors_exact(self) -> bool:
        return True  # G_i = J_i^T Lambda_i J_i by definition

    def _factors(self, z: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(J_z, Lambda) for a batch: (n, K, d_out) and (n, K, K) (SPEC 5's Lambda_i)."""
        J, logits = self.layer.logit_jacobian(z, x)
        eye = torch.eye(logits.shape[-1], dtype=logits.dtype, device=logits.device)
        lam = logit_curvature(self.loss, logits, eye.expand(len(logits), -1, -1))
        return J, 0.5 * (lam + lam.transpose(1, 2))

    def _full(self, z: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """G_i = J_z^T Lambda_i J_z for a batch, (n, d_out, d_out), symmetrised."""
        J, lam = self._factors(z, x, y)
        G = J.transpose(1, 2) @ lam @ J
        return 0.5 * (G + G.transpose(1, 2))

    def _uncached_times(self, a: Tensor, x: Tensor, y: Tensor, U: Tensor) -> Tensor:
        from awch_scale.model.target import ggn_times

        return ggn_times(*self._factors(a @ self.layer.W.T, x, y), U)


def fisher_operator(problem, kind: str = "auto", *, world: World | None = SINGLE,
                    **kw) -> BlockOperator:
    """The Fisher/GGN operator: ``kronecker`` for a bias-free Linear target under
    ``auto``, else ``hvp`` (the generic :class:`GGNOperator`); ``world`` shards its
    products (see :class:`BlockOperator`), ``kw`` go to the Kronecker operator."""
    if kind == "hvp" or (kind == "auto" and problem.linear_name is None):
        return GGNOperator(problem, world=world)
    if kind in ("auto", "kronecker"):
        return KroneckerGGNOperator(problem, world=world, **kw)
    raise ValueError(f"unknown operator {kind!r}; allowed: auto, hvp, kronecker")
