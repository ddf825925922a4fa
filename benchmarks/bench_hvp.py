"""Benchmark 1: Hessian-vector product throughput on the target block.

One process builds every operator on the same model, data and vectors, then times them
interleaved (repeat r runs each method once), so the ratios are measured side by side:

- ``ours_hvp``: :class:`HessianOperator` (vmapped jvp-of-grad), m vectors per call.
- ``ours_kron``: :class:`KroneckerHessianOperator` (exact Q_i (x) a_i a_i^T), m per call.
- ``curvlinops``: ``HessianLinearOperator(model, CrossEntropyLoss(), [fc2.weight], batches)``
  applied to a (D, m) tensor (curvlinops vmaps over the columns).
- ``pyhessian_batch``: PyHessian's single-batch mode (``data=(x, y)``: all N samples as
  one batch, the gradient graph kept; one ``autograd.grad`` per vector).
- ``pyhessian_loader``: PyHessian's dataloader mode (full dataset in batches; one forward
  and double backward per batch and vector).
- ``*_m1``: the same with one vector per call (the ARPACK/eigsh access pattern).

All compute the Hessian of the MEAN cross-entropy over the same N samples with respect to
``fc2.weight`` (PyHessian: every other parameter has requires_grad False); the maximum
relative difference of each product from ``ours_kron`` is reported.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .common import median, timed, trained_problem


def _batches(x, y, size):
    return list(zip(x.split(size), y.split(size), strict=True))


def _frozen_but_fc2(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name == "fc2.weight")
    return model


def hvp_worker(width: int, n: int, m: int, repeats: int, chunk: int = 512,
               loader_vectors: int = 4, methods: list[str] | None = None) -> dict:
    import pyhessian
    from curvlinops import HessianLinearOperator
    from pyhessian.utils import hessian_vector_product

    from awch_scale.model.operators import HessianOperator, KroneckerHessianOperator
    from awch_scale.model.problem import make_problem

    model, x, y = trained_problem(width, n)
    problem = make_problem(model, "fc2", x, y, "ce", chunk_size=chunk)
    D, shape = problem.D, (width, width)
    V = torch.randn(D, m, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    setup = {}

    hvp_op, setup["ours_hvp"] = timed(HessianOperator, problem, max_vectors=m)
    kron_op, setup["ours_kron"] = timed(KroneckerHessianOperator, problem)
    cl_model = _frozen_but_fc2(model)
    curv, setup["curvlinops"] = timed(
        HessianLinearOperator, cl_model, nn.CrossEntropyLoss(), [cl_model.fc2.weight],
        _batches(x, y, chunk), check_deterministic=False, num_data=n)
    ph_model = _frozen_but_fc2(model)
    ph, setup["pyhessian_batch"] = timed(pyhessian.hessian, ph_model, nn.CrossEntropyLoss(),
                                         data=(x, y), cuda=False)
    phl_model = _frozen_but_fc2(model)
    phl, setup["pyhessian_loader"] = timed(pyhessian.hessian, phl_model, nn.CrossEntropyLoss(),
                                           dataloader=_batches(x, y, chunk), cuda=False)

    def pyh_batch(W):
        cols = [hessian_vector_product(ph.gradsH, ph.params, [w.view(shape).float()])[0]
                for w in W.T]
        return torch.stack([c.reshape(-1) for c in cols], 1).double()

    def pyh_loader(W):
        cols = [phl.dataloader_hv_product([w.view(shape).float()])[1][0] for w in W.T]
        return torch.stack([c.reshape(-1) for c in cols], 1).double()

    table = {
        "ours_kron": (lambda W: kron_op.matmat(W), m),
        "ours_hvp": (lambda W: hvp_op.matmat(W), m),
        "curvlinops": (lambda W: (curv @ W.float()).double(), m),
        "pyhessian_batch": (pyh_batch, m),
        "pyhessian_loader": (pyh_loader, min(m, loader_vectors)),
        "ours_kron_m1": (lambda W: kron_op.matmat(W), 1),
        "ours_hvp_m1": (lambda W: hvp_op.matmat(W), 1),
        "curvlinops_m1": (lambda W: (curv @ W.float()).double(), 1),
    }
    table = {name: v for name, v in table.items() if methods is None or name in methods}
    ref = kron_op.matmat(V)
    scale = ref.abs().max().item()
    out = {}
    for name, (fn, cols) in table.items():
        got = fn(V[:, :cols])  # warm-up call, also the equality check
        out[name] = {"vectors_per_call": cols, "seconds": [],
                     "setup_seconds": setup.get(name.removesuffix("_m1")),
                     "max_rel_diff": (got - ref[:, :cols]).abs().max().item() / scale}
    for _ in range(repeats):
        for name, (fn, cols) in table.items():
            out[name]["seconds"].append(timed(fn, V[:, :cols])[1])
    for res in out.values():
        res["seconds_median"] = median(res["seconds"])
        res["hvp_per_s"] = res["vectors_per_call"] / res["seconds_median"]
    return {"D": D, "N": n, "m": m, "chunk": chunk, "repeats": repeats, "methods": out}


ALT_THREADS_METHODS = ["ours_kron", "ours_hvp", "curvlinops", "pyhessian_batch", "ours_kron_m1"]


def run(cfg: dict, run_worker) -> dict:
    c = cfg["hvp"]
    kw = dict(width=c["width"], n=c["n"], m=c["m"])
    target = "benchmarks.bench_hvp:hvp_worker"
    res = run_worker(target, timeout=c["timeout"], repeats=c["repeats"], **kw)
    if "methods" in res:
        rate = {name: v["hvp_per_s"] for name, v in res["methods"].items()}
        res["speedup_vs"] = {ours: {other: rate[ours] / rate[other] for other in rate
                                    if not other.startswith("ours")}
                             for ours in ("ours_kron", "ours_hvp")}
    if c.get("threads_alt"):
        res["alt_threads"] = run_worker(target, timeout=c["timeout"], threads=c["threads_alt"],
                                        repeats=2, methods=ALT_THREADS_METHODS, **kw)
    return res
