"""analyze_checkpoint keeps to its memory plan and never forms a D x D matrix (D = 160,000).

A child process (so its peak RSS is its own) analyses
Sequential(flatten, fc1 Linear(20, 400), relu, fc2 Linear(400, 400), relu,
out Linear(400, 10)) on N = 256 random samples with target fc2 (D = 400 * 400),
k = 4, float32, chunk_size 64, eigen tol 1e-3 and a memory budget of
:data:`BUDGET_MB` MiB. It first runs the same analysis on a narrow copy of the model
(width 40), so that every code path and library of the run is loaded, then reads its
resident memory and runs the wide analysis; the measured growth is the peak RSS of the
child's own address space (``VmHWM`` in ``/proc/self/status``) minus the resident memory
before the wide run. Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux keeps in it the
high-water mark of the image before ``exec``, i.e. of the forked pytest process, which
after a few hundred tests (713 MiB measured) exceeds the child's own peak (502 MiB).

The measurement is held against the memory the analysis may use, computed here from
the analysis's own rules, independently of its code:

- the memory plan: ``memory_budget_mb`` bounds the streamed temporaries and caches
  (per-sample chunks, the Kronecker operator's cache and product blocks);
- the eigensolver, outside that budget: the Lanczos basis, ARPACK's default size
  m = max(2k + 1, 20) plus the next vector, in the products' dtype (float32), and
  float64 working vectors: the k Ritz vectors, the product A q and the residuals
  (k + :data:`WORK_VECTORS` vectors of D).

That bound is 87 MiB (measured growth: 31 to 38 MiB). All N per-sample gradients (164 MB
in float32) or the Q_i of all samples (164 MB), which the plan does not allow here, would
exceed it; a dense D x D float32 matrix would need 102.4 GB. The growth must also be at
least the Lanczos basis itself (the measurement sees the analysis), and the whole
process stays below 2 GiB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

BUDGET_MB = 64
"""``analysis.memory_budget_mb`` of the child's analysis."""

K = 4
WIDTH = 400
N = 256
WORK_VECTORS = 4
"""float64 D-vectors of the eigensolver besides its k Ritz vectors (A q, residuals)."""

CHILD = textwrap.dedent(
    f"""
    import json, time
    import numpy as np
    import torch
    from torch import nn
    from awch_scale.analysis.checkpoint import analyze_checkpoint

    def model(width):
        torch.manual_seed(0)
        model = nn.Sequential()
        model.add_module("flatten", nn.Flatten())
        model.add_module("fc1", nn.Linear(20, width, bias=False))
        model.add_module("act1", nn.ReLU())
        model.add_module("fc2", nn.Linear(width, width, bias=False))
        model.add_module("act2", nn.ReLU())
        model.add_module("out", nn.Linear(width, 10, bias=False))
        return model

    def status_kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    torch.set_num_threads(1)
    x = torch.randn({N}, 20)
    y = torch.randint(0, 10, ({N},))
    kw = dict(loss="ce", batch_size=32, k={K}, device="cpu", chunk_size=64,
              eigen={{"tol": 1e-3}}, awd=None, fisher=None, stats=None, spectra=None,
              memory_budget_mb={BUDGET_MB}, threads=1)
    analyze_checkpoint(model(40), "fc2", x, y, **kw)  # loads every code path
    wide = model({WIDTH})
    before_kib = status_kib("VmRSS")
    t0 = time.perf_counter()
    ds = analyze_checkpoint(wide, "fc2", x, y, **kw)
    print(json.dumps({{
        "peak_kib": status_kib("VmHWM"),
        "before_kib": before_kib,
        "D": int(ds.attrs["D"]),
        "dtype": ds.attrs["dtype"],
        "chunk_size": int(ds.chunk_size),
        "seconds": time.perf_counter() - t0,
        "eigval": ds.hess_eigval.values.tolist(),
        "residual": ds.hess_residual.values.tolist(),
        "covar_diag": np.diag(ds.covar.values).tolist(),
    }}))
    """
)

LIMIT_BYTES = 2 * 1024**3


