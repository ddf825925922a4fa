"""Per-sample gradients of the target block, projected onto a basis as they stream."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, vmap

from .problem import BlockProblem


def chunk_gradients(problem: BlockProblem, x: Tensor, y: Tensor) -> Tensor:
    """g_i = grad_w l_i for the samples of one chunk, shape (n, D), problem dtype.

    ``torch.func.vmap`` over ``torch.func.grad`` of the single-sample loss.
    """
    return vmap(grad(problem.sample_loss), in_dims=(None, 0, 0))(problem.w, x, y)


def projected_gradients(problem: BlockProblem, basis: Tensor, progress=None) -> Tensor:
    """P with P[i] = V^T g_i for every analysis sample, shape (N, k), float64.

    The (n, D) gradients of one chunk are projected and dropped at once, so memory is
    O(chunk * D + k * D + N * k).

    Args:
        problem: the block problem.
        basis: V, shape (D, k).
        progress: optional callable advanced by one per chunk.
    """
    V = basis.to(problem.dtype)
    out = []
    for x, y in problem.chunks():
        out.append((chunk_gradients(problem, x, y) @ V).to(torch.float64))
        if progress is not None:
            progress()
    return torch.cat(out)
