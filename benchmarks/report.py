"""Markdown report of the benchmark results (``render``), targets included."""

from __future__ import annotations


def _f(x, nd: int = 3) -> str:
    """Numbers for tables: 3 significant digits, scientific when tiny or huge."""
    if x is None or isinstance(x, str | bool):
        return "-" if x is None else str(x)
    if isinstance(x, int):
        return str(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.2e}"
    return f"{x:.{nd}g}" if abs(x) < 100 else f"{x:.0f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_f(c) for c in r) + " |" for r in rows]
    return out + [""]


def _secs(row: dict) -> str:
    if "seconds" not in row:
        return row.get("error", row.get("skipped", "-"))
    s = _f(row["seconds"])
    return f"{s} (est.)" if row.get("estimated") or row.get("extrapolated") else s


def targets(b: dict) -> list[list]:
    """[target, measured, pass/fail] for every target of issue 4 that has results."""
    out = []
    eig = b.get("eigen", {}).get("rows", {})
    k = max((r["k"] for r in eig.values()), default=None)
    ours, dense = eig.get(f"ours_block/k={k}", {}), eig.get(f"dense_kron/k={k}", {})
    if "seconds" in ours and "seconds" in dense:
        ratio = ours["seconds"] / dense["seconds"]
        out.append([f"top-{k} at D = {b['eigen']['D']} within 3x of dense eigh incl. build",
                    f"{_f(ours['seconds'])} s vs {_f(dense['seconds'])} s: {ratio:.2f}x",
                    "PASS" if ratio <= 3 else "FAIL"])
    k0 = min((r["k"] for r in eig.values()), default=None)
    loose = next((name.split("/")[0] for name in eig if name.startswith("ours_block(")), None)
    pairs = [("ours_block vs pyhessian(tol=1e-6)", ours, "pyhessian(tol=1e-6)"),
             (f"{loose} vs pyhessian (defaults)", eig.get(f"{loose}/k={k}", {}), "pyhessian")]
    for label, mine, other in pairs:
        theirs = eig.get(f"{other}/k={k}", {})
        if "seconds" not in mine or "seconds" not in theirs:
            continue
        sp = theirs["seconds"] / mine["seconds"]
        est = f" (PyHessian extrapolated from k = {k0})" if theirs.get("estimated") else ""
        acc = eig.get(f"{other}/k={k0}", {}).get("accuracy")
        out.append([f"top-{k} >= 10x faster than PyHessian at equal accuracy: {label}",
                    f"{sp:.1f}x{est}; accuracy ours {_f(mine.get('accuracy'))}, PyHessian "
                    f"{_f(acc)} (at k = {k0})", "PASS" if sp >= 10 else "FAIL"])
    an = b.get("analysis", {})
    if "speedup_full_vs_dense_extrapolated" in an:
        sp = an["speedup_full_vs_dense_extrapolated"]
        d = an["gamma_abs_diff"]
        worst = max(d.values())
        out.append(["full analysis >= 10x faster than dense per-sample (paper shape)",
                    f"{sp:.0f}x (dense extrapolated from N = {an['dense_subset']['N']})",
                    "PASS" if sp >= 10 else "FAIL"])
        out.append(["gamma agrees within 0.01 (same N, both full)",
                    ", ".join(f"{e}: {v:.1e}" for e, v in d.items()),
                    "PASS" if worst <= 0.01 else "FAIL"])
    sc = b.get("scaling", {})
    if sc.get("exponents"):
        e = sc["exponents"]
        Ds = [r["D"] for r in sc["rows"] if "error" not in r]
        out.append([f"peak-memory exponent < 1.1 (D = {min(Ds)}..{max(Ds)})",
                    f"{_f(e['peak_rss_above_base'])} above base "
                    f"({_f(e.get('peak_rss_above_base_top2'))} between the two largest D), "
                    f"{_f(e['peak_rss_total'])} whole process",
                    "PASS" if (e["peak_rss_above_base"] or 9) < 1.1 else "FAIL"])
        big = [r for r in sc["rows"] if r.get("D") == 10**6]
        if big:
            r = big[0]
            ok = "seconds" in r and r["seconds"] <= 3600
            meas = (f"{r['seconds'] / 60:.1f} min, peak {r['peak_rss_mib'] / 1024:.1f} GiB"
                    if "seconds" in r else r.get("error", "-"))
            out.append([f"D = 1e6, k = {sc['k']} within 60 min", meas, "PASS" if ok else "FAIL"])
    return out


