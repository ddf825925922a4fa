"""awd_analysis on a D = 160,000 Linear layer stays far from D x D memory.

Runs in a fresh subprocess so that its peak resident memory (``VmHWM`` of
``/proc/self/status``, KiB; not ``ru_maxrss``, which keeps the forked pytest parent's
high-water mark and then hides the growth) measures this analysis alone. A dense D x D
float32 matrix would be D^2 * 4 bytes = 102 GB; the bounds asserted are 2 GiB for the
whole process (torch included, observed ~490 MiB) and 512 MiB of growth during
``awd_analysis``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, time
    import numpy as np, torch
    from collections import OrderedDict
    from torch import nn
    from awch_scale.analysis.awd import awd_analysis
    from awch_scale.model.problem import make_problem

    torch.manual_seed(0)
    width, N, k = 400, 256, 4
    model = nn.Sequential(OrderedDict(
        fc=nn.Linear(width, width, bias=False), act=nn.Tanh(),
        out=nn.Linear(width, 10, bias=False))).double()
    x = torch.randn(N, width, dtype=torch.float64)
    y = torch.arange(N) % 10
    problem = make_problem(model, "fc", x, y, "ce", dtype=torch.float64, chunk_size=64)
    V = torch.linalg.qr(torch.randn(problem.D, k, dtype=torch.float64))[0]
    def status_kib(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))

    before = status_kib("VmRSS")
    t0 = time.perf_counter()
    ds = awd_analysis(problem, V, np.array([4.0, 3.0, 2.0, 1.0]), batch_size=20, n_draws=4,
                      n_probe=4, n_partner_batches=2, seed=0, store_probe_spectra=True)
    seconds = time.perf_counter() - t0
    peak = status_kib("VmHWM")
    ok = all(np.isfinite(ds[n].values).all() for n in ("c_hh", "c_pair", "h2", "c_li"))
    print(json.dumps(dict(D=problem.D, peak_kib=peak, before_kib=before, seconds=seconds,
                          timings={a: v for a, v in ds.attrs.items() if "seconds" in a},
                          finite=bool(ok), kappa_shape=list(ds.kappa.shape))))
    """
)


def test_large_linear_layer_peak_memory():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=300, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["D"] == 160_000 and res["finite"] and res["kappa_shape"] == [4, 400]
    peak_bytes = res["peak_kib"] * 1024
    assert peak_bytes < 2 * 1024**3, res
    # growth during awd_analysis (observed ~140 MiB): a (64, D) float64 chunk is 78 MiB
    assert (res["peak_kib"] - res["before_kib"]) * 1024 < 512 * 1024**2, res
