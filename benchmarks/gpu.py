"""A GPU check anyone can rerun (issue 18): ``python -m benchmarks.gpu``.

    python -m benchmarks.gpu [--quick] [--device cpu|cuda] [--out DIR] [--budget S]
                             [--only abcde] [--scale F] [--table1-recipe PATH]

Steps, each in its own worker process under its own time limit (a step that fails or
runs out of time is recorded as such, with where it was, and the script goes on; no step
starts once the budget, 470 s by default, is spent):

(a) ``recipes/quickstart.yaml`` on the device and on the CPU (the CPU run starts first,
    in the background on 4 host threads, when the device is a GPU): the largest
    relative difference of every science variable, and of gamma;
(b) the quickstart widened to D = 1e6 (model.width 1000, analysis.k 50, n_fit 50,
    train.epochs 1, one seed), then D = 1.6e7 (width 4000) and D = 1e8 (width 10,000),
    last: per-stage seconds (the store's ``seconds_*``) and peak device memory
    (``torch.cuda.max_memory_allocated``);
(c) the eigen stage's share of products and its floor at D = 1e6 (step b's checkpoint):
    floor = n_hvp * t_1, t_1 the median wall time of one synchronised single-vector
    Kronecker product on all N samples, i.e. the stage's time if all but its products
    were free; also ``lanczos`` and ``block`` by name and the product ratio the solver
    rule uses (``awch_scale.linalg.eigen.MEASURED_RATIOS``) measured on the device;
(d) top-20 of the fc2 block of FC 784-1000-1000-10 (D = 1e6, N = 20,000): awch-scale,
    curvlinops ``HessianLinearOperator`` + scipy ``eigsh``, PyHessian at its defaults
    and at tol 1e-5, each with its time and its error max_i |lambda_i - ref_i| / ref_1
    against ARPACK at tol 1e-10 on the float64 operator ('not installed' when missing);
(e) one Table-1 cell (``recipes/table1/mnist_cnn_ce_c10.yaml``, seed 0) when its MNIST
    files are under its ``data.root``; otherwise skipped, with the reason.

Results: DIR/gpu.json (everything) and DIR/gpu.md, rewritten after every step (DIR:
benchmarks/results; with ``--quick``, benchmarks/_work/gpu-quick). ``--quick`` is the
smoke test of the suite (tests/test_gpu_script.py): tiny widths, every step in this
process (a soft time limit), no Table-1 cell and no background run; ``--sizes quick``
alone runs the tiny sizes through the worker processes. ``--only b --scale 10 --budget
600`` gives the widths ten times their limits (D = 1e8 may need minutes). The steps are in
:mod:`benchmarks.gpu_steps`, the report's tables in :mod:`benchmarks.gpu_report`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import yaml

from .common import REPO, RESULTS, WORK, machine_info, plain
from .gpu_report import render

QUICKSTART = REPO / "recipes" / "quickstart.yaml"
TABLE1 = REPO / "recipes" / "table1" / "mnist_cnn_ce_c10.yaml"
STEPS = "benchmarks.gpu_steps:"
SIZES = {  # widths of (b), the peers' shape (d), overrides of (a), limits in seconds
    "full": {"widths": [1000, 4000, 10000], "k": 50, "peers": (1000, 20000, 20),
             "quickstart": {}, "limits": {"quickstart": 120, "cpu_reference": 300,
                                          "width": [75, 60, 60], "floor": 45,
                                          "peers_model": 90, "ours": 40, "curvlinops": 40,
                                          "pyhessian": 30, "pyhessian_tight": 40,
                                          "table1": 160}},
    "quick": {"widths": [10, 12, 14], "k": 6, "peers": (10, 200, 5),
              "quickstart": {"model.width": 8, "data.train_per_class": 30,
                             "data.test_size": 30, "train.batch_size": 10,
                             "train.epochs": 2, "runs.seeds": [0], "analysis.epochs": [2],
                             "analysis.k": 6, "analysis.n_fit": 6},
              "limits": {"quickstart": 60, "cpu_reference": 60, "width": [60, 60, 60],
                         "floor": 60, "peers_model": 60, "ours": 60, "curvlinops": 60,
                         "pyhessian": 60, "pyhessian_tight": 60, "table1": 60}},
}


def log(t0: float, text: str) -> None:
    """One progress line, flushed."""
    print(f"[{time.perf_counter() - t0:6.1f} s] {text}", flush=True)


def recipe_text(path: Path, overrides: dict) -> str:
    """The recipe at ``path`` with dotted-key ``overrides`` (YAML text)."""
    raw = yaml.safe_load(path.read_text())
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return yaml.safe_dump(raw, sort_keys=False)


# ----------------------------------------------------------------------------- running


class Job:
    """One step in a worker process (``benchmarks.worker``), its output streamed with a
    prefix; :meth:`wait` kills it (its process group) at the deadline."""

    def __init__(self, target: str, kwargs: dict, limit: float, name: str,
                 threads: int | None = None):
        self.name, self.limit, self.tail = name, limit, deque(maxlen=12)
        self.where, self.out = "", Path(tempfile.mkstemp(suffix=".json")[1])
        env = dict(os.environ)
        if threads is not None:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", target, json.dumps(kwargs),
             str(self.out)], cwd=REPO, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True)
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        buf, shown = b"", 0.0
        while chunk := self.proc.stdout.read1(4096):
            buf += chunk.replace(b"\r", b"\n")
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").strip()
                if not line:
                    continue
                self.tail.append(line)
                if line.startswith("[where]"):
                    self.where = line
                now = time.perf_counter()  # progress bars: one line per 5 s
                if not re.search(r"/s[,\]]|s/it[,\]]", line) or now - shown > 5:
                    print(f"    {self.name} | {line[:160]}", flush=True)
                    shown = now

    def wait(self, deadline: float | None = None) -> dict:
        """The step's record: ``status`` ok / failed / timeout, ``seconds``, ``result``."""
        end = self.start + self.limit if deadline is None else min(deadline,
                                                                    self.start + self.limit)
        try:
            self.proc.wait(timeout=max(0.0, end - time.perf_counter()))
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.reader.join(timeout=5)
        rec = {"seconds": time.perf_counter() - self.start, "limit_s": self.limit}
        try:
            if self.proc.returncode == -signal.SIGKILL:
                rec.update(status="timeout", where=self.where, tail=list(self.tail))
            elif self.proc.returncode != 0:
                rec.update(status="failed", error=f"exit {self.proc.returncode}",
                           tail=list(self.tail))
            else:
                rec.update(status="ok", result=json.loads(self.out.read_text()))
        finally:
            self.out.unlink(missing_ok=True)
        return rec


