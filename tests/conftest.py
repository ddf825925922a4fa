"""Shared pytest configuration: make the test helpers in this folder importable, and
run torch on one intra-op thread in the dense-reference modules.

Test modules import the brute-force reference as ``import dense_reference``.
"""

import sys
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(request):
    """Tiny-model tests are dominated by per-op overhead; one thread avoids the OpenMP
    pool's cost on a loaded 2-core machine (see ``dense_reference.single_thread``)."""
    import dense_reference as ref

    with ref.single_thread():
        yield
