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

Run: ``python -m benchmarks.bench_transformer_block [--quick] [--tokens T]``; writes
``benchmarks/results/cpu-transformer-block.json`` and ``.md`` (``--quick``: a 64 -> 256
block on 160 sequences, ``-quick`` files: a smoke test, not committed).
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
    from collections import OrderedDict

    import torch
    from torch import nn

    from awch_scale.analysis.checkpoint import analyze_checkpoint
    from awch_scale.model.transformers import Pool

    from .common import peak_rss_mib, rss_mib

    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        ln=nn.LayerNorm(d_model),
        mlp=nn.Sequential(OrderedDict(fc1=nn.Linear(d_model, hidden), act=nn.GELU(),
                                      fc2=nn.Linear(hidden, d_model))),
        pool=Pool("mean"), out=nn.Linear(d_model, 10)))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, tokens, d_model, generator=g)
    y = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]
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


def write_markdown(results: dict, path: Path) -> None:
    """The results as a short table."""
    r, m = results["run"], results["machine"]
    lines = ["# A GPT-2-small-shaped MLP block on CPU (issue 19)", "",
             f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, load "
             f"{results['loadavg_before']:.1f} at the start; one torch thread; "
             f"commit {m.get('git_commit', '?')}.", ""]
    if "error" in r:
        lines += [f"Failed: {r['error']}", ""]
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


def main(quick: bool = False, tokens: int = 8) -> dict:
    shape = (dict(d_model=64, hidden=256, n=160, tokens=tokens, k=8, budget_mb=256) if quick
             else dict(d_model=768, hidden=3072, n=512, tokens=tokens, k=20, budget_mb=2048))
    load = os.getloadavg()[0]
    r = run_worker("benchmarks.bench_transformer_block:block_worker", threads=1, **shape)
    r.update(d_model=shape["d_model"], hidden=shape["hidden"])
    results = {"machine": machine_info(), "shape": shape, "loadavg_before": load,
               "loadavg_after": os.getloadavg()[0], "run": r}
    stem = "cpu-transformer-block" + ("-quick" if quick else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1))
    write_markdown(results, RESULTS / f"{stem}.md")
    print(json.dumps(r, indent=1))
    return results


if __name__ == "__main__":
    args = sys.argv[1:]
    main(quick="--quick" in args,
         tokens=int(args[args.index("--tokens") + 1]) if "--tokens" in args else 8)
