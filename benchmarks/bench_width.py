"""Every default stage of one analysis at growing width: each stage's seconds and peak
memory, and what they project to at D = 1e8 (issue 18, width on one device).

    python -m benchmarks.bench_width [--widths 1000 2000 4000] [--before COMMIT
                                      [--before-widths 1000 2000]] [--label after]
    python -m benchmarks.bench_width render

FC 784-w-w-10 trained briefly (``common.trained_problem``), target fc2 (D = w^2),
N = 1200, k = n_fit = 50, float32, one thread, every stage at its default
(``analyze_checkpoint``: eigen, covariance, AWD, suppression, Fisher, statistics,
spectra). One process per width; each stage runs under a :class:`common.StagePeak`
(VmHWM reset at its start), so its peak is its own. ``--before COMMIT`` first runs that
commit's ``awch_scale`` (``git archive``) at ``--before-widths``, in the same invocation.

The projection: per stage, the least-squares line of (peak - resident memory before the
analysis) against D over the measured widths, evaluated at D = 1e8. It is an estimate,
labelled so: it assumes the terms that grow with D stay linear in D (the bases, V, the
lifted basis) and the CPU's 2 GiB budget of streamed temporaries; on a GPU the default
budget is a quarter of its memory (about 35 GiB on an H200), which can add up to that
much of budgeted temporaries.

Results: ``results/cpu-width.json`` (rows appended) and ``results/cpu-width.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import REPO, RESULTS, commit_tree, machine_info

OUT_JSON = RESULTS / "cpu-width.json"
OUT_MD = RESULTS / "cpu-width.md"
N, K = 1200, 50
TARGET_D = 1e8
GIB = 2 ** 30


def width_worker(width: int, n: int = N, k: int = K) -> dict:
    """One analysis of the trained FC network at ``width``, stage by stage."""
    import torch

    from awch_scale.analysis import stages
    from awch_scale.analysis.checkpoint import analyze_checkpoint

    from .common import StagePeak, rss_mib, trained_problem

    torch.set_num_threads(1)
    model, x, y = trained_problem(width, n)
    per = {}

    def wrap(name, fn):
        def run(a):
            with StagePeak() as s:
                fn(a)
            per[name] = {"seconds": round(s.seconds, 2), "peak_mib": round(s.peak_mib, 1)}
        return run

    stages.STAGES[:] = [(name, wrap(name, fn)) for name, fn in stages.STAGES]
    base = rss_mib()
    t0 = time.perf_counter()
    ds = analyze_checkpoint(model, "fc2", x, y, loss="ce", batch_size=50,
                            settings={"k": k, "n_fit": k}, progress=False, threads=1)
    prov = json.loads(str(ds.provenance.values))
    gamma = {str(e): float(g) for e, g in zip(ds.estimator.values, ds.gamma.values,
                                               strict=True)}
    return {"width": width, "D": width * width, "N": n, "k": k, "base_mib": round(base, 1),
            "seconds": round(time.perf_counter() - t0, 1), "stages": per,
            "eigen_method": prov.get("eigen_choice", {}).get("method"),
            "gamma": {key: gamma[key] for key in ("covar", "h2") if key in gamma}}


def _run(width: int, tree: Path | None) -> dict:
    """:func:`width_worker` in a fresh process; with ``tree``, importing its
    ``awch_scale`` (the working directory comes first on ``python -m``'s path)."""
    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "benchmarks.worker", "benchmarks.bench_width:width_worker",
           json.dumps({"width": width}), out]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree or REPO, env=env, capture_output=True, text=True)
    try:
        if proc.returncode != 0:
            return {"width": width, "D": width * width,
                    "error": proc.stderr.strip()[-2000:] or f"exit {proc.returncode}"}
        row = json.loads(Path(out).read_text())
    finally:
        Path(out).unlink(missing_ok=True)
    row["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return row


def projection(rows: list[dict]) -> dict:
    """Per stage: bytes per D (the slope) and the projected GiB above the resident memory
    at D = 1e8, from the least-squares line over the rows' D (at least two widths)."""
    ok = [r for r in rows if "error" not in r]
    if len({r["D"] for r in ok}) < 2:
        return {}
    out = {}
    for stage in ok[0]["stages"]:
        D = np.array([r["D"] for r in ok], dtype=float)
        above = np.array([(r["stages"][stage]["peak_mib"] - r["base_mib"]) * 2**20
                          for r in ok])
        slope, intercept = np.polyfit(D, above, 1)
        out[stage] = {"bytes_per_D": round(float(slope), 1),
                      "projected_gib_at_1e8": round(float(slope * TARGET_D + intercept) / GIB,
                                                    1)}
    return out


def render() -> str:
    rows = json.loads(OUT_JSON.read_text())
    out = ["# Width scaling of the default analysis (CPU), with a projection to D = 1e8", "",
           "Generated by `python -m benchmarks.bench_width render` from cpu-width.json; "
           "how it runs: the module docstring of benchmarks/bench_width.py. Memory is the "
           "peak resident memory of each stage above the process's resident memory before "
           "the analysis (MiB).", ""]
    for run in rows:
        out.append(f"## {run['label']}: awch_scale of {run['tree']} (commit "
                   f"{run['git_commit']}, load {run['loadavg_start'][0]:.1f} on 2 cores)\n")
        ok = [r for r in run["rows"] if "error" not in r]
        for r in run["rows"]:
            if "error" in r:
                out.append(f"width {r['width']}: error `{r['error'][-300:]}`\n")
        if not ok:
            continue
        names = list(ok[0]["stages"])
        out.append("| width | D | " + " | ".join(f"{s} s / MiB" for s in names)
                   + " | analysis s | gamma_emp | gamma_AWD |")
        out.append("|---" * (len(names) + 5) + "|")
        for r in ok:
            cells = [f"{r['stages'][s]['seconds']} / "
                     f"{r['stages'][s]['peak_mib'] - r['base_mib']:.0f}" for s in names]
            g = r.get("gamma", {})
            out.append(f"| {r['width']} | {r['D']:.1e} | " + " | ".join(cells)
                       + f" | {r['seconds']} | {g.get('covar', float('nan')):.4f} | "
                       f"{g.get('h2', float('nan')):.4f} |")
        proj = run.get("projection") or {}
        if proj:
            out.append("\n**Estimate** (not measured): the least-squares line of each "
                       "stage's peak above the resident memory against D, at D = 1e8 "
                       "(float32 model, k = 50, the CPU's 2 GiB budget of streamed "
                       "temporaries; a GPU's default budget, a quarter of its memory, can "
                       "add up to that much):\n")
            out.append("| stage | bytes per D | projected GiB at D = 1e8 |\n|---|---|---|")
            out += [f"| {s} | {p['bytes_per_D']} | {p['projected_gib_at_1e8']} |"
                    for s, p in proj.items()]
        out.append("")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", nargs="?", default="run", choices=["run", "render"])
    ap.add_argument("--widths", type=int, nargs="+", default=[1000, 2000, 4000])
    ap.add_argument("--before", default=None)
    ap.add_argument("--before-widths", type=int, nargs="+", default=[1000, 2000])
    ap.add_argument("--label", default="after")
    args = ap.parse_args(argv)
    if args.kind == "run":
        info = machine_info()
        runs = []
        tmp = tempfile.mkdtemp(prefix="bench-width-")
        try:
            plan = ([("before", args.before, args.before_widths)] if args.before else [])
            plan.append((args.label, None, args.widths))
            for label, commit, widths in plan:
                tree = commit_tree(commit, tmp) if commit else None
                rows = []
                for w in widths:
                    print(f"{label}: width {w} ...", flush=True)
                    rows.append(_run(w, tree))
                    print(json.dumps(rows[-1])[:600], flush=True)
                runs.append({"label": label, "tree": commit or "HEAD", "rows": rows,
                             "projection": projection(rows), **info,
                             "loadavg_end": list(os.getloadavg())})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        old = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else []
        OUT_JSON.write_text(json.dumps(old + runs, indent=1, default=float) + "\n")
    OUT_MD.write_text(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
