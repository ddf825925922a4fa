"""Shared pytest configuration: make the test helpers in this folder importable.

Test modules import the brute-force reference as ``import dense_reference``.
"""

import sys
from pathlib import Path

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
