"""Docs, notebooks, recipe and library agree: one std convention (sample std, ddof = 1,
as ``awch-scale table`` and the README) in every notebook; the dtypes docs/quantities.md
gives (stored and returned) are what the store holds and what ``analyze_checkpoint``
returns; the quickstart recipe's header and the README give the same time."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from awch_scale import analyze_checkpoint
from awch_scale.variables import VARIABLES, returned, stored_dtype

ROOT = Path(__file__).resolve().parents[1]
AWD = {"draws": 2, "probe": 6, "partner_batches": 2, "probe_spectra": True}


def code(path: Path) -> str:
    nb = json.loads(path.read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")),
                         ids=lambda p: p.name)
def test_notebooks_use_the_sample_std(path):
    for call in re.findall(r"\bstd\(([^)]*)\)", code(path)):
        assert "ddof=1" in call, (path.name, call)


def test_quickstart_header_agrees_with_the_readme():
    header = (ROOT / "recipes" / "quickstart.yaml").read_text().splitlines()[0]
    readme = (ROOT / "README.md").read_text()
    assert "about 1 minute on 2 CPU cores" in readme and "yes (about 1 min)" in readme
    assert "under a minute" in header and "few minutes" not in header


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_documented_dtypes_are_the_library_and_store_dtypes(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 8, bias=False),
                          nn.ReLU(), nn.Linear(8, 3, bias=False)).to(dtype)
    x, y = torch.randn(60, 6, dtype=dtype), torch.randint(0, 3, (60,))
    ds = analyze_checkpoint(model, "2", x, y, loss="ce", batch_size=10, k=5, store_eigvec=True,
                            awd=AWD, spectra={"probes": 2, "steps": 8, "grid": 20})
    model_dtype = str(dtype).removeprefix("torch.")
    for name, var in ds.data_vars.items():
        v = VARIABLES[str(name)]
        claim = returned(v).replace("model", model_dtype)
        got = "str" if var.dtype.kind == "U" else str(var.dtype)
        assert got == claim, (name, got, claim)
        assert stored_dtype(str(name)) == (np.dtype(object) if v.dtype == "str"
                                           else np.dtype(v.dtype))
    assert ds.hess_eigvec.dtype == np.float64
    doc = (ROOT / "docs" / "quantities.md").read_text()
    assert "| `hess_eigvec` | param, eig | float32 | float64 |" in doc
