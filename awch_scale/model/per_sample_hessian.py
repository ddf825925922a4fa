"""Second moment of the per-sample Hessians of any block, h2 = V^T E_p[h_p^2] V.

For any target block w (a Linear with bias, a Linear over a token dimension, an
attention projection, a layer next to a LayerNorm, a convolution, several parameters)
the per-sample Hessian h_p = d^2 l_p / dw^2 is symmetric, so

    V^T h_p^2 V = (h_p V)^T (h_p V),      h2 = (1/N) sum_p (h_p V)^T (h_p V)

(SPEC section 4, Eq. 15 with M_p = I): it needs only the k per-sample Hessian-vector
products h_p v_1, ..., h_p v_k of each sample. They are taken forward over reverse,
``jvp(grad(l_p))``, under ``torch.func.vmap`` over the samples of a chunk and over a
block of columns of V, in the problem's dtype and on its device; every sum is then
accumulated in float64. Alongside, diag(V^T H V) = (1/N) sum_p diag(V^T h_p V) is
summed: it must equal the eigenvalues of V (a check of V against the problem).

No D x D matrix is formed. Memory per vmapped call is about
``samples * (D k + vectors * (4 D + 4 A))`` values, A the activations of one sample's
forward pass (:func:`activation_elements`); :func:`moment_sizes` picks ``samples`` and
``vectors`` so that it stays within a bound on the values held (the analysis passes
its memory plan's ``awd_chunk_elements``). The products are summed in float64 by slices
of :data:`ROW_SLICE` values, so no float64 copy of them is made. With one sample and
fewer than k vectors per call, the (D, k) products of that sample are still held at
once (D k values).

A *sample* is one input of the analysis set: an image, or a whole sequence. For a
sequence model l_p is the mean of the per-token losses over the sequence's predicted
tokens (:mod:`awch_scale.model.losses`), so h_p is the Hessian of that mean.

For a bias-free Linear target acting on one vector per sample the Kronecker route
of :mod:`awch_scale.analysis.awd.moments` (h_p = Q_p (x) a_p a_p^T) gives the same h2
at a fraction of the cost; this module is the route for every other block, and a
cross-check of that one (tests/test_per_sample_hessian.py: equal to 1e-10 in float64).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from awch_scale.errors import NonFiniteError
from awch_scale.model.problem import BlockProblem
from awch_scale.world import SINGLE, World

ROW_SLICE = 2**22
"""Values of the float64 slices in which the (n, D, k) products are summed."""


def activation_elements(problem: BlockProblem) -> int:
    """Values the head's modules output for one sample (a forward pass with hooks).

    Counts the output of every module, containers included, so it over-estimates the
    activations autograd keeps: a conservative input to :func:`moment_sizes`.
    """
    total = [0]

    def count(_mod, _inp, out):
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, Tensor):
                total[0] += t.numel()

    hooks = [m.register_forward_hook(count) for m in problem.head.modules()]
    try:
        with torch.no_grad():
            problem.logits(problem.w, problem.features[:1])
    finally:
        for h in hooks:
            h.remove()
    return int(total[0])


@dataclass(frozen=True)
class MomentSizes:
    """How the per-sample products are batched.

    Attributes:
        samples: samples per vmapped call.
        vectors: columns of V per vmapped call.
    """

    samples: int
    vectors: int


def moment_sizes(D: int, k: int, activations: int, max_elements: int,
                 max_samples: int) -> MomentSizes:
    """Samples and columns per call so that one call holds about ``max_elements`` values.

    A sample holds its (D, k) products (D k values); each
    (sample, column) pair of the vmapped ``jvp(grad)`` holds about 4 D + 4 A values
    (the tangent, the gradient and its dual, the activations' duals). All k columns at
    once when that fits for one sample; otherwise one sample and as many columns as fit
    (at least one).

    Args:
        D: block size.
        k: number of basis vectors.
        activations: A, values of one sample's forward pass.
        max_elements: bound on the values one call holds.
        max_samples: at most this many samples per call (the problem's chunk size).
    """
    hold, per_vector = D * k, 4 * D + 4 * activations
    per_sample = hold + k * per_vector
    if per_sample <= max_elements:
        return MomentSizes(samples=int(max(1, min(max_samples, max_elements // per_sample))),
                           vectors=k)
    room = max(0, max_elements - hold)
    return MomentSizes(samples=1, vectors=int(max(1, min(k, room // per_vector))))


@dataclass
class HessianMoments:
    """Result of :func:`hessian_moments` (means over the analysis set, float64).

    Attributes:
        h2: V^T E_p[h_p^2] V, (k, k), symmetric.
        h1_diag: diag(V^T H V), (k,): equals the eigenvalues of V when V is an
            eigenbasis of this problem's H.
        sizes: the batching used.
    """

    h2: Tensor
    h1_diag: Tensor
    sizes: MomentSizes


def sample_hvps(problem: BlockProblem, x: Tensor, y: Tensor, V: Tensor) -> Tensor:
    """h_p V for the samples of (x, y): (n, D, m) in the problem's dtype, V (D, m).

    ``vmap`` over the samples of ``vmap`` over the columns of forward-over-reverse
    ``jvp(grad(l_p))``.
    """
    w = problem.w

    def one(x1: Tensor, y1: Tensor) -> Tensor:
        def hvp(v: Tensor) -> Tensor:
            return jvp(lambda w_: grad(problem.sample_loss)(w_, x1, y1), (w,), (v,))[1]

        return vmap(hvp, in_dims=1, out_dims=1)(V)

    return vmap(one)(x, y)


def hessian_moments(problem: BlockProblem, V: Tensor, *, max_elements: int,
                    world: World | None = SINGLE,
                    progress: Callable[[int], object] | None = None) -> HessianMoments:
    """h2 = V^T E_p[h_p^2] V and diag(V^T H V) of any block (module docstring).

    Args:
        problem: the block problem.
        V: the basis, (D, k).
        max_elements: bound on the values one vmapped call holds (sets the batching,
            :func:`moment_sizes`).
        world: a :class:`~awch_scale.world.World`: each rank sums its share of the
            problem's chunks and the float64 sums are all-reduced, so every rank gets
            the result over the whole analysis set (None or :data:`SINGLE`: one process).
        progress: called with the number of samples after each call.

    Raises:
        ValueError: V of the wrong shape.
        NonFiniteError: a per-sample Hessian-vector product is NaN or Inf.
    """
    world = world or SINGLE
    if V.ndim != 2 or V.shape[0] != problem.D:
        raise ValueError(f"V has shape {tuple(V.shape)}; expected (D = {problem.D}, k)")
    k, dev = int(V.shape[1]), problem.device
    Vd = V.to(device=dev, dtype=problem.dtype)
    V64 = Vd.to(torch.float64)
    sizes = moment_sizes(problem.D, k, activation_elements(problem), max_elements,
                         problem.chunk_size)
    h2 = torch.zeros(k, k, dtype=torch.float64, device=dev)
    h1 = torch.zeros(k, dtype=torch.float64, device=dev)
    for chunk in world.shard(problem.slices()):
        stop = min(problem.N, chunk.stop)
        for s in range(chunk.start, stop, sizes.samples):
            sl = slice(s, min(stop, s + sizes.samples))
            x, y = problem.features[sl], problem.labels[sl]
            HV = torch.cat([sample_hvps(problem, x, y, Vd[:, j:j + sizes.vectors])
                            for j in range(0, k, sizes.vectors)], dim=2)
            if not torch.isfinite(HV.sum()):
                raise NonFiniteError(
                    "a per-sample Hessian-vector product is not finite; the weights of this "
                    "checkpoint give overflowing or undefined curvature")
            rows = max(1, ROW_SLICE // max(1, HV.shape[0] * k))
            for r in range(0, problem.D, rows):  # float64 by slices of rows: no full copy
                X = HV[:, r:r + rows].to(torch.float64)
                h2 += torch.einsum("ndk,ndl->kl", X, X)
                h1 += (X * V64[r:r + rows]).sum(1).sum(0)
            del HV
            if progress is not None:
                progress(sl.stop - sl.start)
    flat = world.all_reduce(torch.cat([h2.reshape(-1), h1]))
    h2, h1 = flat[:k * k].view(k, k) / problem.N, flat[k * k:] / problem.N
    return HessianMoments(h2=0.5 * (h2 + h2.T), h1_diag=h1, sizes=sizes)
