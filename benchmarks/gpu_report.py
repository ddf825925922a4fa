"""gpu.md from the record of ``python -m benchmarks.gpu`` (:func:`render`)."""

from __future__ import annotations

GIB = 2 ** 30
STAGES = ("eigen", "covariance", "awd", "fisher", "statistics", "spectra")
PAPER_TABLE1 = "gamma_emp 1.31 +/- 0.02, gamma_AWD 1.29 +/- 0.02"


def _num(x, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def _gib(b) -> str:
    return "-" if b is None else f"{b / GIB:.2f}"


def _note(rec: dict) -> str:
    """Why a step did not finish, in one cell."""
    if rec.get("status") == "ok":
        return ""
    text = rec.get("reason") or rec.get("error") or rec.get("where") or ""
    if rec.get("status") == "failed" and rec.get("tail"):
        text += f"; last output: {rec['tail'][-1]}"
    return text.replace("|", "/").replace("\n", " ")[:300]


def _steps(report: dict) -> list[str]:
    out = ["| step | status | seconds | limit s | note |", "|---|---|---|---|---|"]
    for name, rec in report["steps"].items():
        out.append(f"| {name} | {rec.get('status')} | {_num(rec.get('seconds'), '.1f')} | "
                   f"{_num(rec.get('limit_s'), '.0f')} | {_note(rec)} |")
    return out


def _quickstart(report: dict) -> list[str]:
    cmp = report.get("device_vs_cpu")
    out = [f"## (a) quickstart on {report['device']} against the same recipe on cpu", ""]
    if cmp is None:
        return out + ["Not compared: one of the two runs did not finish (see the steps).", ""]
    worst = ", ".join(f"{n} {d:.1e}" for n, d in cmp["worst"][:5])
    return out + [f"Largest relative difference over {cmp['n_variables']} science variables "
                  f"(max|a - b| / max|a| per variable): **{cmp['max_rel_diff']:.2e}** "
                  f"(largest: {worst}); gamma, entry by entry: "
                  f"**{cmp['gamma_max_rel_diff']:.2e}**.", ""]


def _widths(report: dict) -> list[str]:
    head = ("| D | status | wall s | analysis s | " + " | ".join(STAGES)
            + " | peak device GiB | peak host RSS GiB | solver | where it stopped |")
    out = ["## (b) width: per-stage seconds and peak memory", "", head,
           "|---" * (8 + len(STAGES)) + "|"]
    for name, rec in report["steps"].items():
        if not name.startswith("D = "):
            continue
        r = rec.get("result", {})
        st = r.get("stage_seconds", {})
        solver = (r.get("eigen_choice") or {}).get("method", "-")
        peak = r.get("peak_rss_mib")
        out.append(f"| {name} | {rec.get('status')} | {_num(rec.get('seconds'), '.1f')} | "
                   f"{_num(r.get('analysis_seconds'), '.2f')} | "
                   + " | ".join(_num(st.get(s), ".2f") for s in STAGES)
                   + f" | {_gib(r.get('peak_device_bytes'))} | "
                   f"{_num(None if peak is None else peak / 1024, '.2f')} | {solver} | "
                   f"{_note(rec)} |")
    out += ["", "wall s includes the worker's start, data, training and the store; analysis "
            "s is the sum of the store's seconds_* (one analysis each). Peak device memory is "
            "torch.cuda.max_memory_allocated over training and analysis.", ""]
    return out


def _floor(report: dict) -> list[str]:
    rec = next((r for n, r in report["steps"].items() if n.startswith("floor")), None)
    out = ["## (c) the eigen stage against its floor", ""]
    if rec is None or rec.get("status") != "ok":
        return out + [f"Not measured: {_note(rec or {})}", ""]
    r = rec["result"]
    out += [f"D = {r['D']:,}, N = {r['N']:,} ({'trained' if r['trained'] else 'untrained'} "
            f"model). One single-vector Kronecker product on all N samples: t_1 = "
            f"{r['t_product_s'] * 1e3:.2f} ms (median of {r['repeats']}, synchronised); a "
            f"{r['block']}-vector product {r['t_block_product_s'] * 1e3:.2f} ms, so one "
            f"vector alone costs {r['ratio_single_per_vector']:.2f}x its share of a block "
            "product (awch_scale.linalg.eigen's rule takes block where the committed CPU "
            "ratio of MEASURED_RATIOS exceeds 4.5).", "",
            "**Floor = n_hvp x t_1**: the eigen stage's time if everything but its operator "
            "products were free.", "",
            "| eigen solve | seconds | products | floor s | over floor | product share |",
            "|---|---|---|---|---|---|"]
    if r.get("store_floor_s"):
        out.append(f"| step (b)'s eigen stage ({r.get('store_eigen_method')}) | "
                   f"{r['store_seconds_eigen']:.3f} | {r['store_n_hvp']} | "
                   f"{r['store_floor_s']:.3f} | {r['store_over_floor']:.1f}x | - |")
    out.append(f"| rerun here ({r['method']}, by the rule) | {r['solver_s']:.3f} | "
               f"{r['n_products']} | {r['floor_s']:.3f} | {r['over_floor']:.1f}x | "
               f"{100 * r['product_share']:.0f}% |")
    for m in ("lanczos", "block"):
        floor = r[f"{m}_products"] * r["t_product_s"]
        out.append(f"| {m} by name | {r[f'{m}_s']:.3f} | {r[f'{m}_products']} | "
                   f"{floor:.3f} | {r[f'{m}_s'] / floor:.1f}x | - |")
    return out + [""] + _profile(r.get("profile") or {})


def _profile(p: dict) -> list[str]:
    """The profiled rerun of the solve: host round trips and the operators with the most
    self time."""
    if not p:
        return []
    if "error" in p:
        return [f"Profile of the solve: not taken ({p['error']}).", ""]
    out = [f"Profiled rerun ({p['n_products']} products): {p['host_reads']} host reads, "
           f"{p['host_reads_per_product']} per product; {p.get('syncs', 0)} device "
           f"synchronisations recorded. Operators by {p['sorted_by']}:", "",
           "| operator | calls | self ms | share | CPU total ms |", "|---|---|---|---|---|"]
    out += [f"| {t['op']} | {t['calls']} | {t['self_ms']} | {100 * t['share']:.1f}% | "
            f"{t['cpu_total_ms']} |" for t in p["top"]]
    return out + [""]


def _peers(report: dict) -> list[str]:
    out = ["## (d) top-k against curvlinops and PyHessian (same block, same samples)", "",
           "| method | status | seconds | error vs reference | note |", "|---|---|---|---|---|"]
    ref = None
    for name, rec in report["steps"].items():
        if not name.startswith("peers: "):
            continue
        r = rec.get("result", {})
        ref = ref or r.get("reference")
        out.append(f"| {name.removeprefix('peers: ')} | {rec.get('status')} | "
                   f"{_num(r.get('seconds'), '.2f')} | {_num(r.get('error'), '.1e')} | "
                   f"{_note(rec)} |")
    out += ["", f"Error: max_i |lambda_i - ref_i| / ref_1 over the top k; reference: {ref}. "
            "Seconds include building each method's operator, not training.", ""]
    return out


def _table1(report: dict) -> list[str]:
    out = ["## (e) one Table-1 cell", ""]
    for name, rec in report["steps"].items():
        if not name.startswith("Table-1"):
            continue
        r = rec.get("result", {})
        g = r.get("gamma", {})
        text = (f"gamma_emp {g['covar'][0]:.3f}, gamma_AWD {g['h2'][0]:.3f} (paper: "
                f"{PAPER_TABLE1}); {rec['seconds']:.0f} s in all, analysis "
                f"{r.get('analysis_seconds', 0):.0f} s, peak device memory "
                f"{_gib(r.get('peak_device_bytes'))} GiB" if "covar" in g and "h2" in g else
                f"{rec.get('status')}: {_note(rec)}")
        out += [f"{name}: {text}", ""]
    return out


def render(report: dict) -> str:
    """The Markdown report of one run of the check."""
    m = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v)
    dirty = " (uncommitted changes)" if m.get("awch_scale_uncommitted_changes") else ""
    gpu = f"{m['gpu']} (CUDA {m['cuda']}), " if "gpu" in m else ""
    out = ["# GPU check (python -m benchmarks.gpu)", "",
           f"Device {report['device']}: {gpu}{m.get('cpu')} ({m.get('cores')} cores, "
           f"{m.get('ram_gib')} GiB), Python {m.get('python')}; {versions}; commit "
           f"{m.get('git_commit')}{dirty}"
           f"; load at start {m.get('loadavg_start')}; sizes {report['sizes']}"
           f"{' (--quick)' if report.get('quick') else ''}; "
           f"{report.get('seconds', 0):.0f} s in all.", "", "## Steps", "", *_steps(report), "",
           *_quickstart(report), *_widths(report), *_floor(report), *_peers(report),
           *_table1(report)]
    return "\n".join(out) + "\n"
