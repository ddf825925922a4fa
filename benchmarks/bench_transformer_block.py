"""A GPT-2-small-shaped MLP block on this CPU (issue 19): time and peak memory.

The target is the first Linear of a GPT-2-small MLP, 768 -> 3072 with its bias,
D = 768 * 3072 + 3072 = 2,362,368, applied to every token of N = 512 sequences of
T tokens. The model: LayerNorm(768) -> fc1 (768 -> 3072) -> GELU -> fc2 (3072 -> 768) ->
mean over tokens -> out (768 -> 10), the token features N(0, 1) and the labels balanced over
10 classes in a seeded random order; it is not trained (the cost does not depend on the
weights). One ``analyze_checkpoint`` with k = 20 eigenpairs, the AWD section on (h2 = V^T
E_p[h_p^2] V from per-sample Hessian-vector products, and c_pair), statistics on, Fisher and
spectra off, the default memory budget (2048 MiB), float32, one torch thread, in its own
worker process: per-stage seconds from the stored ``seconds_*``, the per-sample HVP batching
from provenance, and the process's peak resident memory.

Default (``parts``): the three streamed passes of that analysis one by one with a random
orthonormal basis (one Hessian product of k vectors, the projected per-sample gradients,
h2 from per-sample HVPs), each with its seconds and peak memory: the eigen stage is
n_hvp / k such products, which on this shared 2-core CPU would take longer than a session;
``--full`` runs the whole ``analyze_checkpoint``.

Run: ``python -m benchmarks.bench_transformer_block [--quick] [--full] [--tokens T]``;
writes ``benchmarks/results/cpu-transformer-block[-full].json`` and ``.md``
(``--quick``: a 64 -> 256 block on 160 sequences, ``-quick`` files: a smoke test, not
committed).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .common import machine_info, run_worker

RESULTS = Path(__file__).resolve().parent / "results"


def block_worker(d_model: int, hidden: int, n: int, tokens: int, k: int,
                 budget_mb: float) -> dict:
    """One analysis of the MLP block's fc1 (weight and bias); see the module docstring."""
    import warnings

    from awch_scale.analysis.checkpoint import analyze_checkpoint

    from .common import peak_rss_mib, rss_mib

    model, x, y = _block_model(d_model, hidden, n, tokens)
    base = rss_mib()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = analyze_checkpoint(model, "mlp.fc1", x, y, loss="ce", batch_size=32, k=k,
                                device="cpu", memory_budget_mb=budget_mb, fisher=None,
                                spectra=None, suppression=None, awd={"draws": 8})
    prov = json.loads(str(ds.provenance.values))
    seconds = {v.removeprefix("seconds_"): float(ds[v]) for v in ds.data_vars
               if v.startswith("seconds_")}
    gam = dict(zip(ds.estimator.values.tolist(), ds.gamma.values.tolist(), strict=True))
    return {"D": int(ds.attrs["D"]), "N": n, "tokens": tokens, "k": k,
            "budget_mb": budget_mb, "seconds": seconds, "n_hvp": int(ds.n_hvp),
            "chunk_size": int(ds.chunk_size), "h2_samples": prov.get("awd_h2_samples"),
            "h2_vectors": prov.get("awd_h2_vectors"), "gamma": gam,
            "awd_h1_rel_err": float(ds.awd_h1_rel_err), "base_rss_mib": base,
            "peak_rss_mib": peak_rss_mib()}


def _block_model(d_model: int, hidden: int, n: int, tokens: int):
    """The MLP-block model and its data (module docstring)."""
    from collections import OrderedDict

    import torch
    from torch import nn

    from awch_scale.model.transformers import Pool

    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        ln=nn.LayerNorm(d_model),
        mlp=nn.Sequential(OrderedDict(fc1=nn.Linear(d_model, hidden), act=nn.GELU(),
                                      fc2=nn.Linear(hidden, d_model))),
        pool=Pool("mean"), out=nn.Linear(d_model, 10)))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, tokens, d_model, generator=g)
    y = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]
    return model, x, y


def parts_worker(d_model: int, hidden: int, n: int, tokens: int, k: int,
                 budget_mb: float) -> dict:
    """The streamed passes of the analysis on the block, one by one, with a random
    orthonormal basis V (D, k): one Hessian product with k vectors (the eigensolver's unit
    of work: its time is the eigen stage's divided by n_hvp / k), the per-sample gradients
    projected onto V (the covariance stage) and h2 from per-sample Hessian-vector products
    (the AWD stage's h2); seconds and peak resident memory of each."""
    import torch

    from awch_scale.analysis.memory import memory_plan
    from awch_scale.model.operators import HessianOperator
    from awch_scale.model.per_sample import projected_gradients
    from awch_scale.model.per_sample_hessian import hessian_moments
    from awch_scale.model.problem import make_problem

    from .common import StagePeak, peak_rss_mib, rss_mib

    model, x, y = _block_model(d_model, hidden, n, tokens)
    base = rss_mib()
    problem = make_problem(model, "mlp.fc1", x, y, "ce", chunk_size=n)
    plan = memory_plan(problem, budget_mb)
    problem.chunk_size = plan.chunk_size
    g = torch.Generator().manual_seed(2)
    V = torch.linalg.qr(torch.randn(problem.D, k, generator=g))[0]
    out = {"D": problem.D, "N": n, "tokens": tokens, "k": k, "budget_mb": budget_mb,
           "chunk_size": plan.chunk_size, "base_rss_mib": base, "parts": {}}
    with StagePeak() as st:
        HessianOperator(problem) @ V
    out["parts"][f"Hessian product, {k} vectors, one pass"] = (st.seconds, st.peak_mib)
    with StagePeak() as st:
        projected_gradients(problem, V)
    out["parts"]["per-sample gradients projected (covariance stage)"] = (st.seconds,
                                                                        st.peak_mib)
    with StagePeak() as st:
        hm = hessian_moments(problem, V, max_elements=plan.awd_chunk_elements)
    out["parts"]["h2 from per-sample HVPs (AWD stage)"] = (st.seconds, st.peak_mib)
    out.update(h2_samples=hm.sizes.samples, h2_vectors=hm.sizes.vectors,
               h2_finite=bool(torch.isfinite(hm.h2).all()), peak_rss_mib=peak_rss_mib())
    return out


