"""The shipped transformer recipes validate, and run shortened (2 epochs, k = 10, fewer
samples) through ``awch-scale analyze`` to a store with finite gamma_emp (covar) and
gamma_AWD (h2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from cases import run_cli

from awch_scale.run.plan import prepare
from awch_scale.run.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "transformers"
SHIPPED = {
    "vit_digits_ce.yaml": {"data.train_per_class": 12, "data.test_size": 20},
    "gpt_modular_ce.yaml": {"data.modulus": 17},
}


def shortened(path: Path, tmp_path: Path, changes: dict) -> Path:
    recipe = yaml.safe_load(path.read_text())
    changes = {"train.epochs": 2, "analysis.epochs": [2], "analysis.k": 10,
               "analysis.n_fit": 10, **changes}
    for dotted, value in changes.items():
        node = recipe
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    recipe["store"] = str(tmp_path / "out.zarr")
    out = tmp_path / path.name
    out.write_text(yaml.safe_dump(recipe))
    return out


def test_every_transformer_recipe_prepares():
    paths = sorted(RECIPES.glob("*.yaml"))
    assert {p.name for p in paths} >= {"vit_digits_ce.yaml", "vit_digits_mse.yaml",
                                       "gpt_modular_ce.yaml"}
    for path in paths:
        recipe, text = load_recipe(path)
        assert recipe.model.arch in ("vit", "gpt")
        if recipe.data.dataset in ("digits", "modular"):  # embedded or generated data
            plan = prepare(recipe, text)
            assert all(recipe.analysis.k < D for D in plan.block_sizes.values())


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_recipe_runs_shortened(name, tmp_path):
    path = shortened(RECIPES / name, tmp_path, SHIPPED[name])
    assert run_cli("validate", str(path)).exit_code == 0
    with pytest.warns(UserWarning, match="left out"):
        result = run_cli("analyze", str(path), "--threads", "1", "-q")
    assert result.exit_code == 0, result.output
    ds = xr.open_zarr(tmp_path / "out.zarr", consolidated=False)
    gamma = ds.gamma.sel(estimator=["covar", "h2"]).values
    assert np.isfinite(gamma).all(), gamma
    assert bool(ds.done.values.all())
    for name in ("hess_eigval", "covar", "second_moment", "h2", "fisher", "c_pair"):
        assert np.isfinite(ds[name].values).all(), name


def test_parameter_count_is_the_built_models():
    """The size check counts on the meta device; the count is the real model's."""
    from awch_scale.model.architectures import build_model
    from awch_scale.run.plan import parameter_count
    from awch_scale.run.recipe import ModelSpec

    cases = [(ModelSpec(arch="fc", width=7), (1, 8, 8)),
             (ModelSpec(arch="mlp", hidden=30, width=9), (3, 4, 4)),
             (ModelSpec(arch="cnn", width=5), (3, 16, 16)),
             (ModelSpec(arch="vit", d_model=16, depth=2, heads=2, patch=4), (1, 8, 8)),
             (ModelSpec(arch="vit", d_model=8, pool="mean", mlp_ratio=2), (3, 4, 4)),
             (ModelSpec(arch="gpt", d_model=16, vocab=20, output_dim=19), (3,))]
    for spec, shape in cases:
        real = sum(p.numel() for p in build_model(spec, shape).parameters())
        assert parameter_count(spec, shape) == real, spec.arch


@pytest.mark.parametrize("name,changes,keys", [
    ("vit_digits_ce.yaml", {"model.d_model": 32768, "model.depth": 8}, "model.d_model"),
    ("gpt_modular_ce.yaml", {"model.d_model": 32768, "model.depth": 8, "data.modulus": 17},
     "model.d_model")])
def test_transformer_too_big_for_memory_is_refused(name, changes, keys, tmp_path):
    """About 1e11 parameters: refused by validate (exit 2, the size keys named) before
    any weight is allocated."""
    path = shortened(RECIPES / name, tmp_path, changes)
    result = run_cli("validate", str(path))
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "parameters" in text and keys in text and "Traceback" not in text
