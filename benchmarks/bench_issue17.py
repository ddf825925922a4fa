"""Benchmark of issue 17: the spectra stage at D = 1e6 against the eigen stage, before and
after, side by side; the Table-1 shape; two runs of one recipe compared.

    python -m benchmarks.bench_issue17 wide --before COMMIT [--label after] [--width 1000]
    python -m benchmarks.bench_issue17 table1 [--label after] [--mnist ROOT] [--before COMMIT]
    python -m benchmarks.bench_issue17 repeat [--width 1000]
    python -m benchmarks.bench_issue17 parts [key=value ...]      (spectra stage alone)
    python -m benchmarks.bench_issue17 products                   (product timings)
    python -m benchmarks.bench_issue17 render

- ``wide``: ``awch-scale analyze`` of ``recipes/quickstart.yaml`` widened as in the issue
  (``model.width`` 1000, so D = 1e6; ``analysis.k`` 50, ``n_fit`` 50, ``train.epochs`` 1,
  one seed, N = 1200; device cpu, one thread), in its own process under
  ``/usr/bin/time -v`` (peak RSS and CPU seconds of the whole command: training and
  analysis). With ``--before COMMIT`` that commit's ``awch_scale`` (``git archive``) runs
  first, then this tree's, in one invocation. Recorded: wall time, the store's per-stage
  seconds (``seconds_*``), their sum (the analysis time), the spectra stage's sub-stage
  seconds, products and routes (provenance ``spectra_seconds``, ``spectra_products``,
  ``spectra_routes``; the first two absent before issue 17) and the values' heads.
- ``table1``: ``recipes/table1/mnist_mlp_ce_c10.yaml`` (D = 2500, N = 20,000, k = 1000,
  every stage on) on a 784-dim Gaussian mixture, 5 epochs; with ``--mnist ROOT`` the
  recipe itself on the MNIST files under ``ROOT`` (``ROOT/MNIST/raw``), seed 0, its 100
  epochs. ``--before COMMIT`` runs that commit's ``awch_scale`` first, as for ``wide``.
  Also recorded: the paper's named gammas (``gamma_emp``, ``gamma_AWD``, ...).
- ``repeat``: the quickstart recipe shortened (one seed, 10 epochs, D = 1024; or widened
  with ``--width``) analysed twice **at the same time** (two processes, so each runs on a
  loaded machine), and the largest relative difference of every spectra variable between
  the two stores (to the variable's largest magnitude), NaN positions compared too.
- ``parts``, ``products``: the measurements the defaults were chosen by (the spectra
  stage alone on the widened checkpoint with given settings; single and block products
  of H, M and H_p, the Gram route's pieces, eigh of 1000-4000).
- ``render``: benchmarks/results/cpu-spectra-issue17.md from the JSON.

Results are appended to benchmarks/results/cpu-spectra-issue17.json (one row per run,
with its label, the commit and the machine's load).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from .common import REPO, RESULTS, commit_tree, machine_info

QUICKSTART = REPO / "recipes" / "quickstart.yaml"
OUT_JSON = RESULTS / "cpu-spectra-issue17.json"
OUT_MD = RESULTS / "cpu-spectra-issue17.md"
SPECTRA = ("m_eigval", "c_eigval", "hp_eigval_top", "hp_eigval_bottom", "principal_cos",
           "hc_principal_cos", "comm_full", "comm_full_se", "hess_trace", "hess_trace_se",
           "density", "density_grid", "density_m", "density_hp")


def recipe(overrides: dict, store: str, base: Path = QUICKSTART) -> str:
    """The ``base`` recipe with dotted-key ``overrides``, on the CPU, into ``store``."""
    raw = yaml.safe_load(base.read_text())
    if overrides.get("data.dataset") == "gauss":
        raw["data"].pop("root", None)
        raw["data"].pop("download", None)
    for key, value in {**overrides, "device": "cpu", "store": store}.items():
        *parents, last = key.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return yaml.safe_dump(raw, sort_keys=False)


TABLE1 = REPO / "recipes" / "table1" / "mnist_mlp_ce_c10.yaml"
TABLE1_SYNTHETIC = {"data.dataset": "gauss", "data.gauss": {"dim": 784, "separation": 3.0},
                    "train.epochs": 5, "runs.seeds": [0], "analysis.epochs": [5]}
"""recipes/table1/mnist_mlp_ce_c10.yaml (D = 2500, N = 20,000, k = 1000) on a 784-dim
Gaussian mixture instead of MNIST (no MNIST files here), trained 5 epochs, not 100."""

TABLE1_MNIST = {"runs.seeds": [0]}
"""recipes/table1/mnist_mlp_ce_c10.yaml as written, one seed (``data.root`` is set by
``--mnist``)."""

WIDE = {"model.width": 1000, "analysis.k": 50, "analysis.n_fit": 50, "train.epochs": 1,
        "runs.seeds": [0], "analysis.epochs": [1]}
SHORT = {"train.epochs": 10, "runs.seeds": [0], "analysis.epochs": [10]}


def _start(text: str, tmp: str, name: str, threads: int = 1,
           tree: Path = REPO) -> tuple[subprocess.Popen, str]:
    """``awch-scale analyze`` of ``text`` under ``/usr/bin/time -v``, importing the
    ``awch_scale`` of ``tree`` (the working directory comes first on ``python -m``'s
    path)."""
    path = os.path.join(tmp, f"{name}.yaml")
    Path(path).write_text(text)
    log = os.path.join(tmp, f"{name}.time")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(tree)}
    cmd = ["/usr/bin/time", "-v", "-o", log, sys.executable, "-m", "awch_scale", "analyze",
           path, "-q", "--threads", str(threads)]
    return subprocess.Popen(cmd, env=env, cwd=tree, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True), log


def _finish(proc: subprocess.Popen, log: str, t0: float) -> dict:
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    res = {"wall_seconds": round(wall, 1), "returncode": proc.returncode}
    text = Path(log).read_text() if os.path.exists(log) else ""
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        res["peak_rss_gib"] = round(int(m.group(1)) / 2**20, 3)
    cpu = [float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", text)]
    if cpu:
        res["cpu_seconds"] = round(sum(cpu), 1)
    if proc.returncode != 0:
        res["error"] = out[-3000:]
    return res


def _store(path: str) -> dict:
    """Per-stage seconds, the analysis time, the spectra sub-stage seconds and values."""
    import xarray as xr

    ds = xr.open_zarr(path, consolidated=False).load()
    stages = {str(v).removeprefix("seconds_"): round(float(np.nansum(ds[v].values)), 2)
              for v in ds.data_vars if str(v).startswith("seconds_")}
    prov = json.loads(str(np.ravel(ds.provenance.values)[0]))
    values = {}
    for name in SPECTRA:
        if name in ds and not name.startswith("density"):
            v = np.ravel(ds[name].values).astype(np.float64)
            values[name] = [None if not np.isfinite(x) else float(x) for x in v[:8]]
    from awch_scale.variables import GAMMA_ROLES

    gammas = {}
    if "gamma" in ds and "estimator" in ds.gamma.dims:
        for role, est in GAMMA_ROLES.items():
            if est in ds.estimator.values:
                g = np.ravel(ds.gamma.sel(estimator=est).values).astype(np.float64)
                gammas[role] = [None if not np.isfinite(x) else round(float(x), 6)
                                for x in g]
    return {"gamma": gammas, "stage_seconds": stages,
            "analysis_seconds": round(sum(stages.values()), 1),
            "spectra_seconds": prov.get("spectra_seconds"),
            "spectra_notes": prov.get("spectra_notes"), "values": values,
            "spectra_products": prov.get("spectra_products"),
            "spectra_routes": prov.get("spectra_routes"), "n_hvp": int(np.ravel(
                ds.n_hvp.values)[0]) if "n_hvp" in ds else None}


def wide(label: str, width: int = 1000, commit: str | None = None,
         table1: bool = False, mnist: str | None = None) -> dict:
    """One widened quickstart analysis (see the module docstring), with this tree's
    ``awch_scale`` or that of ``commit``; ``table1``: the Table-1 shape instead
    (:data:`TABLE1_SYNTHETIC`, or with ``mnist`` the recipe on MNIST under that root)."""
    tmp = tempfile.mkdtemp(prefix="bench17-")
    try:
        tree = REPO if commit is None else commit_tree(commit, tmp)
        store = os.path.join(tmp, "wide.zarr")
        if mnist:
            text = recipe({**TABLE1_MNIST, "data.root": str(Path(mnist).resolve())},
                          store, TABLE1)
        elif table1:
            text = recipe(TABLE1_SYNTHETIC, store, TABLE1)
        else:
            text = recipe({**WIDE, "model.width": width}, store)
        t0 = time.perf_counter()
        proc, log = _start(text, tmp, "wide", tree=tree)
        res = _finish(proc, log, t0)
        if "error" not in res:
            res.update(_store(store))
            st = res["stage_seconds"]
            res["spectra_over_eigen"] = round(st.get("spectra", np.nan) / st["eigen"], 2)
        return {"kind": "wide", "label": label, "width": 50 if table1 else width,
                "D": 2500 if table1 else width * width, "tree": commit or "HEAD",
                "shape": ("table1-mnist" if mnist else "table1-synthetic" if table1
                          else "quickstart-wide"), **res}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _difference(a_path: str, b_path: str) -> dict:
    import xarray as xr

    a = xr.open_zarr(a_path, consolidated=False).load()
    b = xr.open_zarr(b_path, consolidated=False).load()
    out = {}
    for name in SPECTRA:
        if name not in a:
            continue
        x, y = a[name].values.astype(np.float64), b[name].values.astype(np.float64)
        if not np.array_equal(np.isnan(x), np.isnan(y)):
            out[name] = "NaN positions differ"
            continue
        scale = np.nanmax(np.abs(x)) if np.isfinite(x).any() else 0.0
        out[name] = float(np.nanmax(np.abs(x - y)) / scale) if scale > 0 else 0.0
    return out


def repeat(label: str, width: int | None = None) -> dict:
    """Two simultaneous analyses of the shortened quickstart (``width``: of the widened
    one instead), compared."""
    tmp = tempfile.mkdtemp(prefix="bench17-")
    over = SHORT if width is None else {**WIDE, "model.width": width}
    try:
        stores = [os.path.join(tmp, f"r{i}.zarr") for i in (0, 1)]
        t0 = time.perf_counter()
        jobs = [_start(recipe(over, s), tmp, f"r{i}") for i, s in enumerate(stores)]
        runs = [_finish(p, log, t0) for p, log in jobs]
        res = {"kind": "repeat", "label": label, "overrides": over, "runs": runs}
        if not any("error" in r for r in runs):
            for r, s in zip(runs, stores, strict=True):
                r.update(_store(s))
            res["max_rel_diff"] = _difference(*stores)
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _append(row: dict) -> None:
    rows = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else []
    rows.append(row)
    OUT_JSON.write_text(json.dumps(rows, indent=1, default=float) + "\n")


def render() -> str:
    """Markdown of every row of the JSON (newest last)."""
    rows = json.loads(OUT_JSON.read_text())
    out = ["# Spectra stage (issue 17), CPU", "",
           "Generated by `python -m benchmarks.bench_issue17 render` from "
           "cpu-spectra-issue17.json; the head of each section says how it was run.", ""]
    out += _summary(rows)
    for r in rows:
        load = f"load {r['loadavg_start'][0]:.1f} (2 cores), commit {r['git_commit']}"
        if r["kind"] == "wide":
            shape = {"table1-synthetic": "Table-1 shape on a Gaussian mixture (D = 2500, "
                                         "N = 20,000, k = 1000)",
                     "table1-mnist": "recipes/table1/mnist_mlp_ce_c10.yaml on MNIST, seed "
                                     "0 (D = 2500, N = 20,000, k = 1000, 100 epochs)",
                     }.get(r.get("shape"), "widened quickstart")
            size = f"{r['D']:,}" if r["D"] < 1e5 else f"{r['D']:.0e}"
            out.append(f"## {r['label']}: {shape}, D = {size}, one thread ({load})\n")
            if "error" in r:
                out.append(f"error: {r['error'][-500:]}\n")
                continue
            tree = r.get("tree", r["git_commit"])
            out.append(f"awch_scale of {tree}: wall {r['wall_seconds']} s "
                       f"(training included; CPU {r.get('cpu_seconds')} s), analysis "
                       f"{r['analysis_seconds']} s, peak RSS {r.get('peak_rss_gib')} GiB, "
                       f"spectra / eigen = **{r['spectra_over_eigen']}**\n")
            out.append("| stage | seconds |\n|---|---|")
            out += [f"| {k} | {v} |" for k, v in r["stage_seconds"].items()]
            if r.get("spectra_seconds"):
                prods, routes = r.get("spectra_products") or {}, r.get("spectra_routes") or {}
                out.append("\n| spectra sub-stage | seconds | products | route |\n"
                           "|---|---|---|---|")
                out += [f"| {k} | {v} | {prods.get(k, '')} | {routes.get(k, '')} |"
                        for k, v in r["spectra_seconds"].items()]
                if r.get("n_hvp"):
                    out.append(f"\neigen stage: {r['n_hvp']} products")
            if r.get("gamma"):
                out.append("\ngammas: " + ", ".join(f"{k} {v}" for k, v in r["gamma"].items()))
            if r.get("spectra_notes"):
                out.append(f"\nnotes: {r['spectra_notes']}")
            if r.get("note"):
                out.append(f"\n**{r['note']}**")
            out.append("")
        elif r["kind"] == "parts":
            out.append(f"## spectra stage alone, D = {r['D']:.0e}, r = {r['r']}, settings "
                       f"{r['settings']} ({load})\n")
            out.append(f"{r['seconds']} s (eigen stage {r['eigen_seconds']} s, "
                       f"{r['eigen_products']} products), peak RSS {r['peak_rss_mib']} MiB; "
                       f"routes {r.get('spectra_routes')}; notes {r.get('spectra_notes')}\n")
            out.append("| sub-stage | seconds |\n|---|---|")
            out += [f"| {k} | {v} |" for k, v in r["spectra_seconds"].items()]
            out.append("")
        elif r["kind"] == "products":
            out.append(f"## products at D = {r['D']:.0e}, N = {r['N']}, one thread ({load})\n")
            out.append("| quantity | seconds |\n|---|---|")
            out += [f"| {k} | {v} |" for k, v in r.items()
                    if k.endswith(("_m1", "_m10", "_m32")) or k.endswith("seconds")]
            out.append("")
        elif r["kind"] == "repeat":
            out.append(f"## {r['label']}: two simultaneous runs of the quickstart with "
                       f"{r.get('overrides', SHORT)} ({load})\n")
            if "max_rel_diff" not in r:
                out.append("error: " + "; ".join(x.get("error", "")[-300:] for x in r["runs"]))
                continue
            out.append("| variable | max relative difference |\n|---|---|")
            out += [f"| {k} | {v if isinstance(v, str) else f'{v:.1e}'} |"
                    for k, v in r["max_rel_diff"].items()]
            out.append("")
    return "\n".join(out) + "\n"


def _summary(rows: list[dict]) -> list[str]:
    """The newest before/after pairs (measured in one run, ``--before``) of the widened
    quickstart and of the Table-1 recipe on MNIST, side by side."""
    return [*_pair(rows, "quickstart-wide", "D = 1e6"),
            *_pair(rows, "table1-mnist", "recipes/table1/mnist_mlp_ce_c10.yaml on MNIST, "
                   "seed 0")]


def _pair(rows: list[dict], shape: str, title: str) -> list[str]:
    wide_rows = [r for r in rows if r["kind"] == "wide" and "error" not in r
                 and r.get("shape", "quickstart-wide") == shape]
    pairs = [(a, b) for a, b in zip(wide_rows, wide_rows[1:], strict=False)
             if a["label"] == "before" and b["label"] == "after"]
    if not pairs:
        return []
    a, b = pairs[-1]
    out = [f"## Summary: {title}, before ({a['tree']}) and after ({b['git_commit']}), one "
           f"run, one thread (load {a['loadavg_start'][0]:.1f} at the start)", "",
           "| quantity | before | after |", "|---|---|---|"]
    for name, key in [("analysis seconds (sum of stages)", "analysis_seconds"),
                      ("wall seconds of the command (training included)", "wall_seconds"),
                      ("CPU seconds of the command", "cpu_seconds"),
                      ("peak RSS GiB", "peak_rss_gib"),
                      ("spectra / eigen", "spectra_over_eigen")]:
        out.append(f"| {name} | {a.get(key)} | {b.get(key)} |")
    for stage in b["stage_seconds"]:
        out.append(f"| seconds_{stage} | {a['stage_seconds'].get(stage)} | "
                   f"{b['stage_seconds'][stage]} |")
    for role in b.get("gamma") or {}:
        out.append(f"| {role} | {(a.get('gamma') or {}).get(role)} | {b['gamma'][role]} |")
    parts = list(dict.fromkeys([*a.get("spectra_seconds", {}), *b.get("spectra_seconds", {})]))
    for part in parts:
        out.append(f"| spectra: {part} | {a['spectra_seconds'].get(part, '-')} | "
                   f"{b['spectra_seconds'].get(part, '-')} |")
    return out + [""]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["wide", "table1", "repeat", "render", "products",
                                     "parts"])
    ap.add_argument("settings", nargs="*", help="parts: key=value of spectra_variables")
    ap.add_argument("--label", default="after")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--before", default=None,
                    help="wide, table1: first run this commit's awch_scale, then this tree's")
    ap.add_argument("--mnist", default=None,
                    help="table1: the recipe on the MNIST files under this data.root")
    args = ap.parse_args(argv)
    if args.kind != "render":
        info = machine_info()
        if args.kind in ("products", "parts"):
            import torch

            torch.set_num_threads(1)
            kw = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args.settings)}
            width = args.width or 1000
            from .bench_issue17_parts import products, spectra_parts

            row = products(width) if args.kind == "products" else spectra_parts(width, **kw)
            rows = [row]
        elif args.kind == "wide":
            rows = [] if args.before is None else [wide("before", args.width or 1000,
                                                        args.before)]
            rows.append(wide(args.label, args.width or 1000))
        elif args.kind == "table1":
            rows = [] if args.before is None else [
                wide("before", commit=args.before, table1=True, mnist=args.mnist)]
            rows.append(wide(args.label, table1=True, mnist=args.mnist))
        else:
            rows = [repeat(args.label, args.width)]
        for row in rows:
            row.update(info, loadavg_end=list(os.getloadavg()))
            print(json.dumps({k: v for k, v in row.items() if k != "versions"}, default=float))
            _append(row)
    OUT_MD.write_text(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
