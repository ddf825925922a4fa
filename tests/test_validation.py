"""One validator: every recipe ``analyze`` would reject, ``validate`` rejects too.

Each case is a change to the tiny recipe that cannot run. Both commands must exit with
status 2, print one paragraph naming the recipe key (no traceback), and write nothing:
no store and no checkpoint. The library (``analyze_checkpoint``) refuses the same
settings through the same validator.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cases import _DELETE, run_cli, write_recipe

from awch_scale import analyze_checkpoint
from awch_scale.errors import NonFiniteError, SettingsError, TargetError, UnknownSettingError

CASES = {
    # the case: 2 classes of 9 samples, B = 10 needs 10 per class for two batches
    "awd-classes-too-small": ({"data.train_per_class": 9, "train.batch_size": 10},
                              "'analysis.awd'"),
    "k-not-below-D": ({"analysis.k": 36}, "'analysis.k'"),
    "k-boolean": ({"analysis.k": True}, "'analysis.k'"),
    "n_fit-below-3": ({"analysis.n_fit": 2}, "'analysis.n_fit'"),
    "n_fit-above-k": ({"analysis.n_fit": 6}, "'analysis.n_fit'"),
    "ncv-not-above-k": ({"analysis.eigen": {"ncv": 5}}, "'analysis.eigen.ncv'"),
    "tol-infinite": ({"analysis.eigen": {"tol": float("inf")}}, "'analysis.eigen.tol'"),
    "budget-nan": ({"analysis.memory_budget_mb": float("nan")}, "'analysis.memory_budget_mb'"),
    "spectra-r-not-below-D": ({"analysis.spectra": {"r": 36}}, "'analysis.spectra.r'"),
    "probe-above-N": ({"analysis.awd": {"probe": 61}}, "'analysis.awd.probe'"),
    "n_modes-above-d_out": ({"analysis.awd": {"n_modes": 7}}, "'analysis.awd.n_modes'"),
    # AWD on a conv block computes h2 and c_pair (issue 19); c_awd_raw needs a Linear
    "c_awd_raw-on-conv": ({"analysis.target": "conv1", "data.dataset": "digits",
                           "data.gauss": _DELETE, "model.arch": "cnn",
                           "analysis.stats": {"covariance": ["covar", "c_awd_raw"]}},
                          "'analysis.stats.covariance'"),
    "duplicate-targets": ({"analysis.target": ["fc2", "fc2"]}, "analysis.target"),
    "empty-targets": ({"analysis.target": []}, "analysis.target"),
    "negative-stream-seed": ({"analysis.seeds": {"awd": -1}}, "'analysis.seeds.awd'"),
    "unknown-diag-only": ({"analysis.diag_only": ["hess_eigval"]}, "'analysis.diag_only"),
    "unknown-stats-covariance": ({"analysis.stats": {"covariance": "fisher"}},
                                 "'analysis.stats.covariance"),
    "batch-above-analysis-set": ({"data.analysis_size": 8}, "'train.batch_size'"),
    "unknown-pairing": ({"analysis.awd": {"pairing": "nearest"}}, "'analysis.awd.pairing'"),
    "lr-infinite": ({"train.lr": float("inf")}, "'train.lr'"),
    "epochs-boolean": ({"train.epochs": True}, "'train.epochs'"),
    "negative-run-seed": ({"runs.seeds": [-1]}, "'runs.seeds.0'"),
    "name-too-long": ({"name": "x" * 300}, "'name'"),
    "model-too-large": ({"model.width": 10**6}, "'model' has 1e+12 parameters"),
    "seed-beyond-int64": ({"runs.seeds": [2**70]}, "'runs.seeds.0'"),
    "data-seed-boolean": ({"data.seed": True}, "'data.seed'"),
    "label-noise-nan": ({"data.label_noise": float("nan")}, "'data.label_noise'"),
    "dropout-nan": ({"model.dropout": float("nan")}, "'model.dropout'"),
    "unknown-target": ({"analysis.target": "fc9"}, "'analysis.target'"),
}


@pytest.mark.parametrize("text,needle", [
    ("name: a\nx: &a [1,1,1,1,1,1,1,1,1]\n" + "".join(f"y{i}: &b{i} [*a,*a,*a,*a,*a]\n"
                                                     for i in range(30)), "YAML aliases"),
    (b"name: caf\xe9\n", "not UTF-8"),
    ("name: [unclosed\n" + "x" * 5000, "not valid YAML"),
])
def test_hostile_recipe_files_are_refused_quickly(tmp_path, text, needle):
    path = tmp_path / "recipe.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    for command in ("validate", "analyze"):
        result = run_cli(command, str(path))
        assert result.exit_code == 2 and needle in " ".join(result.output.split())
        assert len(result.output) < 3000 and "Traceback" not in result.output


@pytest.mark.parametrize("changes,key", CASES.values(), ids=CASES.keys())
def test_validate_and_analyze_refuse_alike(tmp_path, changes, key):
    path = write_recipe(tmp_path, **changes)
    for command in ("validate", "analyze"):
        result = run_cli(command, str(path))
        assert result.exit_code == 2, (command, result.output)
        flat = " ".join(result.output.split())
        assert "Traceback" not in result.output
        assert key in flat, (command, flat)
        assert not (tmp_path / "out").exists(), f"{command} wrote into {tmp_path / 'out'}"


def _tiny_model(d_in=6, width=5, classes=2):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(d_in, width, bias=False), torch.nn.Tanh(),
                               torch.nn.Linear(width, classes, bias=False))


def test_library_refuses_the_same_settings():
    model = _tiny_model()
    x = torch.randn(18, 6, dtype=torch.float64)
    y = torch.arange(18) % 2  # 2 classes of 9
    kw = dict(loss="ce", dtype=torch.float64, k=3)
    with pytest.raises(SettingsError, match="'awd' needs two disjoint class-balanced batches"):
        analyze_checkpoint(model, "0", x, y, batch_size=10, **kw)
    with pytest.raises(SettingsError, match="'k' = 30 must be smaller"):
        analyze_checkpoint(model, "0", x, y, batch_size=4, **{**kw, "k": 30})
    with pytest.raises(SettingsError, match="n_fit"):
        analyze_checkpoint(model, "0", x, y, batch_size=4, n_fit=2, **kw)


@pytest.mark.parametrize("bad,error,match", [
    (dict(labels=torch.tensor([0, 1, 2] * 6)), SettingsError, r"0\.\.1 \(the model has K = 2"),
    (dict(labels=torch.arange(18) % 2 * 1.0), SettingsError, "integer class ids"),
    (dict(labels=(torch.arange(18) % 2)[:, None]), SettingsError,
     r"one label per token of 1 positions, so the model must return logits \(samples, 1, K\)"),
    (dict(labels=(torch.arange(18) % 2)[:, None, None]), SettingsError, "'labels' must be 1-D"),
    (dict(inputs=torch.randn(18)), SettingsError, "'inputs' must have a leading sample"),
    (dict(inputs=torch.randn(17, 6)), SettingsError, "17 samples but 'labels' has 18"),
    (dict(inputs=torch.randn(0, 6), labels=torch.zeros(0, dtype=torch.long)), SettingsError,
     "empty"),
    (dict(inputs=torch.full((18, 6), float("nan"))), NonFiniteError, "'inputs' contain NaN"),
    (dict(inputs=[[0.0] * 6] * 18), SettingsError, "torch.Tensor or numpy.ndarray"),
    (dict(inputs=torch.randn(18, 7)), SettingsError, "cannot take 'inputs' of shape"),
    (dict(model=torch.nn.Tanh()), SettingsError, "'model' has no parameters"),
    # the other arguments: each message names the argument and what is allowed
    (dict(loss="foo"), SettingsError, r"^'loss' = 'foo' is unknown; allowed: ce, mse, lmse$"),
    (dict(loss=len), SettingsError, "^'loss' must be a loss name, one of ce, mse, lmse, "
     "got builtin_function_or_method$"),
    (dict(target=2), TargetError, "^'target' must be a module name or a list of parameter "
     "names, got int 2"),
    (dict(target=[0]), TargetError, "^'target' must be a module name or a list of parameter"),
    (dict(target=[]), TargetError, "^'target' is an empty list; give a module name"),
    (dict(seed="a"), SettingsError, "^'seed' = 'a' must be a non-negative integer$"),
    (dict(seed=-1), SettingsError, "^'seed' = -1 must be a non-negative integer$"),
    (dict(seed=True), SettingsError, "^'seed' = True must be a non-negative integer$"),
    (dict(device="tpu"), SettingsError, r"^'device' = 'tpu' is not a device; allowed: 'auto', "
     r"'cpu', 'cuda', 'cuda:N'"),
    (dict(device="meta"), SettingsError, "^'device' = 'meta' is not supported; allowed: 'auto'"),
    (dict(device=0.5), SettingsError, "^'device' must be a device name, got float"),
    (dict(device="cuda:99"), SettingsError, "^'device' = 'cuda:99' (needs CUDA|does not exist)"),
    pytest.param(dict(device="cuda"), SettingsError, "^'device' = 'cuda' needs CUDA, but no "
                 "CUDA device is available; allowed: 'auto', 'cpu'$",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")),
    (dict(foo=1), UnknownSettingError, "^unknown analysis setting 'foo'; allowed: k, n_fit,"),
    (dict(settings=5), SettingsError, "^'settings' must be an AnalysisSettings, a dict of its "
     "fields or None, got int$"),
    (dict(settings={"k": "a"}), SettingsError, "^'k': Input should be a valid integer"),
    (dict(settings={"kk": 3}), UnknownSettingError, "^unknown analysis setting 'kk'"),
    (dict(dtype="float16"), SettingsError, r"^'dtype' = 'float16' is not allowed; allowed: "
     r"torch\.float32, torch\.float64, 'float32', 'float64' or None"),
    (dict(dtype=torch.float16), SettingsError, r"^'dtype' = torch\.float16 is not allowed"),
])
def test_library_inputs_are_checked_up_front(bad, error, match):
    kw = dict(model=_tiny_model(), target="0", inputs=torch.randn(18, 6),
              labels=torch.arange(18) % 2, loss="ce", batch_size=4, k=3, awd=None)
    with pytest.raises(error, match=match):
        analyze_checkpoint(**{**kw, **bad})


def test_unknown_setting_is_still_a_type_error():
    """Callers that caught the TypeError of an unknown keyword keep working."""
    with pytest.raises(TypeError, match="unknown analysis setting 'foo'"):
        analyze_checkpoint(_tiny_model(), "0", torch.randn(18, 6), torch.arange(18) % 2,
                           loss="ce", batch_size=4, k=3, awd=None, foo=1)


def test_settings_dict_and_dtype_name_are_accepted():
    """settings={...} is validated like keyword overrides of the defaults; dtype may be
    named as in a recipe ('float64')."""
    from awch_scale.settings import AnalysisSettings

    x, y = torch.randn(18, 6), torch.arange(18) % 2
    kw = dict(loss="ce", batch_size=4, spectra=None, fisher=None, stats=None)
    a = analyze_checkpoint(_tiny_model(), "0", x, y, settings={"k": 3, "awd": None,
                                                               "eigen": {"tol": 1e-10}},
                           dtype="float64", **kw)
    b = analyze_checkpoint(_tiny_model(), "0", x, y, settings=AnalysisSettings(
        k=3, awd=None, eigen={"tol": 1e-10}), dtype=torch.float64, **kw)
    assert a.attrs["dtype"] == "float64" and a.attrs["settings"] == b.attrs["settings"]
    np.testing.assert_array_equal(a.hess_eigval, b.hess_eigval)


def test_nan_weight_is_named():
    model = _tiny_model()
    with torch.no_grad():
        model[2].weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="'2.weight'"):
        analyze_checkpoint(model, "0", torch.randn(18, 6), torch.arange(18) % 2, loss="ce",
                           batch_size=4, k=3, awd=None)


def test_numpy_inputs_are_accepted():
    model = _tiny_model()
    x = np.random.default_rng(0).standard_normal((18, 6))
    y = np.arange(18) % 2
    a = analyze_checkpoint(model, "0", x, y, loss="ce", batch_size=4, k=3, awd=None)
    b = analyze_checkpoint(model, "0", torch.from_numpy(x), torch.from_numpy(y), loss="ce",
                           batch_size=4, k=3, awd=None)
    np.testing.assert_allclose(a.hess_eigval, b.hess_eigval, rtol=1e-12)


@pytest.mark.parametrize("method", ["lanczos", "eigsh", "block"])
def test_dead_network_is_named_by_every_eigensolver(method):
    """Every unit after the target switched off: H of the target block is 0. ARPACK
    stops at its start vector; the block solver would return zero eigenvalues and gamma
    NaN. Both raise the same ConvergenceError (each solver named; "auto" picks by timing)."""
    from awch_scale.errors import ConvergenceError
    from awch_scale.linalg.eigen import BLOCK_FROM_K, zero_operator_error

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 5, bias=False), torch.nn.ReLU(),
                                torch.nn.Linear(5, 2, bias=False))  # target "0": D = 40
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
    x = torch.rand(18, 8) + 0.1  # positive inputs: every pre-activation is negative
    k = BLOCK_FROM_K if method == "block" else 3
    with pytest.raises(ConvergenceError) as err:
        analyze_checkpoint(model, "0", x, torch.arange(18) % 2, loss="ce", batch_size=4,
                           k=k, awd=None, eigen={"method": method})
    assert str(err.value) == str(zero_operator_error())
    assert "dead network" in str(err.value) and "lower train.lr" in str(err.value)


def test_zero_operator_is_refused_by_top_eigenpairs():
    """The library entry point, every method; a nonzero operator of rank 1 (top-3
    eigenvalues g^T g, 0, 0) is still solved."""
    from types import SimpleNamespace

    from awch_scale.errors import ConvergenceError
    from awch_scale.linalg.eigen import top_eigenpairs, zero_operator_error
    from awch_scale.model.operators.algebra import LowRankOperator

    problem = SimpleNamespace(D=40, device=torch.device("cpu"))
    zero = LowRankOperator(problem, torch.zeros(40, 1, dtype=torch.float64))
    for method, k in (("lanczos", 3), ("eigsh", 3), ("block", 3), ("auto", 32)):
        with pytest.raises(ConvergenceError) as err:
            top_eigenpairs(zero, k, method=method)
        assert str(err.value) == str(zero_operator_error()), method
    g = torch.from_numpy(np.random.default_rng(0).standard_normal((40, 1)))
    for method in ("lanczos", "eigsh", "block"):
        basis = top_eigenpairs(LowRankOperator(problem, g), 3, method=method, tol=1e-10)
        np.testing.assert_allclose(basis.values[0], float(g.T @ g), rtol=1e-10)


def test_corrupt_mnist_files_are_named_corrupt_not_missing(tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03truncated")
    path = write_recipe(tmp_path, **{"data.dataset": "mnist", "data.root": str(tmp_path / "data"),
                                     "data.gauss": _DELETE})
    result = run_cli("validate", str(path))
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and "corrupt or truncated" in flat and "not found" not in flat
