"""The tiny models and data sets of the test suite's dense references, and its runtime.

Written independently of ``awch_scale``, like ``tests/dense_reference.py``, which
re-exports everything here (import as ``import dense_reference as ref`` and use
``ref.make_model``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block, restoring the count after.

    Tiny-model tests are dominated by per-op overhead; on a loaded 2-core machine the
    OpenMP thread pool makes a 6x6 conv ~500x slower (19 ms instead of 40 us).
    Use as a module-scoped autouse fixture::

        @pytest.fixture(autouse=True, scope="module")
        def _one_thread():
            with ref.single_thread():
                yield
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- models

FC_INPUT_SHAPE = (1, 2, 3)
"""Input shape (without batch) of :func:`make_fc` models with the default d_in = 6."""

CNN_INPUT_SHAPE = (1, 6, 6)
"""Input shape (without batch) of :func:`make_cnn` models."""


def _activation(name: str) -> nn.Module:
    return {"tanh": nn.Tanh, "relu": nn.ReLU}[name]()


def make_fc(
    d_in: int = 6,
    hidden: tuple[int, int] = (5, 4),
    n_out: int = 4,
    *,
    act: str = "tanh",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    scale: float = 1.0,
) -> nn.Sequential:
    """Bias-free MLP ``Sequential(flatten, fc1, act1, fc2, act2, out)``.

    Child names: ``flatten``, ``fc1`` (d_in -> hidden[0]), ``act1``, ``fc2``
    (hidden[0] -> hidden[1]), ``act2``, ``out`` (hidden[1] -> n_out). Weights are
    PyTorch's default init seeded by ``seed`` (the global RNG is left untouched) times
    ``scale``. ``act`` is ``"tanh"`` (default: smooth, rich curvature) or ``"relu"``.
    """
    h1, h2 = hidden
    return _seeded(seed, scale, dtype, [
        ("flatten", nn.Flatten()),
        ("fc1", lambda: nn.Linear(d_in, h1, bias=False)), ("act1", _activation(act)),
        ("fc2", lambda: nn.Linear(h1, h2, bias=False)), ("act2", _activation(act)),
        ("out", lambda: nn.Linear(h2, n_out, bias=False))])


def _seeded(seed: int, scale: float, dtype: torch.dtype, children: list) -> nn.Sequential:
    """``Sequential`` of named ``children`` (modules, or callables building one, called in
    order under ``torch.manual_seed(seed)`` without touching the global RNG), every
    parameter times ``scale``, in ``dtype``."""
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(seed)
        model = nn.Sequential()
        for name, child in children:
            model.add_module(name, child if isinstance(child, nn.Module) else child())
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model.to(dtype)


def make_cnn(
    *,
    channels: int = 2,
    hidden: int = 5,
    n_out: int = 4,
    act: str = "tanh",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    scale: float = 1.0,
) -> nn.Sequential:
    """Tiny CNN for inputs of shape :data:`CNN_INPUT_SHAPE`.

    Children: ``conv`` Conv2d(1 -> channels, 3x3, padding 1, no bias), ``relu``,
    ``pool`` AdaptiveAvgPool2d(2), ``flatten``, ``fc1`` Linear(4*channels -> hidden,
    no bias), ``act``, ``out`` Linear(hidden -> n_out, no bias).
    """
    return _seeded(seed, scale, dtype, [
        ("conv", lambda: nn.Conv2d(1, channels, 3, padding=1, bias=False)),
        ("relu", nn.ReLU()), ("pool", nn.AdaptiveAvgPool2d(2)), ("flatten", nn.Flatten()),
        ("fc1", lambda: nn.Linear(4 * channels, hidden, bias=False)),
        ("act", _activation(act)),
        ("out", lambda: nn.Linear(hidden, n_out, bias=False))])


def make_data(
    n: int,
    input_shape: Sequence[int],
    n_classes: int = 4,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """Standard-normal inputs (n, *input_shape) and integer labels (n,) in [0, n_classes)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *input_shape), generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randint(0, n_classes, (n,), generator=gen)
    return x, y


def make_model(
    kind: str, n: int, *, seed: int = 0, dtype: torch.dtype = torch.float64, **kw
) -> tuple[nn.Sequential, Tensor, Tensor]:
    """(model, inputs, labels) for ``kind`` in {"fc", "cnn"}: n samples, data seeded by seed+1.

    Extra keyword arguments go to :func:`make_fc` / :func:`make_cnn`.
    """
    if kind == "fc":
        model, shape = make_fc(seed=seed, dtype=dtype, **kw), FC_INPUT_SHAPE
    elif kind == "cnn":
        model, shape = make_cnn(seed=seed, dtype=dtype, **kw), CNN_INPUT_SHAPE
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    n_out = model.out.out_features
    x, y = make_data(n, shape, n_out, seed=seed + 1, dtype=dtype)
    return model, x, y
