"""Base class of the matrix-free operators."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from awch_scale.errors import NonFiniteError
from awch_scale.model.operators.algebra import DENSE_LIMIT, OperatorAlgebra
from awch_scale.model.problem import BlockProblem
from awch_scale.world import SINGLE, World

__all__ = ["DENSE_LIMIT", "BlockOperator"]


class BlockOperator(OperatorAlgebra):
    """A symmetric D x D matrix A = (1/N) sum_i A_i over the analysis set, never formed.

    Subclasses implement :meth:`_chunk_matmat`, the sum over one chunk of samples of
    A_i V for a (D, m) block V (or, for another layout of the products,
    :meth:`_accumulate`, the sum over all of this process's chunks). :meth:`_matmat`
    (called by the final :meth:`~OperatorAlgebra.matmat` with V already in the problem's
    dtype) streams this rank's chunks, accumulates in float64, all-reduces over the
    ``world`` and divides by N once, so the result is the exact average over the analysis
    set; it refuses a non-finite product, counts the pass and calls ``on_products``.
    Memory is O(m * D + chunk * activations); no D x D array is allocated.

    Args:
        problem: the block problem (target block, analysis set, loss).
        max_vectors: columns of V pushed through one vmapped product at a time.
        world: a :class:`~awch_scale.world.World`: products sum only this rank's chunks
            and all-reduce the float64 partial sums (SPMD; see :mod:`awch_scale.world`).
            None or the default :data:`~awch_scale.world.SINGLE`: one process.
    """

    def __init__(self, problem: BlockProblem, *, max_vectors: int = 32,
                 world: World | None = SINGLE):
        self.problem = problem
        self.max_vectors = max_vectors
        self.world = world or SINGLE
        self.n_products = 0  # number of single-vector products applied
        self.n_passes = 0  # number of sweeps over the analysis set
        self.on_products: Callable[[int], object] | None = None
        """Called with the number of vectors after each product (progress bars)."""

    @property
    def _input_dtype(self) -> torch.dtype:
        """The problem's dtype: the products are evaluated in it."""
        return self.problem.dtype

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
        out = torch.zeros(V.shape, dtype=torch.float64, device=self.device)
        for chunk in slices:
            x, y = p.features[chunk], p.labels[chunk]
            for j in range(0, V.shape[1], self.max_vectors):
                cols = slice(j, j + self.max_vectors)
                # add_ promotes float32 to float64 element by element: no (D, m) copy
                out[:, cols].add_(self._chunk_matmat(chunk, x, y, V[:, cols]))
        return out

    def _matmat(self, V: Tensor) -> Tensor:
        """(1/N) sum_i A_i V over the analysis set (this rank's chunks, all-reduced)."""
        p = self.problem
        out = self._accumulate(V, self.world.shard(p.slices()))
        self.world.all_reduce(out)
        out /= p.N
        if not torch.isfinite(out.sum()):  # NaN/Inf anywhere propagate to the sum
            raise NonFiniteError(
                f"{type(self).__name__}: a matrix-vector product is not finite; the weights "
                "of this checkpoint give overflowing or undefined curvature"
            )
        self.n_passes += 1
        if self.on_products is not None:
            self.on_products(V.shape[1])
        return out
