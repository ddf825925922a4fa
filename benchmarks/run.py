"""Run the benchmarks and write ``benchmarks/results/cpu.json`` and ``cpu.md``.

    python -m benchmarks.run                 # full suite (about 35-40 min on 2 cores)
    python -m benchmarks.run --quick         # smoke-sized (under 2 min); writes cpu-quick.*
    python -m benchmarks.run --only eigen    # one benchmark, merged into the existing JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as ``python benchmarks/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import (  # noqa: E402
    bench_analysis,
    bench_eigen,
    bench_hvp,
    bench_issue10,
    bench_scaling,
)
from benchmarks.common import RESULTS, machine_info, run_inline, run_worker  # noqa: E402
from benchmarks.report import render  # noqa: E402

BENCHMARKS = {"hvp": bench_hvp, "eigen": bench_eigen, "analysis": bench_analysis,
              "scaling": bench_scaling, "issue10": bench_issue10}

FULL = {
    "hvp": dict(width=50, n=20000, m=32, repeats=5, timeout=1200, threads_alt=2),
    "eigen": dict(width=50, n=20000, ks=[20, 100, 300], n_sub=2000, repeats=3, timeout=900,
                  curvlinops_full_k=300, pyhessian_full_k=20, loose_tol=1e-2,
                  pyhessian_tight=dict(tol=1e-6, max_iter=1000)),
    "analysis": dict(width=50, n=20000, k=300, batch_size=50, n_sub=512, repeats=3,
                     timeout=1800),
    "scaling": dict(widths=[50, 100, 200, 400, 1000], n=2000, k=50, batch_size=50,
                    timeout=3600),
    "issue10": dict(widths=[1000], timeout=3600),
}
QUICK = {
    "hvp": dict(width=20, n=1000, m=8, repeats=1, timeout=300, threads_alt=None),
    "eigen": dict(width=20, n=1000, ks=[10], n_sub=100, repeats=1, timeout=300,
                  curvlinops_full_k=10, pyhessian_full_k=10, loose_tol=1e-2,
                  pyhessian_tight=dict(tol=1e-6, max_iter=1000)),
    "analysis": dict(width=20, n=600, k=20, batch_size=20, n_sub=200, repeats=1, timeout=300),
    "scaling": dict(widths=[10, 20], n=500, k=10, batch_size=50, timeout=300),
    "issue10": dict(widths=[20], timeout=300),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-sized run (cpu-quick.*)")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append",
                        help="run only this benchmark (repeatable); merged into the JSON")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch/OpenMP threads of every worker process (default 1)")
    parser.add_argument("--out", default=None, help="output stem (default results/cpu)")
    args = parser.parse_args(argv)

    cfg = QUICK if args.quick else FULL
    stem = args.out or str(RESULTS / ("cpu-quick" if args.quick else "cpu"))
    path_json = f"{stem}.json"
    results = {}
    if args.only and os.path.exists(path_json):
        with open(path_json) as f:
            results = json.load(f)
    results.setdefault("benchmarks", {})
    results["machine"] = machine_info()
    results["config"] = {**results.get("config", {}), **cfg, "threads": args.threads,
                         "quick": args.quick, "isolated_processes": not args.quick}
    # --quick runs every method in this process: one start-up (~10-20 s here) instead of one
    # per method, so that the smoke run stays under 2 minutes.
    worker = partial(run_inline if args.quick else run_worker, threads=args.threads)
    for name in args.only or list(BENCHMARKS):
        t0, load0 = time.perf_counter(), list(os.getloadavg())
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        res = BENCHMARKS[name].run(cfg, worker)
        res["loadavg_start"] = load0
        res["git_commit"] = results["machine"]["git_commit"]
        res["suite_seconds"] = time.perf_counter() - t0
        res["loadavg_end"] = list(os.getloadavg())
        results["benchmarks"][name] = res
        print(f"[benchmarks] {name}: {res['suite_seconds']:.0f} s", file=sys.stderr, flush=True)
        _write(results, stem)
    _write(results, stem)
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return 0


def _write(results: dict, stem: str) -> None:
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    with open(f"{stem}.json", "w") as f:
        json.dump(results, f, indent=1)
    with open(f"{stem}.md", "w") as f:
        f.write(render(results))


if __name__ == "__main__":
    sys.exit(main())
