"""Whether a store can be resumed: the recipes compared parsed (values count, comments and
formatting do not), ``validate`` saying what ``analyze`` would do with the store, and
``--device`` replacing the recipe's device without refusing its store."""

from __future__ import annotations

import json

import pytest
import yaml
import zarr
from cases import analysed_recipe, run_cli, write_recipe

from awch_scale.run.resume import recipe_differences, resume_status


def flat(text: str) -> str:
    return " ".join(text.split())


def test_recipe_differences_are_values_not_text(tmp_path):
    text = write_recipe(tmp_path).read_text()
    recipe = yaml.safe_load(text)
    assert recipe_differences(text, "# a comment\n" + text) == []
    assert recipe_differences(text, yaml.safe_dump(recipe, default_flow_style=True)) == []
    recipe["train"]["lr"] = 0.05
    recipe["analysis"]["k"] = 4
    assert recipe_differences(text, yaml.safe_dump(recipe)) == ["train.lr: 0.1 -> 0.05",
                                                               "analysis.k: 5 -> 4"]
    # a value written out that equals the default is the same recipe
    recipe = yaml.safe_load(text)
    recipe["loss"] = "ce"
    recipe["device"] = "auto"
    assert recipe_differences(text, yaml.safe_dump(recipe)) == []
    many = yaml.safe_load(text)
    many["train"].update(lr=0.3, batch_size=5, epochs=4)
    many["analysis"].update(k=3, chunk_size=8, epochs=[1, 2])
    lines = recipe_differences(text, yaml.safe_dump(many), limit=3)
    assert len(lines) == 4 and lines[-1] == "... and 3 more"
    assert recipe_differences("name: x\n", text)[0].startswith(
        "the store's recipe is not valid for this version")


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A tiny recipe (2 runs x 2 epochs) analysed into its store."""
    return analysed_recipe(tmp_path_factory.mktemp("resume"))


def test_validate_says_what_analyze_does_with_the_store(tmp_path, analysed):
    path, store = analysed
    fresh = run_cli("validate", str(path), "--store", str(tmp_path / "new.zarr"))
    assert fresh.exit_code == 0, fresh.output
    assert "does not exist yet: analyze creates it" in flat(fresh.output)

    same = run_cli("validate", str(path))
    assert same.exit_code == 0, same.output
    assert "holds all 4 of 4 analyses" in flat(same.output)
    assert "nothing left to do" in flat(same.output)

    commented = tmp_path / "commented.yaml"
    commented.write_text("# the same values\n" + path.read_text())
    assert "holds all 4 of 4 analyses" in flat(run_cli("validate", str(commented)).output)

    changed = tmp_path / "changed.yaml"
    recipe = yaml.safe_load(path.read_text())
    recipe["train"]["lr"] = 0.05
    changed.write_text(yaml.safe_dump(recipe))
    refused = run_cli("validate", str(changed))
    assert refused.exit_code == 0, refused.output  # the recipe is valid; its store is not
    assert "analyze refuses it" in flat(refused.output)
    assert "train.lr: 0.1 -> 0.05" in flat(refused.output)
    again = run_cli("analyze", str(changed), "-q")
    assert again.exit_code == 2 and "train.lr: 0.1 -> 0.05" in flat(again.output)


def test_validate_counts_what_is_left(tmp_path, analysed):
    import shutil

    path, store = analysed
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    group = zarr.open_group(str(copy), mode="r+")
    done = group["done"][...]
    done.flat[-1] = False
    group["done"][...] = done
    text = path.read_text()
    assert resume_status(copy, text) == (
        f"store {copy} was made by this recipe and holds 3 of 4 analyses: analyze resumes it")
    (tmp_path / "other").mkdir()
    assert "does not exist yet" in resume_status(tmp_path / "other", text)
    # what analyze would refuse before writing, found without writing anything
    (tmp_path / "file").write_text("x")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    assert resume_status(tmp_path / "file", text).startswith(
        f"analyze refuses the store path: store path {tmp_path / 'file'} is a file")
    assert "is a folder that is not an awch-scale store" in resume_status(
        tmp_path / "notes", text)
    assert f"lies inside the store {copy}" in resume_status(copy / "inner.zarr", text)
    assert "is a file, not a folder" in resume_status(tmp_path / "file" / "s.zarr", text)
    assert sorted(tmp_path.rglob("*")) == before
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w")
    assert resume_status(foreign, text).startswith("analyze cannot resume it: ")


def test_device_option(tmp_path, analysed):
    path, store = analysed
    bad = run_cli("analyze", str(path), "--device", "gpu", "-q")
    assert bad.exit_code == 2
    assert "--device" in flat(bad.output) and "allowed: auto, cpu, cuda, cuda:N" in \
        flat(bad.output) and "Traceback" not in bad.output
    out = tmp_path / "cpu.zarr"
    ok = run_cli("analyze", str(path), "--device", "cpu", "--store", str(out), "-q")
    assert ok.exit_code == 0, ok.output
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["device"] == "cpu"
    provenance = json.loads(str(group["provenance"][0, 0]))
    assert provenance["device"] == "cpu"
    # the store of the recipe's device resumes with --device: nothing left to do
    assert "holds all 4 of 4" in flat(run_cli("validate", str(path), "--device",
                                              "cpu").output)
