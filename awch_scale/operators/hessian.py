"""Hessian of the analysis-set loss with respect to the target block."""

from __future__ import annotations

from torch import Tensor
from torch.func import grad, jvp, vmap

from .base import BlockOperator


class HessianOperator(BlockOperator):
    """H = (1/N) sum_i h_i, h_i = d^2 l_i / dw^2 (SPEC section 1).

    Products are forward-over-reverse Hessian-vector products
    (``torch.func.jvp`` of ``torch.func.grad``) vmapped over the columns of V,
    so one sweep over a chunk serves up to ``max_vectors`` vectors.

    Args:
        problem: the block problem.
        max_vectors: columns of V per vmapped product.
        world: a :class:`~awch_scale.distributed.World`; products then sum this rank's
            chunks and all-reduce (see :class:`BlockOperator`).
    """

    def __init__(self, problem, *, max_vectors: int = 32, world=None):
        super().__init__(problem, max_vectors=max_vectors)
        self.world = world

    def _chunk_matmat(self, chunk: slice, x: Tensor, y: Tensor, V: Tensor) -> Tensor:
        p = self.problem

        def chunk_loss(w: Tensor) -> Tensor:
            return p.per_sample_loss(w, x, y).sum()

        def hvp(v: Tensor) -> Tensor:
            return jvp(grad(chunk_loss), (p.w,), (v,))[1]

        return vmap(hvp, in_dims=1, out_dims=1)(V)
