"""Per-sample gradient backends against an explicit float64 loop (tolerance 1e-12)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from awch_scale.per_sample import gradient_function, projected_gradients
from awch_scale.problem import make_problem

LOSSES = {
    "ce": lambda z, y: -torch.log_softmax(z, -1)[torch.arange(len(y)), y],
    "mse": lambda z, y: ((torch.softmax(z, -1) - nn.functional.one_hot(y, z.shape[-1])) ** 2)
    .mean(-1),
    "lmse": lambda z, y: ((z - nn.functional.one_hot(y, z.shape[-1])) ** 2).mean(-1),
}


def _models():
    torch.manual_seed(1)
    fc = nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc1=nn.Linear(6, 5, bias=False),
                                   act=nn.Tanh(), fc2=nn.Linear(5, 4, bias=False),
                                   act2=nn.ReLU(), out=nn.Linear(4, 3, bias=False)))
    cnn = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3, padding=1, bias=False),
                                    act=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(2),
                                    flatten=nn.Flatten(), fc1=nn.Linear(8, 4, bias=False),
                                    act2=nn.Tanh(), out=nn.Linear(4, 3, bias=False)))
    return {"fc": (fc.double(), "fc2", (6,)), "cnn-fc1": (cnn.double(), "fc1", (1, 4, 4)),
            "cnn-conv": (cnn.double(), "conv", (1, 4, 4))}


def _loop(model, names, x, y, loss):
    params = dict(model.named_parameters())
    out = []
    for i in range(len(y)):
        li = LOSSES[loss](model(x[i:i + 1]), y[i:i + 1]).sum()
        grads = torch.autograd.grad(li, [params[n] for n in names])
        out.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(out)


@pytest.mark.parametrize("loss", ["ce", "mse", "lmse"])
@pytest.mark.parametrize("case", ["fc", "cnn-fc1", "cnn-conv"])
@pytest.mark.parametrize("backend", ["torch_func", "backpack"])
def test_backends_match_explicit_loop(loss, case, backend):
    model, target, shape = _models()[case]
    x = torch.randn(11, *shape, dtype=torch.float64)
    y = torch.randint(0, 3, (11,))
    problem = make_problem(model, target, x, y, loss, chunk_size=4)
    ref = _loop(model, problem.block_names, x, y, loss)
    grads = gradient_function(problem, backend)
    got = torch.cat([grads(xc, yc) for xc, yc in problem.chunks()])
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    V = torch.linalg.qr(torch.randn(problem.D, 3, dtype=torch.float64))[0]
    P = projected_gradients(problem, V, backend=backend)
    torch.testing.assert_close(P, ref @ V, rtol=1e-12, atol=1e-12)


def test_backpack_leaves_torch_func_head_usable():
    model, target, shape = _models()["fc"]
    x = torch.randn(5, *shape, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    problem = make_problem(model, target, x, y, "ce")
    feats = problem.features  # the head's inputs (the cached prefix output)
    gradient_function(problem, "backpack")(feats, problem.labels)
    # the torch.func path still works on the same problem afterwards
    got = gradient_function(problem, "torch_func")(feats, problem.labels)
    torch.testing.assert_close(got, _loop(model, problem.block_names, x, y, "ce"))


def test_unknown_backend():
    model, target, shape = _models()["fc"]
    problem = make_problem(model, target, torch.randn(3, *shape), torch.zeros(3, dtype=torch.long),
                           "ce")
    with pytest.raises(ValueError, match="allowed: auto, torch_func, backpack"):
        gradient_function(problem, "jax")
