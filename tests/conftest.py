"""Shared pytest configuration: make the test helpers in this folder importable, run
torch on one intra-op thread, and provide the case-registry fixtures.

Test modules import the brute-force reference as ``import dense_reference as ref`` and
the case registry as ``import problems`` (tests/problems.py); they never import each
other.

Fixtures:

- ``device``: the device of the test's ``case`` when the case names one (the cases of
  :func:`problems.cases` and :func:`problems.on_devices`: every case on every device,
  as BackPACK's ``make_test_problems``); otherwise the test is crossed with
  :data:`problems.DEVICES`: ``"cpu"``, and ``"cuda"`` when ``torch.cuda.is_available()``.
  A case or parameter on an absent device is skipped;
- ``dense``: the session-cached :class:`problems.DenseCase` (model, data, dense
  Hessian, per-sample gradients, GGN, eigendecomposition) of the test's ``case``
  parameter, a :class:`problems.Case` given by ``pytest.mark.parametrize("case", ...)``;
  the devices of a case share it.
"""

import sys
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import problems  # noqa: E402  (needs the sys.path entry above)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(request):
    """Tiny-model tests are dominated by per-op overhead; one thread avoids the OpenMP
    pool's cost on a loaded 2-core machine (see ``dense_reference.single_thread``)."""
    import dense_reference as ref

    with ref.single_thread():
        yield


@pytest.fixture(autouse=True, scope="session")
def _registry_untouched():
    """At the end of the session, the shared cached models and data are unmodified."""
    yield
    problems.check_registry_untouched()


def _case_devices(metafunc) -> set:
    """The devices the ``case`` parameters of a test name (None for a case without one)."""
    found = set()
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else names
        if "case" not in names:
            continue
        i = list(names).index("case")
        for value in mark.args[1]:
            value = value.values if hasattr(value, "marks") else value  # pytest.param
            value = value[i] if len(names) > 1 else value
            found.add(getattr(value, "device", None))
    return found


def pytest_generate_tests(metafunc):
    """Cross a test that asks for ``device`` with :data:`problems.DEVICES`, unless its
    cases name their devices (then ``device`` is the case's)."""
    if "device" not in metafunc.fixturenames:
        return
    devices = _case_devices(metafunc)
    if devices - {None} and None in devices:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: cases with and without a "
                                "device in one parametrisation")
    if not devices - {None}:
        metafunc.parametrize("device", problems.DEVICES)


def pytest_collection_modifyitems(items):
    """Skip a test whose ``case`` runs on a device this machine does not have."""
    for item in items:
        case = getattr(item, "callspec", None) and item.callspec.params.get("case")
        device = getattr(case, "device", None)
        if device is not None and not problems.available(device):
            item.add_marker(pytest.mark.skip(reason=f"no {device.upper()} device"))


@pytest.fixture
def device(case) -> str:
    """The device a test runs on: its case's (a test whose cases name none is crossed
    with :data:`problems.DEVICES` by :func:`pytest_generate_tests` instead)."""
    return case.device


@pytest.fixture
def dense(case) -> problems.DenseCase:
    """The session-cached dense float64 reference of the parametrised ``case``."""
    return problems.dense_reference(case)
