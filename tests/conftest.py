"""Shared pytest configuration: make the test helpers in this folder importable, run
torch on one intra-op thread, and provide the case-registry fixtures.

Test modules import the brute-force reference as ``import dense_reference as ref`` and
the case registry as ``import problems`` (tests/problems.py); they never import each
other.

Fixtures:

- ``device``: ``"cpu"``, and ``"cuda"`` when ``torch.cuda.is_available()`` (the CUDA
  parameter is skipped otherwise);
- ``dense``: the session-cached :class:`problems.DenseCase` (model, data, dense
  Hessian, per-sample gradients, eigendecomposition) of the test's ``case`` parameter,
  a :class:`problems.Case` given by ``pytest.mark.parametrize("case", ...)``.
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


@pytest.fixture(params=problems.DEVICES)
def device(request) -> str:
    """The device a test runs on: "cpu", and "cuda" when a GPU is present."""
    return request.param


@pytest.fixture
def dense(case) -> problems.DenseCase:
    """The session-cached dense float64 reference of the parametrised ``case``."""
    return problems.dense_reference(case)
