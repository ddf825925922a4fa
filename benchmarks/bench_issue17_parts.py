"""The measurements the spectra defaults of issue 17 were chosen by (run through
``python -m benchmarks.bench_issue17 products`` / ``parts``): product timings at D = 1e6
and the spectra stage alone on the widened quickstart's checkpoint."""

from __future__ import annotations

import time

import numpy as np

from .bench_issue17 import WIDE, recipe


def wide_problem(width: int = 1000, dtype: str = "float32"):
    """(problem, Kronecker Hessian, batch size) of the widened quickstart after one epoch,
    built as ``analyze_checkpoint`` builds them (memory plan, chunk size); the trained
    weights are cached in benchmarks/_work."""
    import torch

    from awch_scale.analysis.context import hessian_operator
    from awch_scale.analysis.memory import memory_plan
    from awch_scale.model.problem import make_problem
    from awch_scale.run.plan import prepare
    from awch_scale.run.recipe import parse_recipe
    from awch_scale.run.training import train
    from awch_scale.settings import AnalysisSettings

    from .common import WORK

    text = recipe({**WIDE, "model.width": width}, str(WORK / "unused.zarr"))
    plan = prepare(parse_recipe(text), text)
    model = plan.new_model(0)
    ckpt = WORK / f"issue17-w{width}" / "epoch-00001.pt"
    if not ckpt.exists():
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        train(model, plan.data, plan.recipe.train, plan.recipe.loss, 0, [1], ckpt.parent,
              torch.device("cpu"), plan.dtype, progress=False)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    settings = AnalysisSettings(k=50)
    problem = make_problem(model, "fc2", plan.data.x_analysis, plan.data.y_analysis,
                           plan.recipe.loss, chunk_size=1024, dtype=getattr(torch, dtype))
    memory = memory_plan(problem, settings.memory_budget_mb, None, k=settings.k)
    problem.chunk_size = memory.chunk_size
    return problem, hessian_operator(problem, "auto", memory), plan.recipe.train.batch_size


def products(width: int = 1000, repeats: int = 3) -> dict:
    """Seconds of one product with 1, 10 and 32 vectors of H, of M and H_p sharing the
    Hessian's cache (:class:`KroneckerCombination`), and of the sample-space route of M
    (the N x N Gram matrix, its eigh, and G V for 50 columns), median of ``repeats``."""
    import statistics

    import torch

    from awch_scale.model.operators import SecondMomentOperator
    from awch_scale.model.operators.kronecker import KroneckerCombination

    problem, H, _ = wide_problem(width)
    t0 = time.perf_counter()
    M = SecondMomentOperator(problem, layer=H.layer)
    out = {"D": problem.D, "N": problem.N, "q_form": H.q_form,
           "deltas_seconds": round(time.perf_counter() - t0, 3)}
    ops = {"H": H, "M_kron": KroneckerCombination(H, M.deltas, 1.0, 0.0),
           "Hp_kron": KroneckerCombination(H, M.deltas, 1.0, -1.0), "M_einsum": M}
    gen = torch.Generator().manual_seed(0)
    for m in (1, 10, 32):
        V = torch.randn(problem.D, m, dtype=torch.float64, generator=gen)
        for name, op in ops.items():
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                op.matmat(V)
                times.append(time.perf_counter() - t0)
            out[f"{name}_m{m}"] = round(statistics.median(times), 4)
    t0 = time.perf_counter()
    K = M.sample_gram()
    out["gram_seconds"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    torch.linalg.eigh(K)
    out["gram_eigh_seconds"] = round(time.perf_counter() - t0, 3)
    V = torch.randn(problem.D, 50, dtype=torch.float64, generator=gen)
    t0 = time.perf_counter()
    M.project(V)
    out["project50_seconds"] = round(time.perf_counter() - t0, 3)
    for n in (1000, 2000, 4000):
        A = torch.randn(n, n, dtype=torch.float64, generator=gen)
        t0 = time.perf_counter()
        torch.linalg.eigh(A + A.T)
        out[f"eigh_{n}_seconds"] = round(time.perf_counter() - t0, 3)
    return {"kind": "products", "label": "measure", "width": width, **out}


def spectra_parts(width: int = 1000, **kw) -> dict:
    """The spectra stage alone on the widened quickstart's checkpoint, with the eigen
    stage's basis (k = 50, ``top_eigenpairs`` as the eigen stage runs it; cached in
    benchmarks/_work with the covariance stage's projections): each sub-stage's seconds,
    the routes, notes and value heads, for the settings ``kw`` of
    :func:`awch_scale.analysis.spectra.spectra_variables`."""
    import torch

    from awch_scale.analysis.spectra import spectra_variables
    from awch_scale.linalg.eigen import top_eigenpairs
    from awch_scale.model.per_sample import projected_gradients

    from .common import WORK, peak_rss_mib

    problem, H, batch = wide_problem(width)
    cache = WORK / f"issue17-w{width}" / "basis.pt"
    out = {"D": problem.D, "N": problem.N}
    if cache.exists():
        saved = torch.load(cache, weights_only=True)
    else:
        t0 = time.perf_counter()
        b = top_eigenpairs(H, 50, seed=0)
        out["eigen_seconds"] = round(time.perf_counter() - t0, 2)
        out["eigen_products"] = b.n_products
        P = projected_gradients(problem, b.vectors, layer=H.layer)
        saved = {"values": torch.from_numpy(b.values), "vectors": b.vectors, "P": P,
                 "eigen_seconds": out["eigen_seconds"], "n_products": b.n_products}
        torch.save(saved, cache)
    out["eigen_seconds"], out["eigen_products"] = saved["eigen_seconds"], saved["n_products"]
    r = kw.pop("r", 10)
    prov: dict = {}
    t0 = time.perf_counter()
    data, _ = spectra_variables(problem, H, saved["vectors"], saved["values"].numpy(), r=r,
                                batch_size=batch, seed=0, projections=saved["P"],
                                provenance=prov, **kw)
    out.update(seconds=round(time.perf_counter() - t0, 2), r=r, settings=kw,
               peak_rss_mib=round(peak_rss_mib(), 1), **prov)
    out["values"] = {n: [float(x) for x in np.ravel(v)[:r]] for n, (_, v) in data.items()
                     if n.endswith(("eigval", "eigval_top", "eigval_bottom", "_cos"))}
    return {"kind": "parts", "label": "tune", **out}
