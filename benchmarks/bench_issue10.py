"""Benchmark 5 (issue 10): the wide analysis, its eigen-stage breakdown, and 2 processes.

- ``wide``: FC 784-w-w-10, target fc2 (D = w^2), N = 2000, k = 50, AWD on (T = 20 draws,
  100 probes, R = 10), stage by stage as ``bench_scaling`` (each stage's time and peak
  RSS), plus the share of the eigen stage spent in operator products (``matmat`` timed).
- ``dist``: the Hessian eigenpairs + per-sample projections + covariances of one
  problem on 1 and on 2 gloo processes (:func:`awch_scale.run.launcher.run_distributed`),
  wall time of each and the largest relative difference of the results.

- ``hvp``: generic-operator HVP/s against curvlinops and PyHessian on the HVP benchmark's
  shape (bench_hvp, D = 2500, N = 20000) and on a conv-layer target.
- ``analyze``: the whole pipeline, ``awch-scale analyze RECIPE --nproc 1`` against
  ``--nproc 2`` (each in its own process, as a user runs it; one thread per process),
  on a recipe of moderate size (:func:`analyze_recipe`: FC in-w-w-10 on a 10-class
  Gaussian mixture, target fc2, D = w^2, every stage on). Wall time of each command,
  the per-stage seconds stored by the analyses (rank 0's, which include its waits in
  the all-reduces), and the largest relative difference between the two stores.

Run one piece: ``python -m benchmarks.bench_issue10 wide 1000 [threads [method]]`` /
``... dist 300`` / ``... hvp 0`` / ``... analyze 64`` (width; ``... analyze 64 1000``
also sets the training samples per class, default 1000: N = 10,000)
(results appended to benchmarks/results/cpu-issue10.json).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from .common import RESULTS, ProductClock, StagePeak, machine_info, trained_problem

AWD_DEFAULTS = {"n_draws": 20, "n_probe": 100, "n_partner_batches": 10}


def wide_worker(width: int, n: int = 2000, k: int = 50, batch_size: int = 50,
                awd: bool = True, method: str = "auto") -> dict:
    import torch

    from awch_scale.analysis.awd import awd_analysis
    from awch_scale.analysis.context import hessian_operator
    from awch_scale.analysis.covariance import covariance, minibatch_covariance, second_moment
    from awch_scale.linalg.eigen import top_eigenpairs
    from awch_scale.model.per_sample import projected_gradients
    from awch_scale.model.problem import make_problem

    model, x, y = trained_problem(width, n)
    stages = {}
    with StagePeak() as s:
        problem = make_problem(model, "fc2", x, y, "ce")
        t0 = time.perf_counter()
        op = hessian_operator(problem, "auto")
        build = time.perf_counter() - t0
        clock = ProductClock(op)
        t0 = time.perf_counter()
        basis = top_eigenpairs(op, k, seed=0, method=method)
        solve = time.perf_counter() - t0
    stages["eigenpairs"] = {"seconds": s.seconds, "peak_rss_mib": s.peak_mib,
                            "operator_build_seconds": build, "solver_seconds": solve,
                            "product_seconds": clock.seconds,
                            "product_share_of_solver": clock.seconds / solve,
                            "n_products": basis.n_products, "operator": type(op).__name__,
                            "q_cached": bool(getattr(op, "cached", False)),
                            "q_form": getattr(op, "q_form", None), "method": basis.method,
                            "max_residual": float(basis.residuals.max())}
    with StagePeak() as s:
        P = projected_gradients(problem, basis.vectors, layer=getattr(op, "layer", None))
        covariance(P, batch_size), second_moment(P), minibatch_covariance(P, batch_size, 0)
    stages["covariance"] = {"seconds": s.seconds, "peak_rss_mib": s.peak_mib}
    if awd:
        with StagePeak() as s:
            awd_analysis(problem, basis.vectors, basis.values, batch_size=batch_size, seed=0,
                         q_source=op if hasattr(op, "q_rows") else None, **AWD_DEFAULTS)
        stages["awd"] = {"seconds": s.seconds, "peak_rss_mib": s.peak_mib}
    return {"width": width, "D": problem.D, "N": n, "k": k, "threads": torch.get_num_threads(),
            "stages": stages, "eigvals_head": basis.values[:5].tolist(),
            "seconds": sum(st["seconds"] for st in stages.values()),
            "peak_rss_mib": max(st["peak_rss_mib"] for st in stages.values())}


def dist_job(world, width: int, n: int, k: int) -> dict:
    from awch_scale.analysis.covariance import covariance
    from awch_scale.linalg.eigen import top_eigenpairs
    from awch_scale.model.operators import KroneckerHessianOperator
    from awch_scale.model.per_sample import projected_gradients
    from awch_scale.model.problem import make_problem

    model, x, y = trained_problem(width, n)
    t0 = time.perf_counter()
    problem = make_problem(model, "fc2", x, y, "ce")
    op = KroneckerHessianOperator(problem, world=world)
    basis = top_eigenpairs(op, k, seed=0)
    P = projected_gradients(problem, basis.vectors, layer=op.layer, world=world)
    C = covariance(P, 50)
    return {"seconds": time.perf_counter() - t0, "values": basis.values,
            "covar": C.numpy(), "n_products": basis.n_products}


def dist_compare(width: int, n: int = 2000, k: int = 50) -> dict:
    from awch_scale.run.launcher import run_distributed

    trained_problem(width, n)  # train/cache once, outside the timings
    out = {"width": width, "D": width * width, "N": n, "k": k}
    res = {}
    for nproc in (1, 2):
        t0 = time.perf_counter()
        res[nproc] = run_distributed(dist_job, nproc, width, n, k, backend="gloo")
        out[f"wall_{nproc}proc"] = time.perf_counter() - t0
        out[f"analysis_seconds_{nproc}proc"] = res[nproc]["seconds"]
    for name in ("values", "covar"):
        a, b = res[1][name], res[2][name]
        out[f"max_rel_diff_{name}"] = float(np.abs(a - b).max() / np.abs(a).max())
    return out


def analyze_recipe(width: int, per_class: int, store: str) -> str:
    """A recipe of moderate size for the ``analyze`` comparison (YAML text).

    FC in-w-w-10 on a 10-class Gaussian mixture in R^64, N = 10 * per_class analysis
    samples, one run analysed at one checkpoint, k = min(50, w^2 - 1), every stage on
    (their defaults), float64 (the stores are compared to 1e-6)."""
    k = min(50, width * width - 1)
    return f"""name: nproc-bench