def render(results: dict) -> str:
    m, b, cfg = results["machine"], results["benchmarks"], results["config"]
    lines = ["# awch-scale CPU benchmarks", ""]
    if cfg.get("quick"):
        lines += ["**Smoke-sized run (`--quick`): sizes are tiny and every method ran in one "
                  "process (memory not isolated); the numbers say nothing about performance.**",
                  ""]
    lines += [
        f"- CPU: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; "
        f"{cfg['threads']} torch/OpenMP thread(s) per worker process",
        "- load average (1/5/15 min) at the end of each benchmark: "
        + "; ".join(f"{n} {', '.join(f'{x:.1f}' for x in r.get('loadavg_end', []))}"
                    for n, r in b.items())
        + " (other jobs share the machine; timings are medians where repeated)",
        f"- Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- awch-scale commit {m['git_commit']}"
        + (" with uncommitted changes in awch_scale/" if m["awch_scale_uncommitted_changes"]
           else ""),
        "",
        "Peak memory is the whole worker process's peak resident set (VmHWM), which "
        "includes Python + torch + scipy after imports (`base`).",
        "",
    ]
    t = [] if cfg.get("quick") else targets(b)
    if t:
        lines += ["## Targets", ""] + _table(["target", "measured", "result"], t)
    if "hvp" in b:
        lines += _hvp(b["hvp"])
    if "eigen" in b:
        lines += _eigen(b["eigen"])
    if "analysis" in b:
        lines += _analysis(b["analysis"])
    if "scaling" in b:
        lines += _scaling(b["scaling"])
    return "\n".join(lines) + "\n"


def _hvp(h: dict) -> list[str]:
    if "methods" not in h:
        return ["## 1. Hessian-vector products", "", f"error: {h.get('error')}", ""]
    lines = ["## 1. Hessian-vector products", "",
             f"D = {h['D']}, N = {h['N']} samples (Hessian of the mean loss over all N), chunks "
             f"of {h['chunk']}; m = {h['m']} vectors per call unless noted; median of "
             f"{h['repeats']} interleaved repeats. PyHessian: `batch` = single-batch mode "
             "(all N samples as one batch), `loader` = dataloader mode (batches of "
             f"{h['chunk']}), one vector per autograd call in both.", ""]
    kron = h["methods"]["ours_kron"]["hvp_per_s"]
    hvp = h["methods"]["ours_hvp"]["hvp_per_s"]
    rows = [[name, str(r["vectors_per_call"]), r["hvp_per_s"], kron / r["hvp_per_s"],
             hvp / r["hvp_per_s"], r["max_rel_diff"], r["setup_seconds"]]
            for name, r in h["methods"].items()]
    lines += _table(["method", "vectors/call", "HVP/s", "ours_kron speed-up",
                     "ours_hvp speed-up", "max rel diff vs ours_kron", "setup s"], rows)
    alt = h.get("alt_threads")
    if alt and "methods" in alt:
        lines += [f"Same, with {alt['threads']} threads per process (the machine's default; "
                  "other jobs were running):", ""]
        rows = [[name, str(r["vectors_per_call"]), r["hvp_per_s"],
                 h["methods"][name]["hvp_per_s"] / r["hvp_per_s"]]
                for name, r in alt["methods"].items()]
        lines += _table(["method", "vectors/call", "HVP/s", "1-thread / this"], rows)
    return lines


def _eigen(e: dict) -> list[str]:
    if "rows" not in e:
        return ["## 2. Top-k eigenpairs", "", f"error: {e.get('error')}", ""]
    lines = ["## 2. Top-k eigenpairs", "",
             f"D = {e['D']}, N = {e['N']}, tol = {e['tol']} (ours, curvlinops' eigsh); "
             f"lambda_1 = {_f(e['lambda_1'])}. accuracy = max_i |lambda_i - lambda_i^dense| / "
             "lambda_1 over the k values. `dense_kron`: H from our Kronecker products with the "
             "identity + `torch.linalg.eigh` (float64), k-independent. `dense_func_hessian`: "
             "H from torch.func.hessian of each chunk's summed loss, timed on a subset and "
             "extrapolated linearly in N. (est.) = estimated, see the JSON `estimate` fields.",
             ""]
    rows = []
    for name, r in e["rows"].items():
        method, k = name.split("/k=")
        build = r.get("seconds_build")
        rows.append([str(k), method, _secs(r), build, r.get("n_products"), r.get("n_passes"),
                     r.get("peak_rss_mib"), r.get("accuracy")])
    lines += _table(["k", "method", "seconds", "of which build", "products", "data passes",
                     "peak RSS MiB", "accuracy"], rows)
    return lines


