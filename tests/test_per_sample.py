"""Per-sample gradient backends against the explicit float64 loop of
``dense_reference.per_sample_gradients`` (one ``torch.autograd.grad`` per sample);
tolerance rtol = atol = 1e-12 (``torch.testing.assert_close``)."""

from __future__ import annotations

import problems
import pytest
import torch

from awch_scale.model.per_sample import gradient_function, projected_gradients
from awch_scale.model.problem import make_problem

N = 11
CASES = problems.cases([("fc", "fc2"), ("cnn", "fc1"), ("cnn", "conv")], problems.LOSSES, N)
FC_CE = problems.on_devices([problems.case("fc", "fc2", "ce", N)])


def _problem(dense, device="cpu", **kw):
    return make_problem(dense.model, dense.target, dense.x, dense.y, dense.loss, device=device,
                        **kw)


@pytest.mark.parametrize("case", CASES, ids=problems.ids(CASES))
@pytest.mark.parametrize("backend", ["torch_func", "backpack"])
def test_backends_match_explicit_loop(case, dense, backend, device):
    problem = _problem(dense, device, chunk_size=4)
    ref = torch.from_numpy(dense.G).to(device)
    grads = gradient_function(problem, backend)
    got = torch.cat([grads(xc, yc) for xc, yc in problem.chunks()])
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    gen = torch.Generator().manual_seed(0)
    V = torch.linalg.qr(torch.randn(problem.D, 3, dtype=torch.float64, generator=gen))[0]
    V = V.to(device)
    P = projected_gradients(problem, V, backend=backend)
    torch.testing.assert_close(P, ref @ V, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", FC_CE, ids=problems.ids(FC_CE))
def test_backpack_leaves_torch_func_head_usable(case, dense, device):
    problem = _problem(dense, device)
    feats = problem.features  # the head's inputs (the cached prefix output)
    gradient_function(problem, "backpack")(feats, problem.labels)
    # the torch.func path still works on the same problem afterwards
    got = gradient_function(problem, "torch_func")(feats, problem.labels)
    torch.testing.assert_close(got, torch.from_numpy(dense.G).to(device))


@pytest.mark.parametrize("case", FC_CE, ids=problems.ids(FC_CE))
def test_unknown_backend(case, dense, device):
    problem = _problem(dense, device)
    with pytest.raises(ValueError, match="allowed: auto, torch_func, backpack"):
        gradient_function(problem, "jax")


@pytest.mark.parametrize("case", FC_CE, ids=problems.ids(FC_CE))
@pytest.mark.parametrize("backend", ["linear", "torch_func"])
def test_world_none_is_the_single_process(case, dense, device, backend):
    """``world=None`` (older callers) and the default one-process World give the same P."""
    problem = _problem(dense, device, chunk_size=4)
    V = torch.eye(problem.D, 2, dtype=torch.float64, device=device)
    P = projected_gradients(problem, V, backend=backend)
    torch.testing.assert_close(projected_gradients(problem, V, backend=backend, world=None), P,
                               rtol=0, atol=0)
    torch.testing.assert_close(P, torch.from_numpy(dense.G[:, :2]).to(device), rtol=1e-12,
                               atol=1e-12)