class StepTimeout(Exception):
    """Raised in this process by the soft time limit of ``--quick``."""


def run_inline(target: str, kwargs: dict, limit: float) -> dict:
    """As :class:`Job` in this process, under a SIGALRM time limit (checked between
    Python bytecodes: a long call into C finishes first)."""
    from .common import call_worker

    def alarm(*_):
        raise StepTimeout

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    t0 = time.perf_counter()
    try:
        rec = {"status": "ok", "result": plain(call_worker(target, kwargs))}
    except StepTimeout:
        rec = {"status": "timeout"}
    except Exception as exc:  # noqa: BLE001  (recorded, the script goes on)
        rec = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return {**rec, "seconds": time.perf_counter() - t0, "limit_s": limit}


# ----------------------------------------------------------------------------- comparing


def compare_stores(a: str, b: str) -> dict:
    """Largest relative difference, max|a - b| / max|a| per float variable, over the
    science variables (every registry stage but provenance and store), and the
    largest relative difference of gamma entry by entry."""
    import xarray as xr

    from awch_scale.variables import VARIABLES

    x, y = (xr.open_zarr(p, consolidated=False).load() for p in (a, b))
    diffs = {}
    for name in x.data_vars:
        var = VARIABLES.get(str(name))
        if var is None or var.stage in ("provenance", "store") or x[name].dtype.kind != "f":
            continue
        u, v = x[name].values.astype(np.float64), y[name].values.astype(np.float64)
        scale = np.nanmax(np.abs(u)) if np.isfinite(u).any() else 0.0
        if scale > 0:
            diffs[str(name)] = float(np.nanmax(np.abs(u - v)) / scale)
    worst = sorted(diffs.items(), key=lambda kv: -kv[1])
    g = x.gamma.values
    gamma = float(np.nanmax(np.abs(g - y.gamma.values) / np.abs(g)))
    return {"max_rel_diff": worst[0][1] if worst else 0.0, "worst": worst[:8],
            "n_variables": len(diffs), "gamma_max_rel_diff": gamma}


def peer_errors(steps: dict) -> None:
    """Each peer's error against the reference of the ``ours`` step (in place)."""
    ours = steps.get("peers: awch-scale", {})
    ref = ours.get("result", {}).get("reference_values")
    if ref is None:
        return
    ref = np.asarray(ref)
    for name, rec in steps.items():
        values = rec.get("result", {}).get("values") if name.startswith("peers") else None
        if values is not None:
            v = np.asarray(values)[:len(ref)]
            rec["result"]["error"] = float(np.max(np.abs(v - ref[:len(v)])) / abs(ref[0]))


