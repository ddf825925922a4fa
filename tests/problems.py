"""The shared numeric case registry of the test suite, and its comparison helpers.

Modelled on curvlinops' ``test/cases.py`` and BackPACK's ``test/extensions/problem.py``:
a :class:`Case` names a tiny model (kind, size, dtype), a target block and a loss; the
dense float64 references of a case (Hessian, per-sample gradients, eigendecomposition,
all from ``tests/dense_reference.py``) are computed lazily, once per session, and
shared by every test module that asks for the same case (:func:`dense_reference`).
Test modules never import each other; what two modules share lives here or in
``dense_reference.py``.

Import as ``import problems`` (``tests/conftest.py`` puts this folder on ``sys.path``);
the fixtures ``dense`` and ``device`` of ``conftest.py`` wrap it.

Contents:

- cases: :class:`Case`, :func:`case`, :func:`cases`, :func:`ids`, :data:`BASES`,
  :data:`LOSSES`, :data:`MODELS` (``fc``, ``cnn``, and :func:`wrapped_fc`,
  :func:`nested_fc`, :func:`bn_dropout_fc`), :func:`build`, :func:`dense_reference`,
  :class:`DenseCase`, :func:`check_registry_untouched`;
- comparisons: :func:`to_numpy`, :func:`assert_rel_close`, :func:`assert_entrywise_close`,
  :func:`compare_matmat`, :func:`assert_symmetric`, :func:`assert_deterministic`,
  :func:`assert_untouched`, :func:`assert_differ`;
- the AWD models of SPEC 4 tests (defined in ``tests/awd_models.py``, re-exported here):
  :func:`mlp`, :func:`cnn`, :func:`free_mlp`, :func:`nested`, :func:`last`,
  :data:`AWD_MODELS`, :func:`class_data`, :func:`awd_reference`, :class:`AWDCase`;
- devices: :data:`DEVICES` (``"cpu"``, and ``"cuda"`` skipped without a GPU),
  :data:`DEVICE_NAMES`, :func:`on_devices`, :func:`available`.

Devices (BackPACK's ``make_test_problems``): :func:`cases` returns every case once per
device in :data:`DEVICE_NAMES`, each a :class:`Case` whose ``device`` is set, so a CUDA
run exercises every case; ``conftest.py`` skips a case whose device is absent and gives
the test's ``device`` fixture the case's device. A case built by :func:`case` has no
device (``device=None``); a test that asks for ``device`` is then crossed with
:data:`DEVICES` by ``conftest.py``. The dense references do not depend on the device:
they are computed once, on the CPU in float64, for all devices of a case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import awd_models
import dense_reference as ref
import numpy as np
import pytest
import torch
from awd_models import (  # noqa: F401  (part of this module's API)
    ACTS,
    AWD_MODELS,
    AWDCase,
    FreeMLP,
    awd_reference,
    class_data,
    cnn,
    free_mlp,
    last,
    mlp,
    nested,
)
from torch import Tensor, nn

# ----------------------------------------------------------------------------- devices

DEVICE_NAMES = ("cpu", "cuda")
"""Every device a case is run on (the CUDA ones are skipped without a GPU)."""


def available(device: str) -> bool:
    """Whether tests can run on ``device`` here (``cuda``: ``torch.cuda.is_available()``)."""
    return device != "cuda" or torch.cuda.is_available()


DEVICES = [pytest.param(d, id=d, marks=pytest.mark.skipif(not available(d),
                                                          reason=f"no {d.upper()} device"))
           for d in DEVICE_NAMES]
"""Parameters of the ``device`` fixture: CPU always, CUDA when ``torch.cuda.is_available()``."""

# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One numeric test case: model, data, target and loss (built by :func:`build`).

    Attributes:
        kind: ``"fc"`` or ``"cnn"`` (:func:`dense_reference.make_model`), or one of the
            other structures of :data:`MODELS` (non-Sequential, nested, BatchNorm).
        target: a module name, or a tuple of parameter names (hashable; use
            :attr:`target_arg` to pass it to awch-scale, which takes a list).
        loss: ``"ce"``, ``"mse"`` or ``"lmse"``.
        n: number of samples.
        dtype: dtype of the model and inputs (the dense references are float64 anyway).
        model_kw: extra ``make_model`` keyword arguments as sorted ``(key, value)`` pairs.
        data_seed: seed of :func:`dense_reference.make_data`; None: ``make_model``'s
            (model seed + 1 = 1).
        device: the device the test runs the case on (:func:`on_devices`), or None: the
            test's ``device`` fixture decides. Not part of the model, data or references.
    """

    kind: str
    target: str | tuple[str, ...]
    loss: str
    n: int
    dtype: torch.dtype = torch.float64
    model_kw: tuple = ()
    data_seed: int | None = None
    device: str | None = None

    @property
    def target_arg(self) -> str | list[str]:
        """The target as ``make_problem``/``analyze_checkpoint`` take it."""
        return ref.as_target(self.target)

    @property
    def id(self) -> str:
        """A short test id, e.g. ``fc-fc2+out-ce`` (n and the device are not part of it)."""
        tgt = self.target if isinstance(self.target, str) else "+".join(
            t.removesuffix(".weight") for t in self.target)
        extra = "".join(f"-{k}{'x'.join(map(str, v)) if isinstance(v, tuple) else v}"
                        for k, v in self.model_kw)
        dt = "" if self.dtype == torch.float64 else "-f32"
        data = "" if self.data_seed is None else f"-data{self.data_seed}"
        return f"{self.kind}-{tgt}{extra}-{self.loss}{dt}{data}"

    def with_(self, **changes) -> Case:
        """A copy with some fields changed (e.g. ``case.with_(loss="mse")``)."""
        fields = {f: getattr(self, f) for f in self.__dataclass_fields__}
        return Case(**{**fields, **changes})


