"""How much the reference-compatible AWD options move the numbers (docs/spec-notes.md).

Trains one recipe model for its recipe epochs, computes the top-k Hessian eigenbasis of
its target, then runs ``awd_analysis`` four times on the same basis: pairing
``matched``/``reference`` x cross_term ``symmetrised``/``once`` (same seed, so the two
cross-term conventions share their pairs), plus each pairing reseeded (seed + 100) as a
draw-noise baseline. Prints a JSON summary: gamma'_AWD (estimator ``c_awd_raw``) per
option, and per AWD variable the entry-by-entry ratio reference/matched of the diagonal
over the n_fit leading directions (min, median, max) next to the reseeding ratios.

Usage: ``OMP_NUM_THREADS=1 python -m benchmarks.reference_conventions RECIPE SEED [T]``
(about 10-20 s per recipe on a CPU for the digits and gauss recipes at T = 400).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from awch_scale.analysis.awd import awd_analysis
from awch_scale.analysis.context import hessian_operator
from awch_scale.analysis.memory import memory_plan
from awch_scale.linalg.eigen import top_eigenpairs
from awch_scale.model.architectures import build_model
from awch_scale.model.problem import make_problem
from awch_scale.run.data import load_data
from awch_scale.run.recipe import load_recipe
from awch_scale.run.training import train

NAMES = ("c_hh", "c_hh_sd", "c_awd_raw", "c_pair", "c_hh_sd_wd")


def _ratios(a: np.ndarray, b: np.ndarray) -> list[float]:
    ok = (a > 0) & (b > 0)
    q = b[ok] / a[ok]
    return [float(q.min()), float(np.median(q)), float(q.max())]


def main(recipe_path: str, seed: int, n_draws: int = 400) -> dict:
    r, _ = load_recipe(recipe_path)
    data = load_data(r.data)
    torch.manual_seed(seed)  # the model's initialisation, as run.plan.Plan.new_model
    model = build_model(r.model, data.input_shape)
    t0 = time.perf_counter()
    train(model, data, r.train, r.loss, seed, [r.analysis.epochs[-1]],
          Path(tempfile.mkdtemp()), torch.device("cpu"), torch.float32, progress=False)
    out: dict = {"recipe": r.name, "seed": seed, "T": n_draws,
                 "seconds_train": time.perf_counter() - t0}
    idx = torch.as_tensor(data.analysis_idx)
    problem = make_problem(model, r.analysis.targets[0], data.x_train[idx],
                           data.y_train[idx], r.loss, chunk_size=1024)
    mem = memory_plan(problem, 2048)
    problem.chunk_size = mem["chunk_size"]
    basis = top_eigenpairs(hessian_operator(problem, "auto", mem), r.analysis.k, seed=seed)
    n_fit = r.n_fit
    kw = dict(batch_size=r.train.batch_size, n_draws=n_draws,
              n_probe=min(400, problem.N), n_partner_batches=10, n_fit=n_fit)
    runs = {}
    for pairing in ("matched", "reference"):
        for cross in ("symmetrised", "once"):
            t0 = time.perf_counter()
            runs[pairing, cross] = awd_analysis(problem, basis.vectors, basis.values,
                                                pairing=pairing, cross_term=cross,
                                                seed=seed, **kw)
            out[f"seconds_{pairing}_{cross}"] = time.perf_counter() - t0
        runs[pairing, "reseeded"] = awd_analysis(problem, basis.vectors, basis.values,
                                                 pairing=pairing, seed=seed + 100, **kw)

    def gamma(ds) -> float:
        return float(ds.gamma.sel(estimator="c_awd_raw").values)

    for key, ds in runs.items():
        out[f"gamma'_AWD {key[0]} {key[1]}"] = gamma(ds)
        out[f"sigma_w2 {key[0]} {key[1]}"] = float(ds.sigma_w2)
    m, ref = runs["matched", "symmetrised"], runs["reference", "symmetrised"]
    for name in NAMES:
        def d(ds, name=name):
            return np.diag(ds[name].values)[:n_fit]
        out[f"{name} ref/matched"] = _ratios(d(m), d(ref))
        out[f"{name} matched reseed"] = _ratios(d(m), d(runs["matched", "reseeded"]))
        out[f"{name} reference reseed"] = _ratios(d(ref), d(runs["reference", "reseeded"]))
    out.update(D=problem.D, N=problem.N, k=r.analysis.k, n_fit=n_fit)
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(main(args[0], int(args[1]), *(int(a) for a in args[2:3])), indent=1))
