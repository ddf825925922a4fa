"""The example notebook's code runs against a store that analyze wrote."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
from test_cli import run_cli, write_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_notebook_cells_run(tmp_path):
    matplotlib.use("Agg")
    path = write_recipe(tmp_path, **{"runs.seeds": [0],
                                     "analysis.awd": {"draws": 2, "probe": 6,
                                                      "partner_batches": 2}})
    assert run_cli("analyze", str(path), "-q").exit_code == 0
    store = tmp_path / "out" / "tiny.zarr"
    nb = json.loads((ROOT / "notebooks" / "explore_store.ipynb").read_text())
    namespace: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            src = "".join(cell["source"]).replace("../store/quickstart.zarr", str(store))
            exec(compile(src, "notebook", "exec"), namespace)
    assert 0 <= namespace["off"] <= 1
