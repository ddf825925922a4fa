"""``import awch_scale; import torchvision`` wherever torchvision's extension does or does
not load (awch_scale/_torchvision_compat.py).

Each case runs in a subprocess (torch's operator registry is global to a process) with a
stand-in ``torchvision`` package first on its path:

- ``loads``: the stand-in defines ``torchvision::nms``/``qnms`` at import, as the real
  compiled extension does on every CUDA machine (its C++ ``TORCH_LIBRARY_FRAGMENT``);
  a second definition is fatal there, so awch-scale must not define them first;
- ``fails``: the stand-in's extension reports it did not load and its meta
  registrations then need the two schemas (the CPU torch 2.13.0 + CUDA torchvision
  0.28.0 case this project's CI has), which awch-scale supplies.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCHEMAS = '''
NMS = "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
QNMS = "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
'''

FAKES = '''
import torch


@torch.library.register_fake("torchvision::nms")
def _nms(dets, scores, iou_threshold):
    return dets.new_empty(0, dtype=torch.long)


@torch.library.register_fake("torchvision::qnms")
def _qnms(dets, scores, iou_threshold):
    return dets.new_empty(0, dtype=torch.long)
'''

PACKAGES = {
    "loads": {
        "__init__.py": "from . import extension, _meta_registrations, datasets  # noqa\n",
        "extension.py": SCHEMAS + textwrap.dedent('''
            import torch

            _LIB = torch.library.Library("torchvision", "FRAGMENT")
            _LIB.define(NMS)  # raises (aborts, in C++) if already defined
            _LIB.define(QNMS)


            def _has_ops():
                return True
            '''),
        "_meta_registrations.py": FAKES,
        "datasets.py": "NAME = 'stand-in datasets'\n",
    },
    "fails": {
        "__init__.py": "from . import extension, _meta_registrations, datasets  # noqa\n",
        "extension.py": "def _has_ops():\n    return False\n",
        "_meta_registrations.py": FAKES,
        "datasets.py": "NAME = 'stand-in datasets'\n",
    },
    "broken": {  # an unrelated failure is not retried or hidden
        "__init__.py": "from . import extension  # noqa\nraise RuntimeError('boom')\n",
        "extension.py": "def _has_ops():\n    return False\n",
    },
}


def _run(tmp_path: Path, package: str | None, code: str) -> subprocess.CompletedProcess:
    path = [str(ROOT)]
    if package is not None:
        pkg = tmp_path / package / "torchvision"
        pkg.mkdir(parents=True)
        for name, text in PACKAGES[package].items():
            (pkg / name).write_text(text)
        path.insert(0, str(pkg.parent))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=300)


UNTOUCHED = """
    import sys
    import torch
    assert "torchvision" not in sys.modules
    for name in ("nms", "qnms"):
        try:
            torch._C._dispatch_has_kernel_for_dispatch_key(f"torchvision::{name}", "CPU")
        except RuntimeError:
            continue
        raise SystemExit(f"torchvision::{name} defined by awch_scale")
"""

CHECK = """
    import torch
    import torchvision
    import torchvision.datasets
    assert torchvision.datasets.NAME == 'stand-in datasets', torchvision.__file__
    print(torch.ops.torchvision.nms, torch.ops.torchvision.qnms)
"""


@pytest.mark.parametrize("package", ["loads", "fails"])
def test_awch_scale_then_torchvision(tmp_path, package):
    """``import awch_scale; import torchvision`` works whether the extension loads (its
    own schemas, no second definition) or not (the stand-in schemas); ``import
    awch_scale`` neither imports torchvision nor defines its operators."""
    code = "import awch_scale\n" + textwrap.dedent(UNTOUCHED) + textwrap.dedent(CHECK)
    out = _run(tmp_path, package, code)
    assert out.returncode == 0, out.stderr
    assert "torchvision.nms torchvision.qnms" in out.stdout


def test_torchvision_then_awch_scale_where_the_extension_loads(tmp_path):
    out = _run(tmp_path, "loads", textwrap.dedent(CHECK) + "import awch_scale\n")
    assert out.returncode == 0, out.stderr


def test_the_stand_in_reproduces_the_cpu_failure(tmp_path):
    """Without awch-scale the ``fails`` package does not import, as the real torchvision
    0.28.0 on a CPU torch does not: the test above is not vacuous."""
    out = _run(tmp_path, "fails", CHECK)
    assert out.returncode != 0 and "torchvision::nms" in out.stderr


def test_other_import_errors_are_raised(tmp_path):
    out = _run(tmp_path, "broken", "import awch_scale\nimport torchvision\n")
    assert out.returncode != 0 and "RuntimeError: boom" in out.stderr


def test_the_installed_torchvision(tmp_path):
    """The real torchvision imports after awch_scale, with or without its extension (on
    this project's CPU CI it does not load; on a CUDA machine it does), and MNIST's
    dataset class is there."""
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    out = _run(tmp_path, None, """
        import awch_scale
        import torchvision
        from torchvision.datasets import MNIST
        print("extension", torchvision.extension._has_ops())
    """)
    assert out.returncode == 0, out.stderr