def write_markdown(results: dict, path: Path) -> None:
    """The results as a short table."""
    r, m = results["run"], results["machine"]
    lines = ["# A GPT-2-small-shaped MLP block on CPU (issue 19)", "",
             f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, load "
             f"{results['loadavg_before']:.1f} at the start; one torch thread; "
             f"commit {m.get('git_commit', '?')}.", ""]
    if "error" in r:
        lines += [f"Failed: {r['error']}", ""]
    elif "parts" in r:
        lines += [
            f"Target `mlp.fc1` (Linear {r['d_model']} -> {r['hidden']} with bias), "
            f"D = {r['D']:,}; N = {r['N']} sequences of {r['tokens']} tokens; k = {r['k']}; "
            f"memory budget {r['budget_mb']:.0f} MiB (chunk {r['chunk_size']} samples); "
            "float32; a random orthonormal basis V.", "",
            "| pass | seconds | peak resident MiB |", "| --- | --- | --- |",
            *(f"| {name} | {sec:.1f} | {mib:.0f} |" for name, (sec, mib) in r["parts"].items()),
            f"| whole worker (wall, incl. start-up and model build) | {r['wall_seconds']:.1f} "
            f"| {r['peak_rss_mib']:.0f} |", "",
            f"After imports and data: {r['base_rss_mib']:.0f} MiB. h2 batching: "
            f"{r['h2_samples']} sample(s) x {r['h2_vectors']} vector(s) per vmapped call; "
            f"h2 finite: {r['h2_finite']}. The eigen stage costs n_hvp / k such Hessian "
            "products (n_hvp, stored by every analysis), so a whole analysis "
            "is that plus the two other rows.", ""]
    else:
        lines += [
            f"Target `mlp.fc1` (Linear {r.get('d_model', 768)} -> {r.get('hidden', 3072)} with "
            f"bias), D = {r['D']:,}; N = {r['N']} sequences of {r['tokens']} tokens; "
            f"k = {r['k']}; memory budget {r['budget_mb']:.0f} MiB; float32.", "",
            "| stage | seconds |", "| --- | --- |",
            *(f"| {s} | {v:.1f} |" for s, v in r["seconds"].items()),
            f"| whole worker (wall, incl. start-up) | {r['wall_seconds']:.1f} |", "",
            f"Peak resident memory {r['peak_rss_mib']:.0f} MiB (after imports "
            f"{r['base_rss_mib']:.0f} MiB). Hessian-vector products of the eigensolver: "
            f"{r['n_hvp']}; streamed chunk {r['chunk_size']} samples; per-sample h2 batching: "
            f"{r['h2_samples']} sample(s) x {r['h2_vectors']} vector(s) per vmapped call. "
            f"Check: max |diag(V^T H V) - lambda| / lambda_1 over the per-sample products = "
            f"{r['awd_h1_rel_err']:.1e}. gamma (untrained model, random labels; a cost "
            f"measurement, not a result): "
            + ", ".join(f"{e} {g:.2f}" for e, g in r["gamma"].items()) + ".", ""]
    path.write_text("\n".join(lines))


def main(quick: bool = False, tokens: int = 8, full: bool = False) -> dict:
    shape = (dict(d_model=64, hidden=256, n=160, tokens=tokens, k=8, budget_mb=256) if quick
             else dict(d_model=768, hidden=3072, n=512, tokens=tokens, k=20, budget_mb=2048))
    load = os.getloadavg()[0]
    machine = machine_info()  # before the run: the commit and changes of the code measured
    worker = "block_worker" if full else "parts_worker"
    r = run_worker(f"benchmarks.bench_transformer_block:{worker}", threads=1, **shape)
    r.update(d_model=shape["d_model"], hidden=shape["hidden"])
    results = {"machine": machine, "shape": shape, "loadavg_before": load,
               "loadavg_after": os.getloadavg()[0], "run": r}
    stem = "cpu-transformer-block" + ("-full" if full else "") + ("-quick" if quick else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1))
    write_markdown(results, RESULTS / f"{stem}.md")
    print(json.dumps(r, indent=1))
    return results


if __name__ == "__main__":
    args = sys.argv[1:]
    main(quick="--quick" in args, full="--full" in args,
         tokens=int(args[args.index("--tokens") + 1]) if "--tokens" in args else 8)
