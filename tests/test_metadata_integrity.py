"""The group metadata is checksummed like the chunks (issue 20, metadata integrity).

Each attribute of the group's ``zarr.json`` (recipe, loss, k, targets, ...) has a
SHA-256 in ``attrs_sha256``, written with it. A hand edit is reported by ``verify`` as
damage naming the edited attributes (exit 1, advice that it cannot be repaired in
place), and ``show``/``table``/``report``/``analyze`` refuse the store (exit 2, naming
``verify``) instead of printing the edited values. A store written before the
checksums existed stays readable, and ``verify`` says that its attributes cannot be
checked.
"""

from __future__ import annotations

import json
import shutil

import pytest
from cases import analysed_recipe, run_cli

from awch_scale.results.integrity import CHECKSUMS, attr_checksums, edited_attrs

ONE_RUN = {"runs.seeds": [0], "analysis.epochs": [3], "analysis.spectra": None,
           "analysis.awd": {"draws": 2, "probe": 6, "partner_batches": 2}}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return analysed_recipe(tmp_path_factory.mktemp("finished"), **ONE_RUN)


def _edit(store, change):
    meta_path = store / "zarr.json"
    meta = json.loads(meta_path.read_text())
    change(meta["attributes"])
    meta_path.write_text(json.dumps(meta, indent=2))


def _set(key, value):
    return lambda attrs: attrs.__setitem__(key, value)


EDITS = {
    "loss ce -> mse": (_set("loss", "mse"), "loss"),
    "recipe text": (lambda a: a.__setitem__("recipe", a["recipe"].replace("lr: 0.1",
                                                                          "lr: 0.2")),
                    "recipe"),
    "k": (_set("k", 4), "k"),
    "variables list": (lambda a: a["variables"].remove("gamma"), "variables"),
    "attribute added": (_set("note", "mine"), "added note"),
    "attribute removed": (lambda a: a.pop("n_fit"), "removed n_fit"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_hand_edited_metadata_is_damage(tmp_path, finished, edit):
    recipe, source = finished
    store = tmp_path / "tiny.zarr"
    shutil.copytree(source, store)
    change, named = EDITS[edit]
    _edit(store, change)
    result = run_cli("verify", str(store))
    flat = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert f"(group): attributes edited since they were written ({named})" in flat, flat
    assert "cannot be repaired in place" in flat and "--repair (redoes" not in flat
    for command in (["show"], ["table"], ["report", "--out", str(tmp_path / "r")]):
        shown = run_cli(command[0], str(store), *command[1:])
        flat = " ".join(shown.output.split())
        assert shown.exit_code == 2, (command, shown.output)
        assert "was edited after it was written" in flat and named in flat, flat
        assert "awch-scale verify" in flat and "Traceback" not in flat
        assert "| MSE |" not in shown.output  # the edited loss is not printed
    assert not (tmp_path / "r").exists()
    again = run_cli("analyze", str(recipe), "-q", "--store", str(store))
    assert again.exit_code == 2 and "Traceback" not in again.output


def test_intact_store_has_a_checksum_per_attribute(finished):
    _, store = finished
    attrs = json.loads((store / "zarr.json").read_text())["attributes"]
    assert set(attrs[CHECKSUMS]) == set(attr_checksums(attrs))
    assert {"recipe", "loss", "k", "targets", "D", "variables"} <= set(attrs[CHECKSUMS])
    assert edited_attrs(attrs) == []
    result = run_cli("verify", str(store))
    assert result.exit_code == 0 and "carry no checksums" not in result.output


def test_failures_record_is_not_checked(tmp_path, finished):
    """``failures`` changes while a store is written (not covered): editing it is no
    damage."""
    _, source = finished
    store = tmp_path / "tiny.zarr"
    shutil.copytree(source, store)
    _edit(store, _set("failures", {"0/3": "something"}))
    assert run_cli("verify", str(store)).exit_code == 0


def test_store_without_checksums_stays_readable(tmp_path, finished):
    """A store written before the checksums (simulated: the attribute removed) verifies
    intact with a note, and every reading command works."""
    recipe, source = finished
    store = tmp_path / "tiny.zarr"
    shutil.copytree(source, store)
    _edit(store, lambda a: a.pop(CHECKSUMS))
    result = run_cli("verify", str(store))
    flat = " ".join(result.output.split())
    assert result.exit_code == 0 and "intact" in flat, flat
    assert "carry no checksums" in flat and "cannot be detected" in flat
    for command in ("show", "table"):
        assert run_cli(command, str(store)).exit_code == 0, command
    # resuming it (nothing to do) neither adds checksums nor fails
    again = run_cli("analyze", str(recipe), "-q", "--store", str(store))
    assert again.exit_code == 0, again.output
    assert CHECKSUMS not in json.loads((store / "zarr.json").read_text())["attributes"]
