"""analyze_checkpoint never forms a D x D matrix: peak memory at D = 160,000.

A child process (so its peak RSS is its own) analyses
Sequential(flatten, fc1 Linear(20, 400), relu, fc2 Linear(400, 400), relu,
out Linear(400, 10)) on N = 256 random samples with target fc2 (D = 400 * 400),
k = 4, float32, chunk_size 64, eigsh tol 1e-3, and prints its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, KiB on Linux). A dense D x D float32
matrix would need D^2 * 4 bytes = 102.4 GB; the child must stay below 2 GiB.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, resource, time
    import numpy as np
    import torch
    from torch import nn
    from awch_scale.analysis.checkpoint import analyze_checkpoint

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc1", nn.Linear(20, 400, bias=False))
    model.add_module("act1", nn.ReLU())
    model.add_module("fc2", nn.Linear(400, 400, bias=False))
    model.add_module("act2", nn.ReLU())
    model.add_module("out", nn.Linear(400, 10, bias=False))
    x = torch.randn(256, 20)
    y = torch.randint(0, 10, (256,))
    t0 = time.perf_counter()
    ds = analyze_checkpoint(model, "fc2", x, y, loss="ce", batch_size=32, k=4,
                            device="cpu", chunk_size=64, eigen={"tol": 1e-3}, awd=None,
                            fisher=None, stats=None, spectra=None)
    print(json.dumps({
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "D": int(ds.attrs["D"]),
        "dtype": ds.attrs["dtype"],
        "seconds": time.perf_counter() - t0,
        "eigval": ds.hess_eigval.values.tolist(),
        "residual": ds.hess_residual.values.tolist(),
        "covar_diag": np.diag(ds.covar.values).tolist(),
    }))
    """
)

LIMIT_BYTES = 2 * 1024**3


@pytest.mark.slow
def test_peak_memory_far_below_dense():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    D = out["D"]
    assert D == 160_000 and out["dtype"] == "float32"
    peak = out["maxrss_kib"] * 1024
    dense = D * D * 4
    print(f"\nD = {D}: peak RSS {peak / 2**20:.0f} MiB in {out['seconds']:.1f} s; "
          f"a dense D x D float32 matrix needs {dense / 1e9:.1f} GB")
    assert peak < LIMIT_BYTES, f"peak RSS {peak / 2**30:.2f} GiB >= 2 GiB"
    assert dense > 40 * LIMIT_BYTES  # 102.4 GB vs 2 GiB
    # the analysis itself is sane
    eig = out["eigval"]
    assert eig == sorted(eig, reverse=True) and eig[0] > 0
    assert max(out["residual"]) < 1e-2
    assert all(c >= 0 for c in out["covar_diag"])
