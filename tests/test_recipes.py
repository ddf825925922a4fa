"""The shipped recipes: every YAML under recipes/ validates; the Table 1 recipes carry the
paper's Table 2 hyperparameters and are what recipes/table1/generate.py writes; the
embedded-data recipes pass ``prepare``; a missing data root is a DataError naming it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
import yaml

from awch_scale.errors import DataError
from awch_scale.model.architectures import build_model
from awch_scale.model.problem import resolve_block
from awch_scale.run.plan import prepare
from awch_scale.run.recipe import Recipe, load_recipe

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
TABLE1_DIR = RECIPES_DIR / "table1"
ALL_RECIPES = sorted(RECIPES_DIR.rglob("*.yaml"))
TABLE1 = sorted(TABLE1_DIR.glob("*.yaml"))
# Read with plain YAML so that one invalid recipe fails its own test, not the collection.
EMBEDDED = [p for p in ALL_RECIPES
            if (yaml.safe_load(p.read_text(encoding="utf-8")).get("data") or {}).get(
                "dataset", "gauss") in ("gauss", "digits")]

INPUT_SHAPE = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def _id(path: Path) -> str:
    return str(path.relative_to(RECIPES_DIR))


def _block_size(recipe: Recipe, input_shape: tuple[int, ...]) -> int:
    torch.manual_seed(0)
    model = build_model(recipe.model, input_shape)
    names, _ = resolve_block(model, recipe.analysis.target)
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


def _generator():
    spec = importlib.util.spec_from_file_location("table1_generate", TABLE1_DIR / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipes_exist():
    names = {_id(p) for p in ALL_RECIPES}
    assert {"quickstart.yaml", "digits_fc_ce.yaml", "digits_fc_mse.yaml", "digits_cnn_ce.yaml",
            "gauss_fc_ce.yaml", "gauss_fc_mse.yaml"} <= names
    assert len(TABLE1) == 24


@pytest.mark.parametrize("path", ALL_RECIPES, ids=_id)
def test_recipe_validates(path):
    recipe, text = load_recipe(path)
    assert text.strip()
    assert recipe.n_fit <= recipe.analysis.k
    assert max(recipe.analysis.epochs) <= recipe.train.epochs


def test_table1_files_are_up_to_date():
    """The committed files are exactly what the generator writes (rerun it after edits)."""
    rendered = _generator().render_all()
    assert sorted(rendered) == [p.name for p in TABLE1]
    stale = [p.name for p in TABLE1 if p.read_text(encoding="utf-8") != rendered[p.name]]
    assert not stale, f"rerun recipes/table1/generate.py: {stale} differ"


@pytest.mark.parametrize("path", TABLE1, ids=_id)
def test_table1_common_settings(path):
    recipe, text = load_recipe(path)
    dataset, model, loss, c = re.fullmatch(r"(mnist|cifar10)_(mlp|cnn)_(ce|mse)_c(\d+)\.yaml",
                                           path.name).groups()
    c = int(c)
    assert recipe.name == f"table1_{path.stem}"
    d, m, t, r = recipe.data, recipe.model, recipe.train, recipe.analysis
    assert (d.dataset, d.root, d.download) == (dataset, f"data/{dataset}", False)
    assert d.classes == list(range(c)) and c in (3, 6, 10)
    assert d.test_size == 1000 and d.label_noise == 0 and d.analysis_size is None
    assert recipe.loss == loss
    assert m.output_dim == 10 and m.dropout == 0 and m.init_scale == 1
    assert (t.lr, t.clip_grad_norm, t.l2, t.stop_loss) == (0.1, 5.0, 0.0, 1e-5)
    assert (t.cosine.t_max, t.cosine.eta_min_ratio) == (500, 0.01)
    assert recipe.runs.seeds == [0, 1, 2, 3]
    assert r.epochs == [t.epochs]
    assert r.n_fit == r.k and r.chunk_size == 1024
    assert r.eigen.tol == 1e-6 and r.eigen.ncv is None and r.eigen.maxiter is None
    assert r.eigen.method == "auto" and r.awd is not None and r.awd.enabled
    assert (recipe.dtype, recipe.device, recipe.store) == ("float32", "auto", None)
    # Architecture of appendix B.1 and its target block.
    expected = {
        ("mnist", "mlp"): ("fc", 50, "fc2", 2500),
        ("cifar10", "mlp"): ("mlp", 50, "fc3", 2500),
        ("mnist", "cnn"): ("cnn", 20, "fc1", 2560),
        ("cifar10", "cnn"): ("cnn", 20, "fc1", 2560),
    }[(dataset, model)]
    assert (m.arch, m.width, r.target) == expected[:3]
    if m.arch == "mlp":
        assert m.hidden == 1000
    D = _block_size(recipe, INPUT_SHAPE[dataset])
    assert D == expected[3]
    assert r.k < D
    # The header names the cell, the paper's gammas, and where the data must be.
    assert f"C = {c}" in text and "gamma_emp = " in text and "gamma_AWD = " in text
    assert f"data.root = data/{dataset}" in text and "download: true" in text


# Table 2 of the paper, typed in independently of the generator:
# file -> (N_data per class, B, epochs, N eigenvalues).
TABLE2_SPOT_CHECKS = {
    "mnist_mlp_ce_c3.yaml": (2000, 50, 100, 300),
    "mnist_mlp_mse_c10.yaml": (2000, 50, 100, 1000),
    "mnist_cnn_ce_c6.yaml": (2000, 50, 100, 500),
    "mnist_cnn_mse_c10.yaml": (5000, 128, 100, 800),
    "cifar10_mlp_ce_c6.yaml": (2000, 100, 150, 1500),
    "cifar10_mlp_mse_c3.yaml": (5000, 100, 100, 500),
    "cifar10_cnn_ce_c3.yaml": (5000, 128, 100, 500),  # footnote: 5,000 for C = 3
    "cifar10_cnn_ce_c10.yaml": (2000, 128, 100, 1500),
    "cifar10_cnn_mse_c6.yaml": (5000, 128, 500, 500),
}


@pytest.mark.parametrize("name", sorted(TABLE2_SPOT_CHECKS))
def test_table1_spot_checks_against_table2(name):
    recipe, _ = load_recipe(TABLE1_DIR / name)
    got = (recipe.data.train_per_class, recipe.train.batch_size, recipe.train.epochs,
           recipe.analysis.k)
    assert got == TABLE2_SPOT_CHECKS[name]


# Table 1 of the paper (and Table 3 for gamma'_AWD), a few cells.
TABLE1_SPOT_CHECKS = {
    "mnist_mlp_ce_c3.yaml": "gamma_emp = 1.22 +/- 0.01, gamma_AWD = 1.24 +/- 0.01",
    "mnist_cnn_mse_c6.yaml": "gamma_emp = 1.03 +/- 0.01, gamma_AWD = 1.06 +/- 0.01",
    "cifar10_mlp_ce_c10.yaml": "gamma_emp = 1.51 +/- 0.03, gamma_AWD = 1.47 +/- 0.03",
    "cifar10_cnn_mse_c10.yaml": "gamma_emp = 1.01 +/- 0.01, gamma_AWD = 1.02 +/- 0.01",
    "cifar10_cnn_ce_c3.yaml": "gamma_emp = 1.10 +/- 0.01, gamma_AWD = 1.11 +/- 0.01",
}


@pytest.mark.parametrize("name", sorted(TABLE1_SPOT_CHECKS))
def test_table1_headers_quote_the_paper(name):
    text = (TABLE1_DIR / name).read_text(encoding="utf-8")
    assert TABLE1_SPOT_CHECKS[name] in text
    assert ("gamma'_AWD = " in text) == ("_mse_" in name)


@pytest.mark.parametrize("path", EMBEDDED, ids=_id)
def test_embedded_recipe_prepares(path):
    recipe, text = load_recipe(path)
    plan = prepare(recipe, text)
    assert plan.data.n_train == recipe.data.train_per_class * len(recipe.data.classes)
    for target, D in plan.block_sizes.items():
        assert recipe.analysis.k < D, target
    if recipe.loss == "ce" and path.name != "quickstart.yaml":
        assert set(recipe.data.classes) == set(range(10))


@pytest.mark.parametrize("name", ["mnist_mlp_ce_c3.yaml", "cifar10_cnn_mse_c10.yaml"])
def test_table1_missing_data_root(name, tmp_path, monkeypatch):
    """As committed (relative root, download off), from a folder without the data."""
    monkeypatch.chdir(tmp_path)
    recipe, text = load_recipe(TABLE1_DIR / name)
    with pytest.raises(DataError, match=re.escape(recipe.data.root)) as info:
        prepare(recipe, text)
    assert "download" in str(info.value)
    assert not (tmp_path / recipe.data.root).exists()


def test_table1_missing_absolute_root(tmp_path):
    recipe, text = load_recipe(TABLE1_DIR / "cifar10_mlp_ce_c6.yaml")
    root = str(tmp_path / "nowhere" / "cifar10")
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"root": root})})
    with pytest.raises(DataError, match=re.escape(root)):
        prepare(recipe, text)


@pytest.mark.parametrize("value, schema_ok", [
    ("auto", True), ("cpu", True), ("cuda", True), ("cuda:1", True), ("cuda:12", True),
    ("tpu", False), ("cuda:", False), ("cuda:-1", False), ("CPU", False), ("cuda:1 ", False),
])
def test_recipe_device_names_a_gpu(value, schema_ok):
    """device: cuda:N is a recipe value (the N-th GPU); anything else is refused by the
    schema with the allowed values; prepare checks the device exists on this machine."""
    from awch_scale.errors import RecipeError
    from awch_scale.run.recipe import parse_recipe

    text = (Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml").read_text()
    text = re.sub(r"(?m)^device:.*$", "", text) + f"\ndevice: '{value}'\n"
    if not schema_ok:
        with pytest.raises(RecipeError, match="'device': .*allowed: auto, cpu, cuda, cuda:N"):
            parse_recipe(text, "t")
        return
    recipe = parse_recipe(text, "t")
    assert recipe.device == value
    n_gpus = torch.cuda.device_count()
    index = int(value.split(":")[1]) if ":" in value else 0
    if value.startswith("cuda") and index >= n_gpus:
        with pytest.raises(RecipeError, match=r"^recipe 'device' = '" + re.escape(value)):
            prepare(recipe, text)