# ----------------------------------------------------------------------------- driver


class Check:
    """One run of the check: its arguments, its record and the steps (a) to (e)."""

    def __init__(self, args: argparse.Namespace, device: str):
        import torch

        self.args, self.device, self.t0 = args, device, time.perf_counter()
        self.deadline = self.t0 + (args.budget or 470.0)
        name = args.sizes or ("quick" if args.quick else "full")
        self.sizes = SIZES[name]
        self.lim = {k: [v * args.scale for v in x] if isinstance(x, list) else x * args.scale
                    for k, x in self.sizes["limits"].items()}
        self.out = args.out or (WORK / "gpu-quick" if args.quick else RESULTS)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="awch-gpu-"))
        self.report = {"machine": machine_info(), "device": device, "quick": args.quick,
                       "sizes": name, "only": args.only, "steps": {}}
        if device == "cuda":
            self.report["machine"].update(gpu=torch.cuda.get_device_name(0),
                                          cuda=torch.version.cuda)
        self.steps = self.report["steps"]
        self.reference = "quickstart on cpu (reference)"
        self.parallel = device != "cpu" and not args.quick  # the CPU reference beside
        self.background: Job | None = None

    def save(self) -> None:
        """Rewrite gpu.json and gpu.md with what is known so far."""
        self.report["seconds"] = time.perf_counter() - self.t0
        (self.out / "gpu.json").write_text(json.dumps(plain(self.report), indent=1))
        (self.out / "gpu.md").write_text(render(self.report))

    def skip(self, name: str, reason: str) -> None:
        """Record ``name`` as skipped."""
        self.steps[name] = {"status": "skipped", "reason": reason}
        log(self.t0, f"{name}: skipped ({reason})")

    def step(self, name: str, target: str, kwargs: dict, limit: float) -> dict:
        """Run one step under ``limit`` (and the budget) and record it."""
        left = self.deadline - time.perf_counter()
        if left < 10:
            self.skip(name, "the time budget is spent")
            return self.steps[name]
        limit = min(limit, left)
        log(self.t0, f"{name}: start (limit {limit:.0f} s)")
        if self.args.quick:
            rec = run_inline(STEPS + target, kwargs, limit)
        else:
            rec = Job(STEPS + target, kwargs, limit, name).wait(self.deadline)
        if "prepare_error" in rec.get("result", {}):  # the recipe's own checks refused it
            rec.update(status="failed", error=rec["result"]["prepare_error"])
        self.steps[name] = rec
        log(self.t0, f"{name}: {rec['status']} after {rec['seconds']:.1f} s "
                     f"{rec.get('error', rec.get('where', ''))}")
        self.save()
        return rec

    def recipe(self, name: str, path: Path, overrides: dict, limit: float, tag: str,
               device: str | None = None, threads: int | None = None,
               background: bool = False) -> dict:
        """``recipe_worker`` on ``path`` with ``overrides``, a store of its own (in the
        background: started, and waited for by :meth:`compare`)."""
        device = device or self.device
        store = str(self.work / f"{tag}.zarr")
        kwargs = {"text": recipe_text(path, {**overrides, "store": store, "device": device}),
                  "store": store, "device": device, "threads": threads}
        if background:
            log(self.t0, f"{name}: started in the background ({threads} threads)")
            self.background = Job(STEPS + "recipe_worker", kwargs, limit, name, threads)
            return {}
        return self.step(name, "recipe_worker", kwargs, limit)

    def quickstart(self) -> None:
        """(a), started: the CPU reference in the background when the device is a GPU."""
        qs, cpu = self.sizes["quickstart"], self.lim["cpu_reference"]
        if self.parallel:
            self.recipe(self.reference, QUICKSTART, qs, cpu, "qs-cpu", "cpu", 4, True)
        self.recipe(f"quickstart on {self.device}", QUICKSTART, qs, self.lim["quickstart"],
                    "qs-dev")
        if not self.parallel:
            self.recipe(self.reference, QUICKSTART, qs, cpu, "qs-cpu", "cpu")

    def compare(self) -> None:
        """(a), finished: wait for the background run, compare the two stores."""
        if self.background is not None:
            log(self.t0, f"{self.reference}: waiting")
            rec = self.background.wait(max(self.deadline, time.perf_counter() + 10))
            self.steps[self.reference] = rec
            log(self.t0, f"{self.reference}: {rec['status']} after {rec['seconds']:.1f} s")
        a = self.steps.get(f"quickstart on {self.device}", {})
        b = self.steps.get(self.reference, {})
        if a.get("status") == b.get("status") == "ok":
            self.report["device_vs_cpu"] = compare_stores(a["result"]["store"],
                                                          b["result"]["store"])

    def width(self, i: int) -> None:
        """(b) at the i-th width, and (c) after the first."""
        width, k = self.sizes["widths"][i], self.sizes["k"]
        o = {"model.width": width, "analysis.k": k, "analysis.n_fit": k, "train.epochs": 1,
             "analysis.epochs": [1], "runs.seeds": [0]}
        name = f"D = {width * width:,} (width {width})"
        if "b" in self.args.only or ("c" in self.args.only and i == 0):
            self.recipe(name, QUICKSTART, o, self.lim["width"][i], f"w{width}")
        if "c" in self.args.only and i == 0:
            store = str(self.work / f"w{width}.zarr")
            text = recipe_text(QUICKSTART, {**o, "store": store, "device": self.device})
            self.step(f"floor at {name}", "floor_worker",
                      {"text": text, "store": store, "device": self.device}, self.lim["floor"])

    def peers(self) -> None:
        """(d): the peers' model first (trained on the CPU, cached), then each method."""
        width, n, k = self.sizes["peers"]
        shape = {"width": width, "n": n, "k": k, "device": self.device}
        self.step("peers: the FC model (CPU training, cached)", "peers_model",
                  {"width": width, "n": n}, self.lim["peers_model"])
        self.step("peers: awch-scale", "ours_worker", shape, self.lim["ours"])
        for label, target, extra, module, limit in (
                ("curvlinops + eigsh", "curvlinops_worker", {}, "curvlinops", "curvlinops"),
                ("PyHessian (defaults: tol 1e-3, 100 iterations)", "pyhessian_worker", {},
                 "pyhessian", "pyhessian"),
                ("PyHessian (tol 1e-5, 1000 iterations)", "pyhessian_worker",
                 {"tol": 1e-5, "max_iter": 1000}, "pyhessian", "pyhessian_tight")):
            if importlib.util.find_spec(module) is None:
                self.skip(f"peers: {label}", f"{module} not installed")
            else:
                self.step(f"peers: {label}", target, {**shape, **extra}, self.lim[limit])
        peer_errors(self.steps)
        self.save()

    def table1(self) -> None:
        """(e): one Table-1 cell, seed 0, when its data are there."""
        path = self.args.table1_recipe
        name = f"Table-1 cell {path.name}, seed 0"
        data = yaml.safe_load(path.read_text()).get("data", {})
        root = REPO / data.get("root", "data")
        if self.args.quick:
            return self.skip(name, "--quick (a Table-1 cell trains for 100 epochs)")
        if data.get("dataset") in ("mnist", "cifar10") and not root.exists():
            return self.skip(name, f"no {data['dataset']} files: {root} does not exist")
        rec = self.recipe(name, path, {"runs.seeds": [0]}, self.lim["table1"], "table1")
        if "prepare_error" in rec.get("result", {}):  # e.g. the MNIST files are missing
            rec.update(status="skipped", reason=rec.pop("error"))
            self.save()
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns 0 (steps that failed are recorded, not fatal), 2 when
    ``--device cuda`` has no device."""
    import torch

    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny, in-process")
    ap.add_argument("--sizes", choices=sorted(SIZES), help="default: quick with --quick")
    ap.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    ap.add_argument("--out", type=Path, help="folder of gpu.md and gpu.json")
    ap.add_argument("--budget", type=float, help="seconds for all steps (default 470)")
    ap.add_argument("--only", default="abcde", help="the steps to run, e.g. 'b' or 'cd'")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every step's limit")
    ap.add_argument("--table1-recipe", type=Path, default=TABLE1, help="the cell of (e)")
    args = ap.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    check = Check(args, device)
    if "a" in args.only:
        check.quickstart()
    check.width(0)  # D = 1e6 and its floor first; the larger widths last
    if "d" in args.only:
        check.peers()
    if "e" in args.only:
        check.table1()
    for i in range(1, len(check.sizes["widths"])):
        if "b" in args.only:
            check.width(i)
    if "a" in args.only:
        check.compare()
    check.save()
    shutil.rmtree(check.work, ignore_errors=True)  # the steps' stores and checkpoints
    log(check.t0, f"done: {check.out / 'gpu.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
