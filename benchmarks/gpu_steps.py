"""The measuring steps of ``python -m benchmarks.gpu`` (each runs in a worker process).

Every function here is called by :mod:`benchmarks.gpu` through ``benchmarks.worker``
(its own process, killed at its time limit) or in-process with ``--quick``; each returns
a JSON-ready dict. While a step runs, :class:`Watch` prints ``[where]`` (the innermost
awch-scale functions the main thread is in, then the innermost frame) and ``[peak]``
(peak device memory so far) every few seconds, so that a step killed at its limit still
says where it was and how much memory it had taken.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
import traceback

import numpy as np
import torch

from .common import HostReads, trained_problem

GIB = 2 ** 30


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA); nothing on a CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def where(thread_id: int) -> str:
    """The awch-scale functions ``thread_id`` is in (the outermost, the analysis stage,
    the innermost two) and its innermost frame, e.g. ``run_recipe > spectra_stage > ... >
    top_eigenpairs > _eigsh @ arpack.py:iterate``."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return "?"
    stack = traceback.extract_stack(frame)
    ours = [f.name for f in stack if "awch_scale" in f.filename]
    if len(ours) > 4:  # the outermost, the analysis stage, the innermost two
        stages = [n for n in ours[1:-2] if n.endswith("_stage")]
        ours = [ours[0], *stages[-1:], "...", *ours[-2:]]
    chain = ours
    last = stack[-1]
    return " > ".join(chain) + f" @ {last.filename.rsplit('/', 1)[-1]}:{last.name}"


class Watch:
    """Peak device memory of a block (``torch.cuda.max_memory_allocated``, reset on entry)
    and a heartbeat thread printing ``[where]``/``[peak]`` lines every ``every`` seconds."""

    def __init__(self, device: str, every: float = 5.0):
        self.cuda = torch.device(device).type == "cuda"
        self.every, self.peak_bytes = every, None
        self._stop = threading.Event()

    def _peak(self) -> int | None:
        return torch.cuda.max_memory_allocated() if self.cuda else None

    def _beat(self, main: int) -> None:
        t0 = time.perf_counter()
        while not self._stop.wait(self.every):
            peak = self._peak()
            mem = "" if peak is None else f"; [peak] {peak / GIB:.2f} GiB"
            print(f"[where] {time.perf_counter() - t0:.0f} s: {where(main)}{mem}", flush=True)

    def __enter__(self) -> Watch:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._beat, args=(threading.get_ident(),),
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.peak_bytes = self._peak()


# ----------------------------------------------------------------------------- recipes


def _store_summary(store: str) -> dict:
    """Per-stage seconds (summed over the store's analyses), n_hvp, gamma by estimator and
    the first analysis's eigen provenance."""
    import xarray as xr

    ds = xr.open_zarr(store, consolidated=False)
    stages = {str(v).removeprefix("seconds_"): float(np.nansum(ds[v].values))
              for v in ds.data_vars if str(v).startswith("seconds_")}
    out = {"stage_seconds": stages, "analysis_seconds": sum(stages.values())}
    if "n_hvp" in ds:
        out["n_hvp"] = int(np.nansum(ds.n_hvp.values))
    if "gamma" in ds:
        g = ds.gamma.values.reshape(-1, ds.sizes["estimator"])
        out["gamma"] = {str(e): g[:, i].tolist() for i, e in enumerate(ds.estimator.values)}
    if "provenance" in ds:
        texts = [t for t in np.ravel(ds.provenance.values) if t]
        prov = json.loads(str(texts[0])) if texts else {}
        out.update({key: prov.get(key) for key in ("operator", "eigen_method", "eigen_choice")})
    return out


def recipe_worker(text: str, store: str, device: str, threads: int | None = None) -> dict:
    """``awch-scale analyze`` of the recipe ``text`` (store and device already in it):
    wall time, per-stage seconds from the store, peak device memory of the whole run
    (training and analysis). A recipe its checks refuse (e.g. missing MNIST files)
    returns ``prepare_error`` instead."""
    from awch_scale.errors import AwchError
    from awch_scale.run.plan import prepare
    from awch_scale.run.recipe import parse_recipe
    from awch_scale.run.runner import run_recipe
    from awch_scale.threads import set_threads

    n_threads = set_threads(threads)
    t0 = time.perf_counter()
    try:
        plan = prepare(parse_recipe(text), text)
    except AwchError as exc:
        return {"prepare_error": str(exc)}
    print(f"prepared in {time.perf_counter() - t0:.1f} s: D = {plan.block_sizes}, N = "
          f"{plan.data.n_analysis}, {n_threads} thread(s)", flush=True)
    with Watch(device) as watch:
        summary = run_recipe(plan, progress=True, echo=lambda m: print(m, flush=True))
    wall = time.perf_counter() - t0
    out = {"wall_seconds_run": wall, "n_done": summary.n_done,
           "n_analyses": summary.n_analyses, "failures": summary.failures,
           "D": plan.block_sizes, "N": plan.data.n_analysis, "store": store,
           "peak_device_bytes": watch.peak_bytes, "threads": n_threads}
    out.update(_store_summary(store))
    out["train_and_other_seconds"] = wall - out["analysis_seconds"]
    return out


