"""The memory plan of one analysis: chunk sizes and caches from ``analysis.memory_budget_mb``.

:func:`memory_plan` turns the budget (bytes of streamed temporaries and caches) into the
samples per streamed chunk, the Kronecker operator's Q_i cache, the columns of one
Kronecker product, the size of one AWD chunk and the columns of one projection V^T A V;
:func:`balanced_chunk_size` lowers the chunk size so that several ranks get the same
number of chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from awch_scale.linalg.eigen import RESIDUAL_COLUMNS
from awch_scale.model.problem import BlockProblem


@dataclass(frozen=True)
class MemoryPlan:
    """Chunk sizes and caches derived from ``analysis.memory_budget_mb``.

    Attributes:
        chunk_size: samples per streamed chunk (per-sample gradients: chunk * D values).
        q_cache_bytes: memory for the Kronecker operator's cached Q_i.
        kron_vectors: columns per Kronecker product ((chunk, d_out, m) temporaries).
        awd_chunk_elements: values one chunk of AWD per-sample quantities may hold.
        image_columns: columns of V multiplied at a time where only V^T A V is kept (the
            Fisher's projection): its (D, columns) float64 image A V_j is a quarter of the
            budget, at least :data:`~awch_scale.linalg.eigen.RESIDUAL_COLUMNS` (the caller
            takes at most k). At D = 1e8 and k = 50 the whole image would be 40 GB.
    """

    chunk_size: int
    q_cache_bytes: int
    kron_vectors: int
    awd_chunk_elements: int
    image_columns: int = RESIDUAL_COLUMNS


CPU_BUDGET_MB = 2048.0
"""The default budget on the CPU (MiB): the host memory is shared with the data, the model
and the rest of the process."""

GPU_BUDGET_FRACTION = 0.25
"""The default budget on a GPU, as a fraction of its total memory (an H200: about 35 GiB of
its 139 GiB), leaving the rest to the basis (k D), the model and torch's caching allocator.
The total, not the free memory, so that the plan (and the chunking of every sum) does not
depend on what else runs on the device."""


def budget_mb(setting: float | None, device: torch.device) -> float:
    """``analysis.memory_budget_mb``, or its default for ``device`` when unset:
    :data:`CPU_BUDGET_MB` on the CPU, :data:`GPU_BUDGET_FRACTION` of a GPU's total memory."""
    if setting is not None:
        return float(setting)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return GPU_BUDGET_FRACTION * total / 2**20
    return CPU_BUDGET_MB


def memory_plan(problem: BlockProblem, budget_mb: float,
                chunk_size: int | None = None, k: int | None = None) -> MemoryPlan:
    """Chunk sizes and caches from a memory budget (bytes of streamed temporaries).

    A quarter of the budget bounds one chunk of per-sample quantities: for a generic
    block the per-sample gradients (about 4 * chunk * D values with vmap's temporaries);
    for a bias-free Linear target with ``k`` given (the rank-one route, no per-sample
    D-vector) the lifted basis and its products, about 3 * chunk * d_out * max(k, 64)
    values. Half of the budget goes to the Kronecker operator's Q_i cache, and a quarter
    to the AWD chunks and the Kronecker products' (chunk, d_out, m) blocks.
    """
    budget = int(budget_mb * 2**20)
    item = torch.empty((), dtype=problem.dtype).element_size()
    if chunk_size is None:
        per_sample = 4 * problem.D * item
        if problem.linear_name is not None and k is not None:
            per_sample = 3 * int(problem.block_shapes[0][0]) * max(k, 64) * item
        chunk_size = int(min(problem.N, max(8, budget // 4 // per_sample)))
    d_out = problem.block_shapes[0][0] if problem.linear_name else 1
    kron_vectors = int(min(256, max(1, budget // 4 // (3 * chunk_size * d_out * item))))
    return MemoryPlan(chunk_size=chunk_size, q_cache_bytes=budget // 2,
                      kron_vectors=kron_vectors, awd_chunk_elements=max(1, budget // 4 // 8),
                      image_columns=max(RESIDUAL_COLUMNS, budget // 4 // (8 * problem.D)))


def balanced_chunk_size(n: int, chunk_size: int, size: int) -> int:
    """The chunk size (at most ``chunk_size``) that gives each of ``size`` ranks the
    same number of chunks: the ranks share the streamed passes chunk by chunk, so with
    the memory budget's chunk size alone (e.g. 3 chunks for 2 ranks) one rank could do
    twice the other's work. Used when ``analysis.chunk_size`` is not set."""
    per_rank = max(1, math.ceil(n / (size * chunk_size)))
    return max(1, math.ceil(n / (size * per_rank)))
