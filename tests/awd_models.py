"""The AWD models of the SPEC 4 tests and their session-cached dense references.

Part of the case registry: ``tests/problems.py`` re-exports everything here (use
``problems.mlp``, ``problems.awd_reference``) and checks at the end of the session that
no test wrote to the cached models and data (:func:`cached`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import dense_reference as ref
import numpy as np
import torch
from torch import Tensor, nn

ACTS = {"tanh": nn.Tanh, "softplus": nn.Softplus, "relu": nn.ReLU}


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """PyTorch's default init after ``torch.manual_seed(seed)``, global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def mlp(act: str, seed: int = 0, n_out: int = 3) -> nn.Module:
    """Sequential(flatten, fc1 6->5, act, fc2 5->4, act, out 4->n_out), no bias; target fc2."""
    return _seeded(seed, lambda: nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(6, 5, bias=False), act1=ACTS[act](),
        fc2=nn.Linear(5, 4, bias=False), act2=ACTS[act](), out=nn.Linear(4, n_out, bias=False),
    )).double())


def cnn(act: str, seed: int = 0) -> nn.Module:
    """Conv2d(1->2) ReLU AdaptiveAvgPool2d(2) Flatten fc1 8->5 act out 5->3; target fc1."""
    return _seeded(seed, lambda: nn.Sequential(OrderedDict(
        conv=nn.Conv2d(1, 2, 3, padding=1, bias=False), relu=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(2), flatten=nn.Flatten(), fc1=nn.Linear(8, 5, bias=False),
        act=ACTS[act](), out=nn.Linear(5, 3, bias=False),
    )).double())


class FreeMLP(nn.Module):
    """Not a Sequential: exercises the forward-hook split (target fc2)."""

    def __init__(self, act: str):
        super().__init__()
        self.fc1 = nn.Linear(6, 5, bias=False)
        self.fc2 = nn.Linear(5, 4, bias=False)
        self.out = nn.Linear(4, 3, bias=False)
        self.act = ACTS[act]()

    def forward(self, x):
        return self.out(self.act(self.fc2(self.act(self.fc1(x.flatten(1))))))


def free_mlp(act: str, seed: int = 0) -> nn.Module:
    """A seeded float64 :class:`FreeMLP`."""
    return _seeded(seed, lambda: FreeMLP(act).double())


def nested(act: str, seed: int = 0) -> nn.Module:
    """Sequential whose target is inside a child (target 'top.0'): also the hook split."""
    def build():
        body = nn.Sequential(nn.Flatten(), nn.Linear(6, 5, bias=False), ACTS[act]())
        top = nn.Sequential(nn.Linear(5, 4, bias=False), ACTS[act](),
                            nn.Linear(4, 3, bias=False))
        return nn.Sequential(OrderedDict(body=body, top=top)).double()
    return _seeded(seed, build)


def last(act: str, seed: int = 0) -> nn.Module:
    """Sequential(flatten, fc1 6->5, act, out 5->3): target 'out' (z = logits)."""
    return _seeded(seed, lambda: nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(6, 5, bias=False), act1=ACTS[act](),
        out=nn.Linear(5, 3, bias=False))).double())


AWD_MODELS = {
    "last": (last, "out", (1, 2, 3)),
    "mlp": (mlp, "fc2", (1, 2, 3)),
    "cnn": (cnn, "fc1", (1, 6, 6)),
    "free": (free_mlp, "fc2", (6,)),
    "nested": (nested, "top.0", (1, 2, 3)),
}
"""AWD model name -> (builder(act), target Linear module, input shape)."""


def class_data(shape, n_per_class=(10, 11, 9), seed=1) -> tuple[Tensor, Tensor]:
    """float64 inputs shifted by 0.7 * class and shuffled labels with the given counts."""
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    x = torch.randn(len(y), *shape, generator=g, dtype=torch.float64)
    x += 0.7 * y.double().view(-1, *[1] * len(shape))  # class-dependent shift
    return x, y[torch.randperm(len(y), generator=g)]


@dataclass(frozen=True)
class AWDCase:
    """Dense AWD reference of a model: ``dense`` (:class:`dense_reference.PerSampleDense`),
    ``V`` the top-k dense eigenvectors of H (float64 tensor, D x k), ``lam`` their
    eigenvalues (NumPy, descending)."""

    dense: ref.PerSampleDense
    V: Tensor
    lam: np.ndarray


_AWD: dict[tuple, tuple] = {}


def _awd_dense(model_name: str, act: str, loss: str, n_per_class: tuple[int, ...]):
    key = (model_name, act, loss, n_per_class)
    if key not in _AWD:
        build, target, shape = AWD_MODELS[model_name]
        x, y = class_data(shape, n_per_class)
        dense = ref.PerSampleDense(build(act), target, x, y, loss)
        lam, U = torch.linalg.eigh(dense.H)
        _AWD[key] = dense, lam.flip(0), U.flip(1)
    return _AWD[key]


def awd_reference(model_name: str, act: str, loss: str, k: int = 6,
                  n_per_class: tuple[int, ...] = (10, 11, 9)) -> AWDCase:
    """The session-cached dense AWD reference of ``AWD_MODELS[model_name]`` on
    :func:`class_data`, with its top-k eigenpairs."""
    dense, lam, U = _awd_dense(model_name, act, loss, tuple(n_per_class))
    return AWDCase(dense, U[:, :k], lam[:k].numpy())


def cached() -> list[tuple[tuple, ref.PerSampleDense]]:
    """The session's cached AWD references: ((model name, act, loss, counts), dense)."""
    return [(key, value[0]) for key, value in _AWD.items()]
