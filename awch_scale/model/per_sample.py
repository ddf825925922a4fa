"""Per-sample gradients of the target block, projected onto a basis as they stream.

Two interchangeable backends give g_i = grad_w l_i for a chunk of samples:

- ``torch_func``: ``torch.func.vmap`` over ``torch.func.grad`` of the single-sample
  loss; works for any model and any block.
- ``backpack``: BackPACK's ``BatchGrad`` on one backward pass of the summed chunk loss
  (sum reduction, so ``grad_batch`` is exactly g_i). It needs an ``nn.Sequential`` head
  of modules BackPACK knows. BackPACK's ``extend()`` changes a module so that it can no
  longer be used under ``torch.func``; the backend therefore works on its own deep copy
  of the head, made once per problem, and the original head stays torch.func-clean.

For a bias-free Linear target (``problem.linear_name``) the default (``auto``) is the
``linear`` route, which forms no per-sample D-vector at all: g_i = vec(delta_i a_i^T)
with delta_i = d l_i / d z_i (z_i = W a_i, :meth:`TargetLayer.deltas`), so

    P[i] = V^T g_i = Y(a_i)^T delta_i,   Y(a) = Vr . a  (d_out, k)

(:class:`awch_scale.model.projection.RankOneBasis`). Memory per chunk is
O(chunk * d_out * min(d_in, k)) instead of O(chunk * D).
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from awch_scale.model.problem import BlockProblem
from awch_scale.world import SINGLE, World

Backend = Literal["auto", "linear", "torch_func", "backpack"]


def chunk_gradients(problem: BlockProblem, x: Tensor, y: Tensor) -> Tensor:
    """g_i = grad_w l_i for the samples of one chunk, shape (n, D), problem dtype."""
    return vmap(grad(problem.sample_loss), in_dims=(None, 0, 0))(problem.w, x, y)


class BackpackGradients:
    """Per-sample gradients with BackPACK ``BatchGrad`` on an extended copy of the head."""

    def __init__(self, problem: BlockProblem):
        from awch_scale._torchvision_compat import ensure_torchvision_importable

        ensure_torchvision_importable()  # before BackPACK imports torchvision
        from backpack import extend

        if not isinstance(problem.head, nn.Sequential):
            raise ValueError("the backpack backend needs an nn.Sequential model")
        self.problem = problem
        self.head = extend(copy.deepcopy(problem.head))
        params = dict(self.head.named_parameters())
        for name, p in params.items():
            p.requires_grad_(name in problem.block_names)
        with torch.no_grad():
            for name, value in problem.unflatten(problem.w).items():
                params[name].copy_(value)
        self.block = [params[n] for n in problem.block_names]

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-sample gradients (n, D) of the chunk (x, y)."""
        from backpack import backpack
        from backpack.extensions import BatchGrad

        for p in self.block:
            p.grad = None
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss = self.problem.loss(self.head(x), y).sum()
            with backpack(BatchGrad()):
                loss.backward()
        return torch.cat([p.grad_batch.reshape(x.shape[0], -1) for p in self.block], dim=1)


def gradient_function(problem: BlockProblem, backend: Backend = "auto"):
    """A callable (x, y) -> (n, D) per-sample gradients for the chosen backend.

    ``auto`` uses torch.func (it serves every model); ``backpack`` raises ValueError if
    the head is not an ``nn.Sequential``.
    """
    if backend in ("auto", "torch_func"):
        return lambda x, y: chunk_gradients(problem, x, y)
    if backend == "backpack":
        return BackpackGradients(problem)
    raise ValueError(f"unknown per-sample backend {backend!r}; allowed: auto, torch_func, "
                     "backpack")


def projected_gradients(problem: BlockProblem, basis: Tensor, progress=None,
                        backend: Backend = "auto", *, layer=None,
                        world: World | None = SINGLE) -> Tensor:
    """P with P[i] = V^T g_i for every analysis sample, shape (N, k), float64.

    Generic route: the (n, D) gradients of one chunk are projected and dropped at once,
    memory O(chunk * D + k * D + N * k). ``linear`` route (default for a bias-free
    Linear target, see the module docstring): P[i] = Y(a_i)^T delta_i, no D-vector per
    sample.

    Args:
        problem: the block problem.
        basis: V, shape (D, k).
        progress: optional callable advanced by one per chunk.
        backend: ``auto`` (``linear`` for a Linear target, else ``torch_func``),
            ``linear``, ``torch_func`` or ``backpack``.
        layer: a :class:`~awch_scale.model.target.TargetLayer` of ``problem`` to reuse
            (e.g. ``KroneckerHessianOperator.layer``); built when None.
        world: a :class:`~awch_scale.world.World`: each rank projects its chunks
            and the rows are summed over ranks (other ranks' rows are zero), so every
            rank returns the full P (None or the default :data:`~awch_scale.world.SINGLE`:
            one process).
    """
    world = world or SINGLE
    if backend == "auto":
        backend = "linear" if problem.linear_name is not None else "torch_func"
    if backend == "linear":
        grads = _linear_projector(problem, basis, layer)
    else:
        V = basis.to(problem.dtype)
        gfun = gradient_function(problem, backend)

        def grads(chunk, x, y):
            return gfun(x, y) @ V

    out = torch.zeros(problem.N, basis.shape[1], dtype=torch.float64, device=problem.device)
    for chunk in world.shard(problem.slices()):
        x, y = problem.features[chunk], problem.labels[chunk]
        out[chunk] = grads(chunk, x, y).to(torch.float64)
        if progress is not None:
            progress()
    return world.all_reduce(out)


def _linear_projector(problem: BlockProblem, basis: Tensor, layer=None):
    """(chunk, x, y) -> (n, k) rows Y(a_i)^T delta_i of P (Linear target)."""
    from awch_scale.model.projection import RankOneBasis
    from awch_scale.model.target import TargetLayer

    tl = layer if layer is not None else TargetLayer(problem)
    rb = RankOneBasis(basis, tl.d_out, tl.d_in, dtype=problem.dtype, device=problem.device)

    def rows(chunk, x, y):
        a = tl.A[chunk]
        delta = tl.deltas(a @ tl.W.T, x, y)
        return rb.project(delta, a)

    return rows