def allowed_bytes(D: int, k: int, budget_mb: float) -> int:
    """What the analysis may add to the process (module docstring): the memory plan's
    budget, the float32 Lanczos basis (m + 1 vectors) and the float64 working vectors."""
    m = max(2 * k + 1, 20)
    return int(budget_mb * 2**20) + (m + 1) * D * 4 + (k + WORK_VECTORS) * D * 8


@pytest.mark.slow
def test_peak_memory_within_the_plan():
    # the child's own environment: one OpenMP thread, and nothing an earlier test or the
    # suite's process left behind (the measurement is of this analysis alone)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWCH_", "PYTEST_"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    D = out["D"]
    assert D == WIDTH * WIDTH and out["dtype"] == "float32" and out["chunk_size"] == 64
    peak = out["peak_kib"] * 1024
    growth = peak - out["before_kib"] * 1024
    allowed = allowed_bytes(D, K, BUDGET_MB)
    basis = (max(2 * K + 1, 20) + 1) * D * 4
    print(f"\nD = {D}: peak RSS {peak / 2**20:.0f} MiB in {out['seconds']:.1f} s; the "
          f"analysis added {growth / 2**20:.1f} MiB, allowed {allowed / 2**20:.1f} MiB "
          f"(budget {BUDGET_MB} MiB + solver); a dense D x D float32 matrix needs "
          f"{D * D * 4 / 1e9:.1f} GB")
    assert basis <= growth <= allowed, (growth, basis, allowed)
    assert peak < LIMIT_BYTES, f"peak RSS {peak / 2**30:.2f} GiB >= 2 GiB"
    # the analysis itself is sane
    eig = out["eigval"]
    assert eig == sorted(eig, reverse=True) and eig[0] > 0
    assert max(out["residual"]) < 1e-2
    assert all(c >= 0 for c in out["covar_diag"])


def test_budget_defaults_by_device(monkeypatch):
    """Unset, the budget is 2048 MiB on the CPU and a quarter of a GPU's TOTAL memory
    (not the free memory, which depends on load); a set budget is kept on any device."""
    import torch

    from awch_scale.analysis import memory

    cpu = torch.device("cpu")
    assert memory.budget_mb(None, cpu) == pytest.approx(2048.0)
    assert memory.budget_mb(64, cpu) == pytest.approx(64.0)

    class Props:
        total_memory = 139 * 2**30  # an H200

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    gpu = torch.device("cuda", 0)
    assert memory.budget_mb(None, gpu) == pytest.approx(139 * 1024 / 4)
    assert memory.budget_mb(64, gpu) == pytest.approx(64.0)


def test_provenance_records_budget_and_device_peak(device):
    """The analysis records the budget it planned with, and on a GPU its peak of device
    memory (torch.cuda.max_memory_allocated), positive and below the device's total."""
    import problems
    import torch

    from awch_scale.analysis.checkpoint import analyze_checkpoint

    d = problems.dense_reference(problems.case("fc", "fc2", "ce", 40))
    ds = analyze_checkpoint(d.model, "fc2", d.x, d.y, loss="ce", batch_size=6, k=4,
                            device=device, awd=None, stats=None, spectra=None, fisher=None,
                            suppression=None)
    prov = json.loads(ds.provenance.item())
    if torch.device(device).type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**20
        assert prov["memory_budget_mb"] == pytest.approx(total / 4)
        assert 0 < prov["peak_device_mib"] < total
    else:
        assert prov["memory_budget_mb"] == pytest.approx(2048.0)
        assert "peak_device_mib" not in prov


def test_child_peak_is_its_own():
    """The measurement above reads VmHWM because ``ru_maxrss`` of a child started from a
    large parent keeps the parent's high-water mark (the full suite's pytest process,
    713 MiB, made a 502 MiB child report 713 MiB). Here the parent holds 400 MiB more
    than a bare interpreter: the child's VmHWM stays below it."""
    ballast = bytearray(400 * 2**20)  # zero pages are not resident until written
    ballast[::4096] = b"x" * len(ballast[::4096])
    child = textwrap.dedent("""
        import json, resource
        with open("/proc/self/status") as f:
            hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
        print(json.dumps([hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          timeout=60, check=True)
    del ballast
    hwm_kib, _ = json.loads(proc.stdout)
    assert hwm_kib * 1024 < 200 * 2**20, hwm_kib
