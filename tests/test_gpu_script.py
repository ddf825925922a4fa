"""The GPU check (benchmarks/gpu.py) as a smoke test: ``--quick --device cpu`` runs every
step's code path at tiny sizes in one process, and its runner records failures and
time-outs instead of stopping.

With ``--device cpu`` step (a) compares two CPU stores of the same recipe, so every
science variable must agree exactly: the analysis is deterministic (issue 18).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def test_quick_cpu_smoke(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--quick", "--device",
                           "cpu", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert time.perf_counter() - t0 < 300
    assert "done:" in done.stdout and "start (limit" in done.stdout  # progress printed
    report = json.loads((tmp_path / "gpu.json").read_text())
    md = (tmp_path / "gpu.md").read_text()
    steps = report["steps"]
    assert report["device"] == "cpu" and report["quick"]
    names = ["quickstart on cpu", "quickstart on cpu (reference)", "D = 100 (width 10)",
             "floor at D = 100 (width 10)", "D = 144 (width 12)", "D = 196 (width 14)",
             "peers: the FC model (CPU training, cached)", "peers: awch-scale"]
    for name in names:
        assert steps[name]["status"] == "ok", (name, steps[name])
        assert name in md
    table1 = next(n for n in steps if n.startswith("Table-1"))
    assert steps[table1]["status"] == "skipped" and "--quick" in steps[table1]["reason"]
    # (a) the same recipe twice on the CPU: identical numbers
    cmp = report["device_vs_cpu"]
    assert cmp["n_variables"] > 20 and cmp["max_rel_diff"] == 0.0
    assert cmp["gamma_max_rel_diff"] == 0.0
    # (b) per-stage seconds from the store, the solver's choice from provenance
    width = steps["D = 100 (width 10)"]["result"]
    assert set(width["stage_seconds"]) >= {"eigen", "covariance", "awd", "spectra"}
    assert width["eigen_choice"]["D"] == 100 and width["eigen_choice"]["method"] == "lanczos"
    # (c) the floor: n_hvp x one product, from the width step's own store
    floor = steps["floor at D = 100 (width 10)"]["result"]
    assert floor["trained"] and floor["store_n_hvp"] == width["n_hvp"]
    assert floor["floor_s"] == floor["n_products"] * floor["t_product_s"] > 0
    assert 0 < floor["product_share"] <= 1 and floor["lanczos_products"] > 0
    prof = floor["profile"]  # the profiled rerun: host reads and the busiest operators
    assert prof["n_products"] == floor["n_products"] and prof["host_reads"] > 0
    assert prof["host_reads_per_product"] <= 3 and len(prof["top"]) > 3
    assert "Profiled rerun" in md
    # (d) each method's error against the float64 ARPACK reference
    assert steps["peers: awch-scale"]["result"]["error"] < 1e-5
    for module, name in (("curvlinops", "peers: curvlinops + eigsh"),
                         ("pyhessian", "peers: PyHessian (defaults: tol 1e-3, 100 iterations)")):
        rec = steps[name]
        if importlib.util.find_spec(module) is None:
            assert rec["status"] == "skipped" and "not installed" in rec["reason"]
        else:
            assert rec["status"] == "ok" and 0 <= rec["result"]["error"] < 0.5
    assert "Floor = n_hvp x t_1" in md and "error vs reference" in md


def test_the_runner_records_failures_and_timeouts():
    """A step that raises is ``failed`` with its last output; one past its limit is
    killed and ``timeout``; the script goes on either way (no exception here)."""
    from benchmarks.gpu import Job, run_inline

    failed = Job("benchmarks.gpu_steps:recipe_worker", {"text": "x"}, 120, "bad").wait()
    assert failed["status"] == "failed" and "TypeError" in failed["tail"][-1]
    slow = Job("benchmarks.gpu_steps:peers_model", {"width": 10, "n": 200}, 0.5, "slow").wait()
    assert slow["status"] == "timeout" and slow["seconds"] < 60
    rec = run_inline("benchmarks.gpu_steps:recipe_worker", {"text": "x"}, 60)
    assert rec["status"] == "failed" and "TypeError" in rec["error"]


def test_watch_says_where_the_main_thread_is():
    from benchmarks.gpu_steps import Watch

    out = io.StringIO()
    with contextlib.redirect_stdout(out), Watch("cpu", every=0.05) as watch:
        time.sleep(0.3)
    assert "[where]" in out.getvalue() and "test_watch_says_where" in out.getvalue()
    assert watch.peak_bytes is None  # no CUDA device: no device peak


def test_recipe_overrides():
    import yaml

    from benchmarks.gpu import QUICKSTART, recipe_text

    raw = yaml.safe_load(recipe_text(QUICKSTART, {"model.width": 1000, "analysis.k": 50,
                                                  "store": "/tmp/x.zarr"}))
    assert raw["model"]["width"] == 1000 and raw["analysis"]["k"] == 50
    assert raw["store"] == "/tmp/x.zarr" and raw["loss"] == "ce"
