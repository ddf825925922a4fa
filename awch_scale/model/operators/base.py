"""Base class of the matrix-free operators."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from awch_scale.errors import NonFiniteError
from awch_scale.model.operators.algebra import DENSE_LIMIT, OperatorAlgebra
from awch_scale.model.problem import BlockProblem

__all__ = ["DENSE_LIMIT", "BlockOperator"]


class BlockOperator(OperatorAlgebra):
    """A symmetric D x D matrix A = (1/N) sum_i A_i over the analysis set, never formed.

    Subclasses implement :meth:`_chunk_matmat`, the sum over one chunk of samples of
    A_i V for a (D, m) block V (or, for another layout of the products,
    :meth:`_accumulate`, the sum over all of this process's chunks). :meth:`matmat`
    streams the chunks, evaluates the products in the problem's dtype, accumulates in
    float64 and divides by N once, so the result is the exact average over the analysis
    set. Memory is
    O(m * D + chunk * activations); no D x D array is allocated.

    Args:
        problem: the block problem (target block, analysis set, loss).
        max_vectors: columns of V pushed through one vmapped product at a time.
    """

    def __init__(self, problem: BlockProblem, *, max_vectors: int = 32):
        self.problem = problem
        self.max_vectors = max_vectors
        self.n_products = 0  # number of single-vector products applied
        self.n_passes = 0  # number of sweeps over the analysis set
        self.on_products: Callable[[int], object] | None = None
        """Called with the number of vectors after each product (progress bars)."""

    def _chunk_matmat(self, chunk: slice, x: Tensor, y: Tensor, V: Tensor) -> Tensor:
        """Return sum_{i in chunk} A_i V, shape (D, m), in the problem's dtype.

        Args:
            chunk: the chunk's index range in the analysis set.
            x: the chunk's features.
            y: the chunk's labels.
            V: (D, m) block of vectors in the problem's dtype.
        """
        raise NotImplementedError

    def _accumulate(self, V: Tensor, slices: list[slice]) -> Tensor:
        """sum over ``slices`` of sum_{i in chunk} A_i V as a float64 (D, m) tensor.

        The default streams :meth:`_chunk_matmat` chunk by chunk and ``max_vectors``
        columns at a time; subclasses whose products prefer another layout of V (see
        :class:`~awch_scale.model.operators.KroneckerHessianOperator`) override this instead.

        Args:
            V: (D, m) block in the problem's dtype.
            slices: the chunks of the analysis set this process sums.
        """
        p = self.problem
        out = torch.zeros(V.shape, dtype=torch.float64, device=p.device)
        for chunk in slices:
            x, y = p.features[chunk], p.labels[chunk]
            for j in range(0, V.shape[1], self.max_vectors):
                cols = slice(j, j + self.max_vectors)
                # add_ promotes float32 to float64 element by element: no (D, m) copy
                out[:, cols].add_(self._chunk_matmat(chunk, x, y, V[:, cols]))
        return out

    world = None
    """A :class:`~awch_scale.world.World`: when set, :meth:`matmat` sums only this
    rank's chunks and all-reduces the float64 partial sums (SPMD; see distributed.py)."""

    def matmat(self, V: Tensor | np.ndarray) -> Tensor:
        """A V for V of shape (D, m) (or (D,)); float64 result on the problem's device."""
        p = self.problem
        V = torch.as_tensor(V, device=p.device)
        vec = V.ndim == 1
        V = (V[:, None] if vec else V).to(p.dtype)
        slices = p.slices() if self.world is None else self.world.shard(p.slices())
        out = self._accumulate(V, slices)
        if self.world is not None:
            self.world.all_reduce(out)
        out /= p.N
        if not torch.isfinite(out.sum()):  # NaN/Inf anywhere propagate to the sum
            raise NonFiniteError(
                f"{type(self).__name__}: a matrix-vector product is not finite; the weights "
                "of this checkpoint give overflowing or undefined curvature"
            )
        self.n_products += V.shape[1]
        self.n_passes += 1
        if self.on_products is not None:
            self.on_products(V.shape[1])
        return out[:, 0] if vec else out