def case(kind: str, target, loss: str = "ce", n: int = 23, *,
         dtype: torch.dtype = torch.float64, data_seed: int | None = None,
         device: str | None = None, **model_kw) -> Case:
    """Build a :class:`Case`; a list target becomes a tuple, ``model_kw`` is sorted."""
    target = target if isinstance(target, str) else tuple(target)
    return Case(kind, target, loss, n, dtype, tuple(sorted(model_kw.items())), data_seed,
                device)


def on_devices(cases: Sequence[Case], devices: Sequence[str] = DEVICE_NAMES) -> list[Case]:
    """Every case once per device, in order (BackPACK's ``make_test_problems``)."""
    return [c.with_(device=d) for c in cases for d in devices]


class Wrapped(nn.Module):
    """A non-Sequential model (no feature caching) holding a model as ``net``, output x 1.5."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x) * 1.5


def wrapped_fc(**kw) -> nn.Module:
    """``Wrapped(ref.make_fc(**kw))``: block names ``net.fc1`` ... ``net.out``."""
    return Wrapped(ref.make_fc(**kw))


def nested_fc(**kw) -> nn.Module:
    """Sequential(body=Sequential(flatten, fc1, act1, fc2, act2), out): nested block names."""
    net = ref.make_fc(**kw)
    body = nn.Sequential()
    for name in ("flatten", "fc1", "act1", "fc2", "act2"):
        body.add_module(name, getattr(net, name))
    model = nn.Sequential()
    model.add_module("body", body)
    model.add_module("out", net.out)
    return model


def bn_dropout_fc(seed: int = 3, **kw) -> nn.Module:
    """MLP with BatchNorm1d (non-trivial running stats and affine parameters) after fc2
    and Dropout(0.5) before out, returned in train mode (the analysis uses eval mode)."""
    net = ref.make_fc(seed=seed, **kw)
    seq = nn.Sequential()
    for name, mod in [("flatten", net.flatten), ("fc1", net.fc1), ("act1", net.act1),
                      ("fc2", net.fc2), ("bn", nn.BatchNorm1d(4)), ("act2", net.act2),
                      ("drop", nn.Dropout(0.5)), ("out", net.out)]:
        seq.add_module(name, mod)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t, lo, hi in [(seq.bn.running_mean, -0.5, 0.5), (seq.bn.running_var, 0.5, 2.0),
                          (seq.bn.weight, 0.5, 1.5), (seq.bn.bias, -0.3, 0.3)]:
            t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=gen))
    return seq.double().train()


MODELS: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...]]] = {
    "fc": (ref.make_fc, ref.FC_INPUT_SHAPE),
    "cnn": (ref.make_cnn, ref.CNN_INPUT_SHAPE),
    "wrapped": (wrapped_fc, ref.FC_INPUT_SHAPE),
    "nested": (nested_fc, ref.FC_INPUT_SHAPE),
    "bn-dropout": (bn_dropout_fc, ref.FC_INPUT_SHAPE),
}
"""Model kind -> (builder, input shape without batch); all have 4 outputs."""


def build(case: Case) -> tuple[nn.Module, Tensor, Tensor]:
    """(model, inputs, labels) of a case, freshly built (deterministic)."""
    kw = dict(case.model_kw)
    if case.kind in ("fc", "cnn") and case.data_seed is None:
        return ref.make_model(case.kind, case.n, dtype=case.dtype, **kw)
    builder, shape = MODELS[case.kind]
    model = builder(**kw)
    if case.dtype != torch.float64:
        model = model.to(case.dtype)
    seed = 1 if case.data_seed is None else case.data_seed
    x, y = ref.make_data(case.n, shape, 4, seed=seed, dtype=case.dtype)
    return model, x, y


def ids(cases: Sequence[Case]) -> list[str]:
    """Test ids of a list of cases (for ``pytest.mark.parametrize(..., ids=...)``): the
    case's :attr:`Case.id`, and its device when it has one (``fc-fc2-ce-cuda``)."""
    return [c.id if c.device is None else f"{c.id}-{c.device}" for c in cases]


