"""Cost of the statistics, Fisher, spectra and suppression stages (issues 8 and 9).

At the paper's shape (FC 784-50-50-10, target fc2, D = 2500, N = 20,000, k = 300, B = 50,
cross-entropy) the full ``analyze_checkpoint`` runs three times side by side, each in its
own worker process (one torch thread): the issue-4 stages (eigen, covariance, AWD), then
with Fisher and statistics, then with everything (spectra and suppression too). Stage
seconds come from the stored ``seconds_*`` variables.

Run: ``python -m benchmarks.bench_stages`` (about 10 minutes here); writes
``benchmarks/results/cpu-stages.json`` and ``.md``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .common import machine_info, run_worker

CONFIGS = {
    "issue 4 stages (eigen, covariance, AWD)": dict(fisher=None, stats=None, spectra=None,
                                                    suppression=None),
    "+ Fisher and statistics (issue 8)": dict(spectra=None, suppression=None),
    "+ spectra and suppression (issue 9)": {},
}


def stage_worker(width: int, n: int, k: int, batch_size: int, stages: dict) -> dict:
    from .bench_analysis import ours_analysis
    from .common import peak_rss_mib

    out = ours_analysis(width, n, k, batch_size, stages=stages)
    out.pop("values", None)
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def main(quick: bool = False) -> dict:
    shape = dict(width=50, n=2000 if quick else 20000, k=60 if quick else 300, batch_size=50)
    results = {"machine": machine_info(), "shape": shape, "runs": {}}
    for label, stages in CONFIGS.items():
        load = os.getloadavg()[0]
        r = run_worker("benchmarks.bench_stages:stage_worker", threads=1, **shape, stages=stages)
        if "error" in r:
            raise RuntimeError(f"{label}: {r['error']}\n{r.get('stderr_tail', '')}")
        r["loadavg_before"] = load
        results["runs"][label] = r
        print(f"{label}: {r['seconds']:.1f} s, peak {r['peak_rss_mib']:.0f} MiB, "
              f"stages {json.dumps({k: round(v, 1) for k, v in r['stage_seconds'].items()})}",
              flush=True)
    base = results["runs"][next(iter(CONFIGS))]["seconds"]
    lines = ["# Cost of the issue 8 and 9 stages (CPU)", "",
             f"Shape: D = {shape['width'] ** 2}, N = {shape['n']}, k = {shape['k']}, "
             f"B = {shape['batch_size']}, cross-entropy; one torch thread per worker; "
             "load average before each run in the last column.", "",
             "| stages | total s | ratio to issue 4 | peak RSS MiB | seconds per stage | load |",
             "| --- | --- | --- | --- | --- | --- |"]
    for label, r in results["runs"].items():
        per = ", ".join(f"{k.removeprefix('seconds_')} {v:.1f}"
                        for k, v in r["stage_seconds"].items())
        lines.append(f"| {label} | {r['seconds']:.1f} | {r['seconds'] / base:.2f} | "
                     f"{r['peak_rss_mib']:.0f} | {per} | {r['loadavg_before']:.1f} |")
    out = Path(__file__).parent / "results"
    suffix = "-quick" if quick else ""
    (out / f"cpu-stages{suffix}.json").write_text(json.dumps(results, indent=1, default=str))
    (out / f"cpu-stages{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