data:
  dataset: gauss
  classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
  train_per_class: {per_class}
  test_size: 200
  gauss: {{dim: 64, separation: 2.0}}
model: {{arch: fc, width: {width}}}
loss: ce
train: {{lr: 0.1, batch_size: 50, epochs: 2}}
runs: {{seeds: [0]}}
analysis:
  target: fc2
  epochs: [2]
  k: {k}
  n_fit: {max(2, k // 2)}
dtype: float64
device: cpu
store: {store}
"""


def _store_difference(a_path, b_path) -> dict:
    """Largest relative difference (to each variable's largest magnitude) between two
    stores, over the float variables (timings and provenance left out, and the two
    rounding-level self-checks ``hess_residual`` and ``awd_h1_rel_err``, which are
    relative to |lambda_1| already: their largest absolute difference is reported)."""
    import xarray as xr

    a = xr.open_zarr(a_path, consolidated=False).load()
    b = xr.open_zarr(b_path, consolidated=False).load()
    worst, where, rounding = 0.0, "", 0.0
    for name in a.data_vars:
        if name == "provenance" or name.startswith("seconds_") or a[name].dtype.kind != "f":
            continue
        x, y = a[name].values.astype(np.float64), b[name].values.astype(np.float64)
        if name in ("hess_residual", "awd_h1_rel_err"):
            rounding = max(rounding, float(np.nanmax(np.abs(x - y))))
            continue
        scale = np.nanmax(np.abs(x)) if np.isfinite(x).any() else 0.0
        if scale > 0:
            d = float(np.nanmax(np.abs(x - y)) / scale)
            if d > worst:
                worst, where = d, name
    return {"max_rel_diff": worst, "max_rel_diff_variable": where,
            "max_abs_diff_self_checks": rounding}


def analyze_compare(width: int, per_class: int = 1000, nprocs=(1, 2), threads: int = 1,
                    timeout: float = 7200) -> dict:
    """Time ``awch-scale analyze --nproc n`` for each n on :func:`analyze_recipe`."""
    import shutil
    import subprocess
    import tempfile

    import xarray as xr

    out = {"width": width, "D": width * width, "N": 10 * per_class, "threads": threads,
           "runs": {}}
    tmp = tempfile.mkdtemp(prefix="bench-nproc-")
    try:
        stores = {}
        for n in nprocs:
            stores[n] = os.path.join(tmp, f"n{n}", "bench.zarr")
            recipe = os.path.join(tmp, f"n{n}.yaml")
            with open(recipe, "w") as f:
                f.write(analyze_recipe(width, per_class, stores[n]))
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "awch_scale", "analyze", recipe, "-q",
                                   "--threads", str(threads), "--nproc", str(n)],
                                  capture_output=True, text=True, timeout=timeout, env=env)
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                out["runs"][n] = {"error": (done.stdout + done.stderr)[-2000:]}
                continue
            ds = xr.open_zarr(stores[n], consolidated=False)
            stages = {v.removeprefix("seconds_"): float(ds[v].values.sum())
                      for v in ds.data_vars if v.startswith("seconds_")}
            out["runs"][n] = {"wall_seconds": wall, "stage_seconds": stages,
                              "analysis_seconds": sum(stages.values()),
                              "k": int(ds.sizes["eig"])}
        if all("error" not in out["runs"].get(n, {"error": 1}) for n in nprocs):
            out.update(_store_difference(stores[nprocs[0]], stores[nprocs[-1]]))
            base = out["runs"][nprocs[0]]
            for n in nprocs[1:]:
                r = out["runs"][n]
                r["speedup_wall"] = base["wall_seconds"] / r["wall_seconds"]
                r["speedup_analysis"] = base["analysis_seconds"] / r["analysis_seconds"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def conv_hvp_worker(n: int = 4096, m: int = 32, repeats: int = 3, chunk: int = 512) -> dict:
    """HVP/s on a conv-layer target: CNN conv(1->8, 3x3) - relu - maxpool 2 - conv(8->16,
    3x3, the target, D = 1152) - relu - avgpool 4 - flatten - linear(16*3*3 -> 10), on
    the Gaussian-mixture inputs reshaped to 1 x 28 x 28; ours (reverse and forward
    modes), curvlinops and PyHessian's single batch, side by side (median of repeats)."""
    import copy

    import pyhessian
    import torch
    from curvlinops import HessianLinearOperator
    from pyhessian.utils import hessian_vector_product
    from torch import nn

    from awch_scale.model.operators import HessianOperator
    from awch_scale.model.problem import make_problem

    from .bench_hvp import _batches
    from .common import gaussian_mixture, median, timed

    torch.manual_seed(0)
    model = nn.Sequential()
    for name, mod in [("conv1", nn.Conv2d(1, 8, 3, bias=False)), ("act1", nn.ReLU()),
                      ("pool1", nn.MaxPool2d(2)), ("conv2", nn.Conv2d(8, 16, 3, bias=False)),
                      ("act2", nn.ReLU()), ("pool2", nn.AvgPool2d(4)),
                      ("flat", nn.Flatten()), ("out", nn.Linear(16 * 2 * 2, 10, bias=False))]:
        model.add_module(name, mod)
    x, y = gaussian_mixture(n, 0)
    x = x.view(n, 1, 28, 28)
    problem = make_problem(model, "conv2", x, y, "ce", chunk_size=chunk)
    D, shape = problem.D, model.conv2.weight.shape
    V = torch.randn(D, m, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rev = HessianOperator(problem, max_vectors=m)
    fwd = HessianOperator(problem, max_vectors=m, mode="forward")

    def frozen():
        mm = copy.deepcopy(model)
        for nm, p in mm.named_parameters():
            p.requires_grad_(nm == "conv2.weight")
        return mm

    cl = frozen()
    curv = HessianLinearOperator(cl, nn.CrossEntropyLoss(), [cl.conv2.weight],
                                 _batches(x, y, chunk), check_deterministic=False, num_data=n)
    ph = pyhessian.hessian(frozen(), nn.CrossEntropyLoss(), data=(x, y), cuda=False)

    def pyh(W):
        cols = [hessian_vector_product(ph.gradsH, ph.params, [w.view(shape).float()])[0]
                for w in W.T]
        return torch.stack([c.reshape(-1) for c in cols], 1).double()

    table = {"ours_hvp_reverse": rev.matmat, "ours_hvp_forward": fwd.matmat,
             "curvlinops": lambda W: (curv @ W.float()).double(), "pyhessian_batch": pyh}
    ref = rev.matmat(V)
    out = {}
    for name, fn in table.items():
        got = fn(V)
        out[name] = {"seconds": [],
                     "max_rel_diff": ((got - ref).abs().max() / ref.abs().max()).item()}
    for _ in range(repeats):
        for name, fn in table.items():
            out[name]["seconds"].append(timed(fn, V)[1])
    for res in out.values():
        res["hvp_per_s"] = m / median(res["seconds"])
    return {"D": D, "N": n, "m": m, "chunk": chunk, "methods": out}


def hvp_compare() -> dict:
    from .common import run_worker

    fc = run_worker("benchmarks.bench_hvp:hvp_worker", timeout=1800, threads=1, width=50,
                    n=20000, m=32, repeats=3,
                    methods=["ours_kron", "ours_hvp", "curvlinops", "pyhessian_batch"])
    conv = run_worker("benchmarks.bench_issue10:conv_hvp_worker", timeout=1800, threads=1)
    return {"fc_benchmark_shape": fc, "conv_target": conv}


def run(cfg: dict, run_worker) -> dict:
    c = cfg.get("issue10", {"widths": [1000]})
    rows = [run_worker("benchmarks.bench_issue10:wide_worker", timeout=c.get("timeout", 3600),
                       width=w) for w in c["widths"]]
    return {"rows": rows}


def render(rows: list[dict]) -> str:
    """Markdown tables of the rows of cpu-issue10.json (appended under a hand-written head)."""
    out = []
    for r in rows:
        load = f"load {r['loadavg_start'][0]:.1f} -> {r['loadavg_end'][0]:.1f} (2 cores)"
        if r["kind"] == "wide":
            if "error" in r:
                out.append(f"- wide width {r.get('width')}: {r['error']}")
                continue
            e = r["stages"]["eigenpairs"]
            out.append(f"### wide: D = {r['D']:.3g}, N = {r['N']}, k = {r['k']}, AWD on "
                       f"({load}, commit {r['git_commit']})\n")
            out.append("| stage | seconds | peak RSS MiB |\n|---|---|---|")
            for name, st in r["stages"].items():
                out.append(f"| {name} | {st['seconds']:.1f} | {st['peak_rss_mib']:.0f} |")
            out.append(f"| total | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} |\n")
            out.append(f"Eigen stage: operator build {e['operator_build_seconds']:.1f} s, "
                       f"solver {e['solver_seconds']:.1f} s of which operator products "
                       f"{e['product_seconds']:.1f} s ({100 * e['product_share_of_solver']:.0f}"
                       f"%), {e['n_products']} products, max residual "
                       f"{e['max_residual']:.2e}, Q cached: {e['q_cached']} "
                       f"({e.get('q_form')}), solver {e.get('method', 'block')}, "
                       f"{r.get('threads', 1)} thread(s).\n")
        elif r["kind"] == "hvp":
            for part, res in (("FC benchmark shape (fc2, D = 2500, N = 20000)",
                               r["fc_benchmark_shape"]),
                              ("conv target (conv2, D = 1152, N = 4096)", r["conv_target"])):
                out.append(f"### HVP/s, {part} ({load})\n")
                if "error" in res:
                    out.append(f"error: {res['error']}\n")
                    continue
                out.append("| method | HVP/s | max rel diff |\n|---|---|---|")
                for name, v in res["methods"].items():
                    out.append(f"| {name} | {v['hvp_per_s']:.1f} | {v['max_rel_diff']:.2e} |")
                out.append("")
        elif r["kind"] == "analyze":
            out.append(f"### awch-scale analyze --nproc: D = {r['D']}, N = {r['N']}, "
                       f"{r['threads']} thread(s) per process ({load})\n")
            runs = {int(n): v for n, v in r["runs"].items()}
            if any("error" in v for v in runs.values()):
                out.append("error: " + "; ".join(v.get("error", "")[-300:]
                                                 for v in runs.values()) + "\n")
                continue
            stages = list(next(iter(runs.values()))["stage_seconds"])
            out.append("| processes | wall s | analysis s | " + " | ".join(stages) +
                       " | speed-up (analysis) |\n|---|---|---|" + "---|" * len(stages) +
                       "---|")
            for n, v in sorted(runs.items()):
                out.append(f"| {n} | {v['wall_seconds']:.1f} | {v['analysis_seconds']:.1f} | "
                           + " | ".join(f"{v['stage_seconds'][s]:.1f}" for s in stages)
                           + f" | {v.get('speedup_analysis', 1.0):.2f} |")
            out.append(f"\nmax relative difference of the stores: {r['max_rel_diff']:.1e} "
                       f"({r['max_rel_diff_variable']}); residual self-checks "
                       f"{r['max_abs_diff_self_checks']:.1e} absolute\n")
        elif r["kind"] == "dist":
            out.append(f"### 1 vs 2 gloo processes: D = {r['D']:.3g}, N = {r['N']}, k = "
                       f"{r['k']} ({load})\n")
            out.append("| processes | wall s (incl. spawn) | analysis s |\n|---|---|---|")
            for p in (1, 2):
                out.append(f"| {p} | {r[f'wall_{p}proc']:.1f} | "
                           f"{r[f'analysis_seconds_{p}proc']:.1f} |")
            out.append(f"\nmax relative difference: eigenvalues {r['max_rel_diff_values']:.1e}, "
                       f"covar {r['max_rel_diff_covar']:.1e}\n")
    out += memory_exponent(rows)
    return "\n".join(out) + "\n"


def memory_exponent(rows: list[dict]) -> list[str]:
    """Peak RSS against D over the newest wide row of each D: the least-squares slope
    of log RSS on log D and the slope between neighbouring sizes (memory grows like
    D^slope). Each row's commit is listed."""
    latest = {r["D"]: r for r in rows if r.get("kind") == "wide" and "error" not in r}
    if len(latest) < 2:
        return []
    Ds = sorted(latest)
    rss = [latest[D]["peak_rss_mib"] for D in Ds]
    slope = float(np.polyfit(np.log(Ds), np.log(rss), 1)[0])
    out = ["### Memory growth in D (the newest wide row of each D)\n",
           "| D | peak RSS MiB | total s | slope from previous D | commit |",
           "|---|---|---|---|---|"]
    for i, D in enumerate(Ds):
        step = ("-" if i == 0 else
                f"{np.log(rss[i] / rss[i - 1]) / np.log(D / Ds[i - 1]):.2f}")
        out.append(f"| {D:.2e} | {rss[i]:.0f} | {latest[D]['seconds']:.1f} | {step} | "
                   f"{latest[D]['git_commit']} |")
    out.append(f"\nLeast-squares exponent over D = {Ds[0]:.1e} .. {Ds[-1]:.1e}: "
               f"**{slope:.2f}**.\n")
    return out


def main(argv: list[str]) -> int:
    import torch

    from .common import run_worker

    kind, width = argv[0], int(argv[1])
    threads = int(argv[2]) if len(argv) > 2 else 1
    torch.set_num_threads(1)
    load0 = list(os.getloadavg())
    if kind == "analyze":
        res = analyze_compare(width, *(int(a) for a in argv[2:3]))
    elif kind == "wide":
        method = argv[3] if len(argv) > 3 else "auto"
        res = run_worker("benchmarks.bench_issue10:wide_worker", timeout=3600,
                         threads=threads, width=width, method=method)
    elif kind == "hvp":
        res = hvp_compare()
    else:
        res = dist_compare(width)
    res.update(kind=kind, loadavg_start=load0, loadavg_end=list(os.getloadavg()),
               git_commit=machine_info()["git_commit"])
    path = RESULTS / "cpu-issue10.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    rows.append(res)
    path.write_text(json.dumps(rows, indent=1))
    (RESULTS / "cpu-issue10-tables.md").write_text(render(rows))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
