"""Shared pieces of the benchmarks: machine facts, model and data, subprocess workers.

Every measured method runs in its own Python process (:func:`run_worker`), so that its
peak resident memory (``VmHWM`` of ``/proc/self/status``, reset for one stage by
:class:`StagePeak`) belongs to it alone.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
WORK = ROOT / "_work"  # trained models (git-ignored)
RESULTS = ROOT / "results"
INPUT_DIM, CLASSES = 784, 10

# ----------------------------------------------------------------------------- machine


def machine_info() -> dict:
    """CPU model, cores, RAM, load, and the versions of everything measured."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        ram_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    versions = {}
    for dist in ("awch-scale", "torch", "numpy", "scipy", "curvlinops-for-pytorch",
                 "pyhessian", "backpack-for-pytorch"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "awch_scale"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip() != ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(ram_kib / 2**20, 1),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": commit,
        "awch_scale_uncommitted_changes": dirty,
        "loadavg_start": list(os.getloadavg()),
    }


def commit_tree(commit: str, tmp: str) -> Path:
    """The ``awch_scale`` package of ``commit`` extracted under ``tmp`` (git archive), for a
    before/after benchmark in one invocation (a process started there imports it)."""
    dest = Path(tmp) / f"tree-{commit}"
    dest.mkdir()
    archive = subprocess.run(["git", "archive", commit, "awch_scale"], cwd=REPO,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


# ----------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_mib() -> float:
    """Current resident memory of this process."""
    return _status_kib("VmRSS") / 1024


_RESET_PEAKS_KIB = [0]
"""The largest VmHWM a :class:`StagePeak` reset discarded in this process."""


def peak_rss_mib() -> float:
    """Peak resident memory of this process since it started: VmHWM, or a larger one a
    :class:`StagePeak` reset discarded. Not ``ru_maxrss``: Linux keeps in it the
    high-water mark of the image before ``exec`` (the forked parent), which can exceed the
    worker's own peak (a pytest parent of 713 MiB gave a 502 MiB child that figure)."""
    return max(_RESET_PEAKS_KIB[0], _status_kib("VmHWM")) / 1024


class StagePeak:
    """Peak resident memory of one stage: resets VmHWM on entry, reads it on exit.

    (Linux: writing 5 to /proc/self/clear_refs resets the high-water mark.)
    """

    def __enter__(self):
        _RESET_PEAKS_KIB[0] = max(_RESET_PEAKS_KIB[0], _status_kib("VmHWM"))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.peak_mib = _status_kib("VmHWM") / 1024


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts the tensor-to-Python conversions (``item``, ``tolist``, ``numpy``, ``cpu``
    and the Python number conversions) inside the ``with`` block (``count``): each is a
    device-to-host round trip that drains a GPU's queue, so the count measures on a CPU
    what a GPU run would wait for. ``x.cpu().numpy()`` is one read (the copy), not two."""

    NAMES = {"item", "tolist", "numpy", "cpu", "__float__", "__bool__", "__int__"}

    def __init__(self):
        super().__init__()
        self.count = 0
        self._copied = None  # the last ``cpu()`` result, whose ``numpy()`` is free

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        out = func(*args, **(kwargs or {}))
        if name in self.NAMES and not (name == "numpy" and args and args[0] is self._copied):
            self.count += 1
        if name == "cpu":
            self._copied = out
        return out


# ----------------------------------------------------------------------------- timing


def timed(fn, *args, **kwargs):
    """(result, seconds) of one call."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


class ProductClock:
    """Wraps ``op.matmat`` so that ``seconds`` accumulates the time spent in operator
    products (the eigen stage's share of products)."""

    def __init__(self, op):
        self.seconds, inner = 0.0, op.matmat

        def clocked(V):
            t0 = time.perf_counter()
            out = inner(V)
            self.seconds += time.perf_counter() - t0
            return out

        op.matmat = clocked


def median(xs) -> float:
    return float(statistics.median(xs))


# ----------------------------------------------------------------------------- problem


def fc_model(width: int) -> nn.Sequential:
    """The paper's FC network 784-width-width-10 without biases (target ``fc2``)."""
    return nn.Sequential(OrderedDict(
        flatten=nn.Flatten(),
        fc1=nn.Linear(INPUT_DIM, width, bias=False), relu1=nn.ReLU(),
        fc2=nn.Linear(width, width, bias=False), relu2=nn.ReLU(),
        out=nn.Linear(width, CLASSES, bias=False),
    ))


def gaussian_mixture(n: int, seed: int = 0, separation: float = 3.0):
    """n inputs in R^784, 10 balanced classes with means ``separation`` * random unit vectors
    and identity covariance; float32 inputs, int64 labels."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((CLASSES, INPUT_DIM))
    means *= separation / np.linalg.norm(means, axis=1, keepdims=True)
    y = np.arange(n) % CLASSES
    x = means[y] + rng.standard_normal((n, INPUT_DIM))
    perm = rng.permutation(n)
    return (torch.from_numpy(x[perm]).float(), torch.from_numpy(y[perm]).long())


def trained_problem(width: int, n: int, seed: int = 0, epochs: int = 2):
    """(model, x, y): the FC network trained briefly with SGD (lr 0.1, B 50) on n samples of
    the Gaussian mixture, so that the Hessian has the outliers of a trained network. The
    weights are cached in ``benchmarks/_work``; training is never timed."""
    x, y = gaussian_mixture(n, seed)
    torch.manual_seed(seed)
    model = fc_model(width)
    path = WORK / f"fc{width}-n{n}-s{seed}-e{epochs}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model, x, y
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(50):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    WORK.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return model, x, y


# ----------------------------------------------------------------------------- workers


def run_worker(target: str, timeout: float | None = None, threads: int | None = None,
               **kwargs) -> dict:
    """Run ``benchmarks.<module>:<function>(**kwargs)`` in a fresh process.

    ``threads`` sets OMP_NUM_THREADS/MKL_NUM_THREADS of the child (default: inherited).
    Returns the function's dict plus ``peak_rss_mib`` (whole process), ``base_rss_mib``
    (after imports, before the function), ``threads`` and ``wall_seconds``; on a timeout
    or a crash, a dict with ``error``.
    """
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, "-m", "benchmarks.worker", target, json.dumps(kwargs), str(out)]
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env=env)
    except subprocess.TimeoutExpired:
        out.unlink(missing_ok=True)
        return {"error": f"timeout after {timeout:.0f} s", "timeout_s": timeout}
    wall = time.perf_counter() - t0
    try:
        if proc.returncode != 0:
            err = proc.stderr.strip()
            return {"error": f"exit {proc.returncode}: {err.splitlines()[-1] if err else ''}",
                    "stderr_tail": err[-3000:]}
        result = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
    result["wall_seconds"] = wall
    return result


def run_inline(target: str, timeout: float | None = None, threads: int | None = None,
               **kwargs) -> dict:
    """As :func:`run_worker`, but in this process (``--quick``: one start-up instead of one
    per method; no time limit, and memory figures are not isolated per method)."""
    if threads is not None:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        result = plain(call_worker(target, kwargs))
    except Exception as exc:  # reported like a failed worker
        return {"error": f"{type(exc).__name__}: {exc}"}
    result["wall_seconds"] = time.perf_counter() - t0
    return result


def plain(x):
    """JSON-ready copy of x (NumPy arrays and scalars to lists and Python numbers)."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def warm_up_forward_ad() -> None:
    """torch's one-time forward-mode AD initialisation (about 3 s in a fresh process), paid
    here so that no method's timing includes it (ours, curvlinops and torch.func.hessian
    would each pay it on their first jvp)."""
    x = torch.ones(3)
    torch.func.jvp(torch.func.grad(lambda w: (w.sin() ** 2).sum()), (x,), (x,))


def call_worker(target: str, kwargs: dict) -> dict:
    """Inside the worker process: import and call the target, add memory figures."""
    module, name = target.split(":")
    fn = getattr(importlib.import_module(module), name)
    for preload in ("awch_scale", "awch_scale.analysis.awd", "scipy.sparse.linalg", "scipy.stats"):
        importlib.import_module(preload)  # counted in the base, not in the method
    warm_up_forward_ad()
    base = rss_mib()
    result = fn(**kwargs)
    peak = max(peak_rss_mib(), result.get("peak_rss_mib", 0.0))
    result.update(base_rss_mib=base, peak_rss_mib=peak, threads=torch.get_num_threads())
    return result