def cases(bases: Sequence[tuple], losses: Sequence[str], n: int, **kw) -> list[Case]:
    """The product of ``(kind, target)`` pairs and losses, all with n samples, each on
    every device of :data:`DEVICE_NAMES` (:func:`on_devices`)."""
    return on_devices([case(kind, target, loss, n, **kw) for kind, target in bases
                       for loss in losses])


BASES = [
    ("fc", "fc2"),  # Linear in the middle of an MLP (features cached up to act1)
    ("cnn", "fc1"),  # Linear head after conv/pool (features cached up to flatten)
    ("cnn", "conv"),  # a conv layer (first child: no caching)
    ("fc", ("fc2.weight", "out.weight")),  # list of parameter names, two layers
    ("cnn", ("conv.weight", "fc1.weight")),  # conv + Linear
]
"""The (model kind, target) pairs the operator, eigen and covariance tests share."""

LOSSES = ["ce", "mse", "lmse"]


class DenseCase:
    """Model, data and the dense float64 references of a :class:`Case`, each computed on
    first use (``functools.cached_property``) and kept for the session.

    Attributes:
        case: the case.
        model, x, y: ``build(case)``.
        H: ``ref.dense_hessian`` (D x D, symmetrised).
        G: ``ref.per_sample_gradients`` (N x D).
        F: ``ref.dense_ggn`` (D x D): the Fisher / generalised Gauss-Newton matrix.
        vals, U: ``ref.dense_eigh(H)``: eigenvalues descending, sign-fixed eigenvectors.

    Treat every attribute as read-only: it is shared by all tests of the session.
    """

    def __init__(self, case: Case):
        self.case = case
        self.model, self.x, self.y = build(case)

    @property
    def target(self):
        return self.case.target_arg

    @property
    def loss(self) -> str:
        return self.case.loss

    @cached_property
    def H(self) -> np.ndarray:
        return ref.dense_hessian(self.model, self.target, self.x, self.y, self.loss)

    @cached_property
    def G(self) -> np.ndarray:
        return ref.per_sample_gradients(self.model, self.target, self.x, self.y, self.loss)

    @cached_property
    def F(self) -> np.ndarray:  # noqa: N802  (the paper's symbol)
        return ref.dense_ggn(self.model, self.target, self.x, self.y, self.loss)

    @cached_property
    def _eigh(self) -> tuple[np.ndarray, np.ndarray]:
        return ref.dense_eigh(self.H)

    @property
    def vals(self) -> np.ndarray:
        return self._eigh[0]

    @property
    def U(self) -> np.ndarray:
        return self._eigh[1]

    @property
    def D(self) -> int:
        return int(ref.flat_block(self.model, self.target).numel())


_DENSE: dict[Case, DenseCase] = {}


def dense_reference(case: Case) -> DenseCase:
    """The session-wide :class:`DenseCase` of a case (one per distinct case; the devices
    of a case share it: it lives on the CPU)."""
    key = case.with_(device=None)
    if key not in _DENSE:
        _DENSE[key] = DenseCase(key)
    return _DENSE[key]


def check_registry_untouched() -> None:
    """Every cached model and data set still equals a fresh build: no test wrote to the
    shared objects (run by ``conftest.py`` at the end of the session)."""
    for c, d in _DENSE.items():
        model, x, y = build(c)
        assert_untouched(x, d.x)
        assert_untouched(y, d.y)
        fresh = model.state_dict()
        for name, t in d.model.state_dict().items():
            assert_untouched(fresh[name], t)
    for (model_name, act, _loss, counts), dense in awd_models.cached():
        builder, _, shape = AWD_MODELS[model_name]
        x, y = class_data(shape, counts)
        assert_untouched(x, dense.x)
        assert_untouched(y, dense.y)
        fresh = builder(act).state_dict()
        for name, t in dense.model.state_dict().items():
            assert_untouched(fresh[name], t)


