"""Operator algebra: sums, differences, scalings and low-rank terms of D x D operators.

Modelled on scipy's ``sparse/linalg/_interface.py`` (``_SumLinearOperator``,
``_ScaledLinearOperator``) and curvlinops' ``_torch_base.py``
(``PyTorchLinearOperator``): every operator of the package shares one protocol,

- ``problem`` (the :class:`~awch_scale.model.problem.BlockProblem` it acts on: D, device),
- ``matmat(V)``: A V for V of shape (D, m) or (D,), float64 result on the device. It is
  the one public product and it is final: it tidies the input once (a tensor on the
  operator's device, (D,) -> (D, 1), the dtype the subclass multiplies in), counts the
  products, calls the subclass's ``_matmat`` on the (D, m) block and squeezes the result
  back. Subclasses implement only ``_matmat``;
- ``n_products``: single-vector products applied to *this* operator (the terms of a
  composition count their own products as well),
- ``shape``, ``dtype`` (float64, the dtype of every result), ``device``,
  ``compute_dtype`` (the dtype the products are evaluated in), ``world`` (the processes
  its products are summed over: :data:`~awch_scale.world.SINGLE` unless sharded),
- ``to_scipy()``: the one bridge to ``scipy.sparse.linalg``,
- ``A @ V`` for a tensor or array V, ``A + B``, ``A - B``, ``-A``, ``c * A``; a sum
  refuses terms of another shape, device or dtype (curvlinops' ``_check_same_device``
  and ``_check_same_dtype``) with a ValueError naming both.

So the second moment M, the covariance C = (1/B)(M - g g^T) and H_p = M - H (SPEC 6)
are compositions of streamed operators, not copies of their loops. A composition
applies each term to the whole block V, so a block of m vectors costs each term one
sweep over the analysis set, as the term itself would.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import final

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor

from awch_scale.world import SINGLE, World

DENSE_LIMIT = 6000
"""Largest D for which :meth:`OperatorAlgebra.to_dense` is allowed (tests, tiny problems)."""


class OperatorAlgebra:
    """Base of every operator: the shared protocol (module docstring).

    Subclasses set ``problem`` and implement :meth:`_matmat`; :meth:`matmat` is final
    (defining it in a subclass raises TypeError at class creation).
    """

    problem = None  # a BlockProblem, set by subclasses
    n_products: int = 0
    world: World = SINGLE
    """The processes this operator's products are summed over (one by default)."""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "matmat" in cls.__dict__:
            raise TypeError(f"{cls.__name__} defines matmat; operators implement _matmat "
                            "(OperatorAlgebra.matmat tidies the input and counts)")

    @property
    def shape(self) -> tuple[int, int]:
        """(D, D)."""
        return (self.problem.D, self.problem.D)

    @property
    def dtype(self) -> torch.dtype:
        """dtype of every result (products are accumulated in float64)."""
        return torch.float64

    @property
    def device(self) -> torch.device:
        """Device of the products."""
        return self.problem.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype the products are evaluated in (the problem's): a solver keeps its basis in it."""
        return getattr(self.problem, "dtype", torch.float64)

    @property
    def _input_dtype(self) -> torch.dtype:
        """dtype of the (D, m) block :meth:`_matmat` receives (float64 here)."""
        return torch.float64

    @final
    def matmat(self, V: Tensor | np.ndarray) -> Tensor:
        """A V for V of shape (D, m) or (D,); float64 on the operator's device.

        Args:
            V: a tensor or array (any device and floating dtype).

        Returns:
            A V, shape (D, m) or (D,) like V.

        Raises:
            ValueError: V is not of shape (D,) or (D, m).
        """
        V = torch.as_tensor(V, device=self.device)
        D = self.shape[1]
        if V.ndim not in (1, 2) or V.shape[0] != D:
            raise ValueError(f"{type(self).__name__}: V must have shape ({D},) or ({D}, m); "
                             f"got {tuple(V.shape)}")
        vec = V.ndim == 1
        V = (V[:, None] if vec else V).to(self._input_dtype)
        out = self._matmat(V)
        self.n_products += V.shape[1]
        return out[:, 0] if vec else out

    def _matmat(self, V: Tensor) -> Tensor:  # pragma: no cover - abstract
        """A V for a (D, m) block V in :attr:`_input_dtype` on :attr:`device`: float64 (D, m).

        Args:
            V: the tidied block.
        """
        raise NotImplementedError

    def __matmul__(self, V):
        if isinstance(V, OperatorAlgebra):
            return NotImplemented
        return self.matmat(V)

    def __add__(self, other):
        if not isinstance(other, OperatorAlgebra):
            return NotImplemented
        return LinearCombination([(1.0, self), (1.0, other)])

    def __sub__(self, other):
        if not isinstance(other, OperatorAlgebra):
            return NotImplemented
        return LinearCombination([(1.0, self), (-1.0, other)])

    def __neg__(self):
        return LinearCombination([(-1.0, self)])

    def __mul__(self, c):
        if not isinstance(c, numbers.Real):
            return NotImplemented
        return LinearCombination([(float(c), self)])

    __rmul__ = __mul__

    def __truediv__(self, c):
        if not isinstance(c, numbers.Real):
            return NotImplemented
        return LinearCombination([(1.0 / float(c), self)])

    def to_scipy(self) -> LinearOperator:
        """``scipy.sparse.linalg.LinearOperator`` (float64, NumPy in and out)."""

        def mv(v: np.ndarray) -> np.ndarray:
            return self.matmat(torch.from_numpy(np.ascontiguousarray(v))).cpu().numpy()

        return LinearOperator(self.shape, matvec=mv, matmat=mv, rmatvec=mv, dtype=np.float64)

    def to_dense(self) -> Tensor:
        """The dense matrix, for tests and tiny problems only (D <= DENSE_LIMIT)."""
        D = self.shape[0]
        if D > DENSE_LIMIT:
            raise ValueError(f"to_dense() is for tiny problems (D <= {DENSE_LIMIT}); D = {D}")
        return self.matmat(torch.eye(D, dtype=torch.float64, device=self.device))


def _check_same(ops: Sequence[OperatorAlgebra]) -> None:
    """The terms of a sum share shape, device and dtypes (ValueError naming them)."""
    for what, get in [("shapes", lambda op: op.shape), ("devices", lambda op: op.device),
                      ("dtypes", lambda op: op.dtype),
                      ("compute dtypes", lambda op: op.compute_dtype)]:
        values = list(dict.fromkeys(get(op) for op in ops))
        if len(values) != 1:
            raise ValueError(f"cannot combine operators of different {what}: "
                             f"{', '.join(map(str, values))}")


class LinearCombination(OperatorAlgebra):
    """A = sum_j c_j A_j for operators A_j on the same block (scipy's sum and scaling).

    Nested combinations are flattened, so ``(M - H) * 2`` holds two terms, not a tree.

    Args:
        terms: (coefficient, operator) pairs; all operators share shape, device and dtypes.

    Raises:
        ValueError: no terms, or the terms' shapes, devices or dtypes differ.
    """

    def __init__(self, terms: Sequence[tuple[float, OperatorAlgebra]]):
        flat: list[tuple[float, OperatorAlgebra]] = []
        for c, op in terms:
            if isinstance(op, LinearCombination):
                flat.extend((c * c2, op2) for c2, op2 in op.terms)
            else:
                flat.append((float(c), op))
        if not flat:
            raise ValueError("a linear combination needs at least one operator")
        _check_same([op for _, op in flat])
        self.terms = flat
        self.problem = flat[0][1].problem
        self.n_products = 0

    @property
    def shape(self) -> tuple[int, int]:
        """The terms' shape."""
        return self.terms[0][1].shape

    @property
    def device(self) -> torch.device:
        """The terms' device."""
        return self.terms[0][1].device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The terms' compute dtype."""
        return self.terms[0][1].compute_dtype

    @property
    def world(self) -> World:
        """The terms' world (the first of several processes, else :data:`SINGLE`)."""
        return next((op.world for _, op in self.terms if op.world.size > 1), SINGLE)

    def _matmat(self, V: Tensor) -> Tensor:
        """sum_j c_j (A_j V) in float64 (each term counts its own products)."""
        out = torch.zeros(V.shape, dtype=torch.float64, device=self.device)
        for c, op in self.terms:
            out += c * op.matmat(V)
        return out


class LowRankOperator(OperatorAlgebra):
    """A = G diag(s) G^T for a (D, r) matrix G held in memory (e.g. g g^T with r = 1).

    Args:
        problem: the block problem (D, device).
        G: (D, r) columns.
        s: (r,) weights (default ones).
    """

    def __init__(self, problem, G: Tensor, s: Tensor | None = None):
        self.problem = problem
        G = torch.as_tensor(G, device=self.device).to(torch.float64)
        self.G = G[:, None] if G.ndim == 1 else G
        if self.G.shape[0] != problem.D:
            raise ValueError(f"G has {self.G.shape[0]} rows; the block has D = {problem.D}")
        r = self.G.shape[1]
        self.s = (torch.ones(r, dtype=torch.float64, device=self.device) if s is None
                  else torch.as_tensor(s, device=self.device).to(torch.float64))
        self.n_products = 0

    def _matmat(self, V: Tensor) -> Tensor:
        """G (s * (G^T V))."""
        return self.G @ (self.s[:, None] * (self.G.T @ V))


class IdentityOperator(OperatorAlgebra):
    """The D x D identity (for shifts: A + sigma I).

    Args:
        problem: the block problem (D, device).
    """

    def __init__(self, problem):
        self.problem = problem
        self.n_products = 0

    def _matmat(self, V: Tensor) -> Tensor:
        """V itself (a copy)."""
        return V.clone()