def _analysis(a: dict) -> list[str]:
    lines = ["## 3. Full analysis vs dense brute force", ""]
    full, sub, dense = a.get("ours_full", {}), a.get("ours_subset", {}), a.get("dense_subset", {})
    for name, r in (("ours (N full)", full), ("ours (subset)", sub), ("dense (subset)", dense)):
        if "error" in r:
            lines += [f"{name}: error: {r['error']}", ""]
    if "seconds" in full:
        lines += [f"analyze_checkpoint, D = {full['D']}, N = {full['N']}, k = {full['k']}: "
                  f"{_f(full['seconds'])} s (median of {len(full['seconds_runs'])}), peak RSS "
                  f"{_f(full['peak_rss_mib'])} MiB; awd={full['awd']}; operator "
                  f"{full['operator']}; {full['n_hvp']} Hessian products. Stages: "
                  + ", ".join(f"{k} {_f(v)}" for k, v in full["stage_seconds"].items()), "",
                  "Variables computed: " + ", ".join(full["variables"]), ""]
    if "seconds" in dense:
        lines += [f"Dense brute force on the first {dense['N']} samples: {_f(dense['seconds'])} s "
                  f"(per-sample stages {_f(dense['seconds_per_sample_stages'])} s, fixed "
                  f"{_f(dense['seconds_fixed_stages'])} s), peak RSS "
                  f"{_f(dense['peak_rss_mib'])} MiB; extrapolated to N = {full.get('N')}: "
                  f"**{_f(dense['extrapolated_seconds'])} s (extrapolated)**. Stages: "
                  + ", ".join(f"{k} {_f(v)}" for k, v in dense["stage_seconds"].items()), ""]
    if "speedup_full_vs_dense_extrapolated" in a:
        lines += [f"Speed-up at N = {full['N']}: "
                  f"**{a['speedup_full_vs_dense_extrapolated']:.0f}x** (dense extrapolated).", ""]
    if "gamma_abs_diff" in a:
        lines += [f"Same {sub['N']} samples, both run fully (ours {_f(sub['seconds'])} s, "
                  f"peak {_f(sub['peak_rss_mib'])} MiB); eigenvalues max rel diff "
                  f"{_f(a['subset_eigenvalue_max_rel_diff'])}:", ""]
        rows = [[e, sub["gamma"][e], dense["gamma"][e], d] for e, d in a["gamma_abs_diff"].items()]
        lines += _table(["estimator", "gamma ours", "gamma dense", "|diff|"], rows)
        if "gamma" in full:
            lines += ["gamma at the full N (ours): " + ", ".join(
                f"{e} {_f(g)}" for e, g in full["gamma"].items()), ""]
    return lines


def _scaling(s: dict) -> list[str]:
    lines = ["## 4. Width scaling", "",
             f"FC 784-w-w-10, target fc2, N = {s['N']}, k = {s['k']}, one process per width; "
             "per stage: seconds / peak RSS MiB (VmHWM during the stage). Dense reference "
             "memory: H alone (D^2 x 4 B) and H + C + E[h^2] + 64 per-sample Hessians.", ""]
    rows = []
    for r in s["rows"]:
        if "error" in r:
            rows.append([str(r["D"]), r["error"]] + ["-"] * 6)
            continue
        st = r["stages"]
        cell = [f"{_f(st[x]['seconds'])} / {_f(st[x]['peak_rss_mib'])}" if x in st else "-"
                for x in ("eigenpairs", "covariance", "awd")]
        rows.append([str(r["D"]), *cell, r["seconds"], r["peak_rss_mib"],
                     r["peak_rss_mib"] - r["base_rss_mib"],
                     f"{_f(r['dense_reference']['H_gib'])} / "
                     f"{_f(r['dense_reference']['working_set_gib'])}"])
    lines += _table(["D", "eigenpairs s / MiB", "covariance s / MiB", "AWD s / MiB",
                     "total s", "peak RSS MiB", "above base MiB", "dense GiB: H / working set"],
                    rows)
    lines += ["Log-log slopes on D (growth exponents):", ""]
    lines += _table(["quantity", "exponent"], [[k, v] for k, v in s["exponents"].items()])
    return lines