def floor_worker(text: str, store: str, device: str, repeats: int = 10,
                 block: int = 32) -> dict:
    """The eigen stage against its floor on the recipe's target (the checkpoint in
    ``store``'s folder when there is one).

    t_1 is the median of ``repeats`` single-vector products of the Kronecker operator
    on all N samples at once (cache warm, each synchronised); floor = n_hvp * t_1. The
    eigen solve is rerun here with the recipe's settings, its products timed
    (synchronised), and once with each of ``lanczos`` and ``block`` by name; the single /
    per-vector-in-a-``block`` product ratio is the quantity of
    :data:`awch_scale.linalg.eigen.MEASURED_RATIOS` on this device."""
    from awch_scale.analysis.context import hessian_operator
    from awch_scale.errors import AwchError
    from awch_scale.linalg.eigen import top_eigenpairs
    from awch_scale.model.problem import make_problem
    from awch_scale.run.checkpoints import load_checkpoint
    from awch_scale.run.plan import prepare
    from awch_scale.run.recipe import parse_recipe

    plan = prepare(parse_recipe(text), text)
    r = plan.recipe
    seed, epoch = r.runs.seeds[0], r.analysis.epochs[-1]
    model = plan.new_model(seed)
    try:
        model.load_state_dict(load_checkpoint(plan, seed, epoch, None))
        trained = True
    except AwchError:
        trained = False  # the width step did not leave its checkpoint: an untrained model
    x, y = plan.data.x_analysis, plan.data.y_analysis
    problem = make_problem(model, r.analysis.targets[0], x, y, r.loss, chunk_size=len(x),
                           device=device, dtype=plan.dtype)
    op = hessian_operator(problem, "kronecker")
    gen = torch.Generator().manual_seed(0)
    V = torch.randn(problem.D, block, dtype=torch.float64, generator=gen).to(device)

    def seconds(cols: slice, n: int) -> float:
        times = []
        for _ in range(n):
            sync(device)
            t0 = time.perf_counter()
            op.matmat(V[:, cols])
            sync(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    seconds(slice(0, 1), 2)  # warm-up
    t_one = seconds(slice(0, 1), repeats)
    t_block = seconds(slice(0, block), max(2, repeats // 4))
    out = {"D": problem.D, "N": problem.N, "trained": trained, "t_product_s": t_one,
           "t_block_product_s": t_block, "block": block,
           "ratio_single_per_vector": t_one / (t_block / block), "repeats": repeats}
    try:
        summary = _store_summary(store)
        out.update(store_seconds_eigen=summary["stage_seconds"].get("eigen"),
                   store_n_hvp=summary.get("n_hvp"), store_eigen_method=summary.get(
                       "eigen_method"))
        if out["store_seconds_eigen"] and out["store_n_hvp"]:
            out["store_floor_s"] = out["store_n_hvp"] * t_one
            out["store_over_floor"] = out["store_seconds_eigen"] / out["store_floor_s"]
    except (OSError, KeyError, ValueError) as exc:
        out["store_error"] = f"{type(exc).__name__}: {exc}"
    eigen = r.analysis.settings().eigen.model_dump()
    inner, spent = op.matmat, [0.0]

    def clocked(W):
        sync(device)
        t0 = time.perf_counter()
        res = inner(W)
        sync(device)
        spent[0] += time.perf_counter() - t0
        return res

    op.matmat = clocked
    sync(device)
    t0 = time.perf_counter()
    basis = top_eigenpairs(op, r.analysis.k, seed=seed, **eigen)
    solve = time.perf_counter() - t0
    op.matmat = inner
    out.update(solver_s=solve, product_s=spent[0], product_share=spent[0] / solve,
               n_products=basis.n_products, method=basis.method, choice=basis.choice,
               floor_s=basis.n_products * t_one,
               over_floor=solve / (basis.n_products * t_one))
    for method in ("lanczos", "block"):
        sync(device)
        t0 = time.perf_counter()
        b = top_eigenpairs(op, r.analysis.k, seed=seed, **{**eigen, "method": method})
        sync(device)
        out[f"{method}_s"] = time.perf_counter() - t0
        out[f"{method}_products"] = b.n_products
    out["profile"] = profile_solve(lambda: top_eigenpairs(op, r.analysis.k, seed=seed,
                                                          **eigen), device)
    return out


def profile_solve(solve, device: str, rows: int = 15) -> dict:
    """One more eigen solve under ``torch.profiler`` and :class:`HostReads`: the host
    round trips per product, and the ``rows`` operators with the most self time (device
    time on a GPU, CPU time otherwise), with their calls: where the time above the floor
    goes (per-step launches, synchronisations, small kernels)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    try:
        with HostReads() as reads, profile(activities=acts) as prof:
            basis = solve()
            sync(device)
        events = sorted(prof.key_averages(), key=lambda e: -getattr(e, key, 0.0))
        total = sum(getattr(e, key, 0.0) for e in events) or 1.0
        top = [{"op": e.key, "calls": e.count,
                "self_ms": round(getattr(e, key, 0.0) / 1e3, 3),
                "share": round(getattr(e, key, 0.0) / total, 4),
                "cpu_total_ms": round(e.cpu_time_total / 1e3, 3)} for e in events[:rows]]
        return {"n_products": basis.n_products, "host_reads": reads.count,
                "host_reads_per_product": round(reads.count / max(basis.n_products, 1), 3),
                "sorted_by": key, "top": top,
                "syncs": sum(e.count for e in events if "Synchronize" in e.key)}
    except Exception as exc:  # the profile is extra information, never a step's failure
        return {"error": f"{type(exc).__name__}: {exc}"}


# ----------------------------------------------------------------------------- peers


def _frozen(model, device):
    """The model on ``device`` with only fc2 trainable (the block the peers differentiate)."""
    model = model.to(device)
    for name, p in model.named_parameters():
        p.requires_grad_(name == "fc2.weight")
    return model


def peers_model(width: int, n: int) -> dict:
    """Train (or load) the peers' FC model once, so no method's step pays for it."""
    t0 = time.perf_counter()
    trained_problem(width, n)
    return {"seconds": time.perf_counter() - t0}


def ours_worker(width: int, n: int, k: int, device: str) -> dict:
    """awch-scale's top-k (the default solver, float32 products, operator build included)
    and the reference: ARPACK at tol 1e-10 on the float64 Kronecker operator."""
    from scipy.sparse.linalg import eigsh

    from awch_scale.linalg.eigen import top_eigenpairs
    from awch_scale.model.operators import KroneckerHessianOperator
    from awch_scale.model.problem import make_problem

    model, x, y = trained_problem(width, n)
    sync(device)
    t0 = time.perf_counter()
    op = KroneckerHessianOperator(make_problem(model, "fc2", x, y, "ce", device=device))
    basis = top_eigenpairs(op, k, tol=1e-6, seed=0)
    sync(device)
    seconds = time.perf_counter() - t0
    ref_op = KroneckerHessianOperator(make_problem(model, "fc2", x, y, "ce", device=device,
                                                   dtype=torch.float64), cache_bytes=8 * GIB)
    t0 = time.perf_counter()
    v0 = np.random.default_rng(0).standard_normal(ref_op.shape[0])
    ref = np.sort(eigsh(ref_op.to_scipy(), k=k, which="LA", v0=v0, tol=1e-10)[0])[::-1]
    return {"seconds": seconds, "n_products": basis.n_products, "method": basis.method,
            "values": basis.values.tolist(), "reference_values": ref.tolist(),
            "reference_seconds": time.perf_counter() - t0,
            "reference": "ARPACK eigsh, tol 1e-10, float64 Kronecker operator"}


def curvlinops_worker(width: int, n: int, k: int, device: str, chunk: int = 512) -> dict:
    """curvlinops ``HessianLinearOperator`` + scipy ``eigsh`` (which='LA', tol 1e-6) on the
    same block and samples (as ``bench_eigen.curvlinops_eigen``, on ``device``)."""
    from curvlinops import HessianLinearOperator
    from scipy.sparse.linalg import eigsh
    from torch import nn

    model, x, y = trained_problem(width, n)
    model = _frozen(model, device)
    batches = list(zip(x.to(device).split(chunk), y.to(device).split(chunk), strict=True))
    sync(device)
    t0 = time.perf_counter()
    lin = HessianLinearOperator(model, nn.CrossEntropyLoss(), [model.fc2.weight], batches,
                                check_deterministic=False, num_data=n).to_scipy()
    v0 = np.random.default_rng(0).standard_normal(lin.shape[0])
    vals = eigsh(lin, k=k, which="LA", v0=v0, tol=1e-6)[0]
    sync(device)
    return {"seconds": time.perf_counter() - t0, "values": sorted(vals.tolist(), reverse=True)}


def pyhessian_worker(width: int, n: int, k: int, device: str, tol: float = 1e-3,
                     max_iter: int = 100) -> dict:
    """PyHessian's deflated power iteration (``eigenvalues(top_n=k)``, single batch of all
    n samples) at ``tol``/``max_iter`` (its defaults: 1e-3, 100)."""
    import importlib

    from torch import nn

    ph = importlib.import_module("pyhessian.hessian")
    model, x, y = trained_problem(width, n)
    model = _frozen(model, device)
    torch.manual_seed(0)
    sync(device)
    t0 = time.perf_counter()
    h = ph.hessian(model, nn.CrossEntropyLoss(), data=(x.to(device), y.to(device)),
                   cuda=torch.device(device).type == "cuda")
    vals = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)[0]
    sync(device)
    return {"seconds": time.perf_counter() - t0, "tol": tol, "max_iter": max_iter,
            "values": sorted((float(v) for v in vals), reverse=True)}
