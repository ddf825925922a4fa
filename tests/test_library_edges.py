"""Library edge cases end in an AwchError naming the argument (issue 20): a model that
returns a tuple, a target used twice in ``forward`` or not at all, a model on the
``meta`` device; the spectra stage's "did not converge" names that stage; a label noise
that leaves no analysis sample names ``data.label_noise``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cases import run_cli, write_recipe
from torch import nn

from awch_scale import analyze_checkpoint
from awch_scale.errors import AwchError


class Tuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 4, bias=False)
        self.out = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        return self.out(torch.relu(self.fc1(x))), x


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 5, bias=False)
        self.out = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.out(torch.relu(self.fc1(torch.relu(self.fc1(x)))))


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 4, bias=False)
        self.spare = nn.Linear(4, 4, bias=False)
        self.out = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        return self.out(torch.relu(self.fc1(x)))


CASES = {
    "returns a tuple": (Tuple, "fc1", None, "'model' must return one tensor of logits"),
    "target used twice": (Twice, "fc1", None, "layer 'fc1' is called 2 times in one "
                                              "forward pass"),
    "target not used": (Unused, "spare", None, "'target' 'spare' is not used by the "
                                               "model's forward pass"),
    "target parameters not used": (Unused, ["spare.weight"], None,
                                   "is not used by the model's forward pass"),
    "model on the meta device": (Unused, "fc1", "meta", "'model' is on the meta device"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_models_are_named(case):
    make, target, device, needle = CASES[case]
    torch.manual_seed(0)
    model = make()
    if device:
        model = model.to(device)
    x, y = torch.randn(24, 5), torch.randint(0, 3, (24,))
    with pytest.raises(AwchError) as info:
        analyze_checkpoint(model, target, x, y, loss="ce", k=2, batch_size=8,
                           dtype=torch.float64, awd=None, spectra=None)
    assert needle in str(info.value), str(info.value)


def test_spectra_convergence_names_the_stage(monkeypatch):
    """A spectra solve that does not reach its accuracy leaves NaN (never a wrong value)
    with a reason that names the spectra stage's settings; the analysis goes on."""
    import json

    from awch_scale.analysis import spectra_krylov as spectra_solvers

    real = spectra_solvers.rayleigh_residuals

    def far_off(op, vectors):
        values, residuals = real(op, vectors)
        return values, residuals + 1.0  # every residual far above tol x scale

    monkeypatch.setattr(spectra_solvers, "rayleigh_residuals", far_off)
    torch.manual_seed(0)
    x, y = torch.randn(24, 5), torch.randint(0, 3, (24,))
    model = torch.nn.Sequential(torch.nn.Linear(5, 4, bias=False), torch.nn.ReLU(),
                                torch.nn.Linear(4, 3, bias=False)).double()
    ds = analyze_checkpoint(model, "2", x, y, loss="ce", k=3, batch_size=8,
                            dtype=torch.float64, awd=None,
                            spectra={"r": 2, "method": "krylov"})
    assert np.isnan(ds.m_eigval.values).all()
    notes = json.dumps(json.loads(ds.provenance.item()).get("spectra_notes", {}))
    assert "analysis.spectra.maxiter" in notes and "not within" in notes, notes


@pytest.mark.parametrize("noise", [0.99, 0.97])
def test_label_noise_leaving_no_analysis_set_names_the_key(tmp_path, noise):
    path = write_recipe(tmp_path, **{"data.label_noise": noise})
    for command in ("validate", "analyze"):
        result = run_cli(command, str(path))
        flat = " ".join(result.output.split())
        assert result.exit_code == 2 and "data.label_noise" in flat, flat
        assert "Traceback" not in flat
    assert not (tmp_path / "out").exists()