# ----------------------------------------------------------------------------- comparisons


def to_numpy(a) -> np.ndarray:
    """float64 NumPy copy of a tensor (any device), array or list."""
    if isinstance(a, Tensor):
        a = a.detach().cpu()
        a = a.double() if a.is_floating_point() else a
        return a.numpy()
    return np.asarray(a, dtype=np.float64)


def assert_rel_close(actual, expected, rtol: float, scale: float | None = None) -> None:
    """max|actual - expected| <= rtol * scale, scale = max|expected| unless given.

    The tolerance is relative to the largest entry of the reference (an entrywise rtol
    fails on tiny entries of products and covariances). Tensors may live on any device.
    """
    actual, expected = to_numpy(actual), to_numpy(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(np.abs(expected).max()) if scale is None else scale
    err = float(np.abs(actual - expected).max()) if actual.size else 0.0
    assert err <= rtol * scale, f"max abs error {err:.3e} > {rtol:g} * {scale:.3e}"


def assert_entrywise_close(actual, expected, rtol: float, atol_rel: float = 1e-10,
                           err_msg: str = "") -> None:
    """|actual - expected| <= rtol |expected| + atol_rel max|expected|, entry by entry
    (``numpy.testing.assert_allclose`` with an absolute floor relative to the scale)."""
    actual, expected = to_numpy(actual), to_numpy(expected)
    scale = max(float(np.abs(expected).max()), 1e-300)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol_rel * scale,
                               err_msg=err_msg)


def compare_matmat(op, H: np.ndarray, V, rtol: float, scale: float | None = None) -> Tensor:
    """Check ``op.matmat(V)`` against the dense ``H @ V`` (:func:`assert_rel_close`:
    max|op V - H V| <= rtol * scale, scale = max|H V| unless given).

    V is a (D, m) or (D,) tensor/array on any device; the product must be float64 on
    the operator's device. Returns the product.
    """
    out = op.matmat(V)
    assert out.dtype == torch.float64 and tuple(out.shape) == tuple(np.shape(V))
    assert_rel_close(out, H @ to_numpy(V), rtol, scale)
    return out


def assert_symmetric(X, rtol: float = 1e-15, scale: float | None = None) -> None:
    """|X - X^T| <= rtol * scale entrywise (scale = max|X| unless given): a symmetric
    quantity, compared with a tolerance instead of bit for bit (BLAS code paths may
    differ by an ulp, issue 7)."""
    X = to_numpy(X)
    scale = float(np.abs(X).max()) if scale is None else scale
    np.testing.assert_allclose(X, X.T, rtol=0, atol=rtol * scale)


def assert_deterministic(a, b, rtol: float = 1e-12, err_msg: str = "") -> None:
    """Two runs with the same seed give the same numbers, to rtol 1e-12 (NaN == NaN).

    Integer arrays (indices, counts) must be equal exactly.
    """
    a_np, b_np = np.asarray(to_numpy(a) if isinstance(a, Tensor) else a), \
        np.asarray(to_numpy(b) if isinstance(b, Tensor) else b)
    if a_np.dtype.kind in "iub" and b_np.dtype.kind in "iub":
        np.testing.assert_array_equal(a_np, b_np, err_msg=err_msg)
    else:
        np.testing.assert_allclose(a_np.astype(np.float64), b_np.astype(np.float64),
                                   rtol=rtol, atol=0, equal_nan=True, err_msg=err_msg)


def assert_untouched(before, after) -> None:
    """``after`` is an unmodified copy of ``before``: same dtype and identical values.

    Exact comparison is intended here: no arithmetic is involved, so any difference,
    even one ulp, means the caller's data was written to.
    """
    if isinstance(before, Tensor):
        assert after.dtype == before.dtype and after.shape == before.shape
        assert torch.equal(after, before)
    else:
        np.testing.assert_array_equal(after, before, strict=True)


def assert_differ(a, b, rtol: float = 1e-6) -> None:
    """a and b differ by more than rtol * max|a| somewhere (e.g. another seed)."""
    a, b = to_numpy(a), to_numpy(b)
    assert np.abs(a - b).max() > rtol * np.abs(a).max()
