"""Hessian of the analysis-set loss with respect to the target block (any block)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from awch_scale.model.operators.base import BlockOperator
from awch_scale.world import SINGLE, World


class HessianOperator(BlockOperator):
    """H = (1/N) sum_i h_i, h_i = d^2 l_i / dw^2 (SPEC section 1), for any block.

    Two exact ways to get sum_{i in chunk} h_i V:

    - ``reverse`` (default): reverse-over-reverse. Once per chunk the gradient
      g = grad_w sum_i l_i is built with its graph (one forward, one backward); every
      block of vectors is then one batched backward through that graph,
      ``autograd.grad(g, w, V^T, is_grads_batched=True)`` (vmapped over the columns),
      or one backward per column when the head has convolutions (vmapped conv
      double-backward was 3.8x slower than the loop here: 6.6 s vs 1.7 s for 32 vectors
      on 512 samples of the conv benchmark; for Linear heads batched is 1.4x faster).
      The graph is kept while the same chunk is multiplied with further vector
      blocks, so the forward and first backward are done once per chunk and product;
      it is dropped when the product ends, so no graph (and none of its activations)
      outlives a product.
    - ``forward``: forward-over-reverse, ``vmap`` over the columns of
      ``jvp(grad(loss))`` (torch.func only; no graph kept).

    Measured on the HVP benchmark's shape (FC 784-50-50-10, target fc2, D = 2500, 4096
    samples, chunks of 512, m = 32, one thread, loaded 2-core machine): ``forward`` 114
    HVP/s, ``reverse`` 158 HVP/s (vjp of torch.func.grad reused per chunk: 139).

    Args:
        problem: the block problem.
        max_vectors: columns of V per batched product.
        world: a :class:`~awch_scale.world.World`; products then sum this rank's
            chunks and all-reduce (see :class:`BlockOperator`).
        mode: ``reverse`` or ``forward``.

    Example:
        The Hessian of a tiny network's first layer times a vector, against the dense
        ``torch.func.hessian`` of the mean cross entropy (a reference that shares no
        code with the operator):

        >>> import torch
        >>> from torch import nn
        >>> from torch.func import functional_call, hessian
        >>> from awch_scale.model.problem import make_problem
        >>> from awch_scale.model.operators import HessianOperator
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(),
        ...                       nn.Linear(4, 2, bias=False)).double()
        >>> x, y = torch.randn(10, 3, dtype=torch.float64), torch.arange(10) % 2
        >>> op = HessianOperator(make_problem(model, "0", x, y, "ce", chunk_size=4))
        >>> op.shape
        (12, 12)
        >>> def mean_loss(w):
        ...     logits = functional_call(model, {"0.weight": w.view(4, 3)}, (x,))
        ...     return nn.functional.cross_entropy(logits, y)
        >>> H = hessian(mean_loss)(model[0].weight.detach().reshape(-1))
        >>> v = torch.randn(12, dtype=torch.float64)
        >>> Hv = op @ v
        >>> Hv.shape, Hv.dtype
        (torch.Size([12]), torch.float64)
        >>> bool((Hv - H @ v).abs().max() <= 1e-12 * (H @ v).abs().max())
        True
        >>> op.n_products, op.n_passes  # one vector, one pass over the 3 chunks
        (1, 1)
    """

    def __init__(self, problem, *, max_vectors: int = 32, world: World | None = SINGLE,
                 mode: str = "reverse"):
        super().__init__(problem, max_vectors=max_vectors, world=world)
        if mode not in ("reverse", "forward"):
            raise ValueError(f"mode {mode!r} must be 'reverse' or 'forward'")
        self.mode = mode
        self._graph: tuple | None = None
        """Reverse mode: (chunk key, w, g) of the chunk being multiplied, within a product."""
        convs = (torch.nn.modules.conv._ConvNd,)
        self.batched = not any(isinstance(m, convs) for m in problem.head.modules())
        """Reverse mode: one vmapped backward per block (True) or one per column."""

    def _matmat(self, V: Tensor) -> Tensor:
        """The streamed product; the last chunk's graph is dropped when it ends."""
        try:
            return super()._matmat(V)
        finally:
            self._graph = None

    def _chunk_matmat(self, chunk: slice, x: Tensor, y: Tensor, V: Tensor) -> Tensor:
        if self.mode == "forward":
            return self._forward(x, y, V)
        p = self.problem
        key = (chunk.start, chunk.stop, x.data_ptr())
        if self._graph is None or self._graph[0] != key:
            self._graph = None  # free the previous chunk's graph first
            w = p.w.detach().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(p.per_sample_loss(w, x, y).sum(), w,
                                           create_graph=True)
            self._graph = (key, w, g)
        _, w, g = self._graph
        if self.batched:
            (HV,) = torch.autograd.grad(g, w, V.T.contiguous(), retain_graph=True,
                                        is_grads_batched=True)
            HV = HV.T
        else:
            HV = torch.stack([torch.autograd.grad(g, w, v, retain_graph=True)[0]
                              for v in V.T], dim=1)
        return HV

    def _forward(self, x: Tensor, y: Tensor, V: Tensor) -> Tensor:
        p = self.problem

        def chunk_loss(w: Tensor) -> Tensor:
            return p.per_sample_loss(w, x, y).sum()

        def hvp(v: Tensor) -> Tensor:
            return jvp(grad(chunk_loss), (p.w,), (v,))[1]

        return vmap(hvp, in_dims=1, out_dims=1)(V)
