"""The case registry (tests/problems.py) and its helpers: the dense references agree
with each other and with finite differences, the comparison helpers fail when they
should, and a cached case is built once.

- mean per-sample gradient = gradient of the mean loss: 1e-12 of max|g| (observed ~1e-16);
- H against central differences of the gradient (step 1e-5, error O(h^2)):
  1e-7 of max|H| (observed 3e-11 to 7e-11);
- eigenpairs: max|H U - U diag(vals)| <= 1e-12 max|vals| (observed ~2e-16, 5e-16).
"""

from __future__ import annotations

import dense_reference as ref
import numpy as np
import problems
import pytest
import torch

CASES = [problems.case("fc", "fc2", "ce", 23), problems.case("cnn", ("conv.weight", "fc1.weight"),
                                                             "mse", 23)]


@pytest.mark.parametrize("case", CASES, ids=problems.ids(CASES))
def test_dense_references_are_consistent(case, dense):
    f = ref.block_loss(dense.model, dense.target, dense.x, dense.y, dense.loss)
    w = ref.flat_block(dense.model, dense.target)

    def grad(v):
        return torch.func.grad(f)(v).detach().numpy()

    g = grad(w)
    problems.assert_rel_close(dense.G.mean(axis=0), g, 1e-12)
    h = 1e-5
    eye = torch.eye(dense.D, dtype=torch.float64)
    fd = np.stack([(grad(w + h * e) - grad(w - h * e)) / (2 * h) for e in eye], axis=1)
    problems.assert_rel_close(dense.H, fd, 1e-7)
    vals, U = dense.vals, dense.U
    problems.assert_rel_close(dense.H @ U, U * vals, 1e-12, np.abs(vals).max())
    assert np.all(np.diff(vals) <= 0)


def test_cases_are_cached_and_hashable():
    a = problems.case("fc", ["fc2.weight", "out.weight"], "lmse", 23)
    b = problems.case("fc", ("fc2.weight", "out.weight"), "lmse", 23)
    assert a == b and problems.dense_reference(a) is problems.dense_reference(b)
    assert a.target_arg == ["fc2.weight", "out.weight"] and a.id == "fc-fc2+out-lmse"
    c = problems.case("fc", "fc2", "ce", 60, hidden=(8, 7), dtype=torch.float32)
    assert c.id == "fc-fc2-hidden8x7-ce-f32" and c.with_(loss="mse").loss == "mse"


def test_comparison_helpers_fail_when_they_should():
    x = np.array([[1.0, 2.0], [2.0, -4.0]])
    problems.assert_rel_close(x + 3e-11, x, 1e-11)  # 3e-11 <= 1e-11 * 4
    with pytest.raises(AssertionError):
        problems.assert_rel_close(x + 5e-11, x, 1e-11)
    problems.assert_symmetric(x)
    with pytest.raises(AssertionError):
        problems.assert_symmetric(x + np.array([[0.0, 1e-14], [0.0, 0.0]]))
    problems.assert_deterministic(x, x * (1 + 1e-13))
    with pytest.raises(AssertionError):
        problems.assert_deterministic(x, x * (1 + 1e-11))
    with pytest.raises(AssertionError):  # integers: exactly
        problems.assert_deterministic(np.arange(3), np.array([0, 1, 3]))
    problems.assert_deterministic(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]))
    with pytest.raises(AssertionError):
        problems.assert_untouched(torch.ones(2), torch.ones(2) + 1e-7)
    with pytest.raises(AssertionError):
        problems.assert_differ(x, x * (1 + 1e-9))
    problems.assert_entrywise_close(x * (1 + 1e-9), x, 1e-8)
    with pytest.raises(AssertionError):
        problems.assert_entrywise_close(x * (1 + 1e-7), x, 1e-8)


def test_every_case_on_every_device():
    """The registry crosses every case with every device (BackPACK's make_test_problems):
    a CUDA run exercises all of them; the devices of a case share its dense reference."""
    base = [problems.case("fc", "fc2", loss, 23) for loss in problems.LOSSES]
    crossed = problems.cases([("fc", "fc2")], problems.LOSSES, 23)
    assert crossed == problems.on_devices(base)
    assert [(c.loss, c.device) for c in crossed] == [
        (loss, d) for loss in problems.LOSSES for d in problems.DEVICE_NAMES]
    assert problems.ids(crossed[:2]) == ["fc-fc2-ce-cpu", "fc-fc2-ce-cuda"]
    assert problems.ids(base[:1]) == ["fc-fc2-ce"] and base[0].device is None
    cpu, cuda = crossed[:2]
    assert problems.dense_reference(cpu) is problems.dense_reference(cuda)
    assert problems.dense_reference(cuda) is problems.dense_reference(base[0])
    assert problems.available("cpu")
    assert problems.available("cuda") == torch.cuda.is_available()


ON_DEVICES = problems.on_devices([problems.case("fc", "fc2", "ce", 23)])


@pytest.mark.parametrize("case", ON_DEVICES, ids=problems.ids(ON_DEVICES))
def test_device_fixture_is_the_cases(case, device, dense):
    assert device == case.device
    problem = problems.build(case)[0].to(device)
    assert next(problem.parameters()).device.type == device


def test_device_fixture_crosses_tests_without_a_case(device, request):
    assert device in problems.DEVICE_NAMES and request.node.callspec.params["device"] == device
