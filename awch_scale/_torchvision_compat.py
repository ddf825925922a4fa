"""Make ``import torchvision`` work against a CPU-only torch build.

The torchvision 0.28.0 wheel that matches torch 2.13.0 is a CUDA build. On a CPU
torch its compiled extension does not load, and ``import torchvision`` then fails
while registering fake kernels for ``torchvision::nms`` and ``torchvision::qnms``
because those operator schemas were never defined. Defining the two schemas (with
no kernel) lets the pure-Python parts that awch-scale uses (``torchvision.datasets``)
import normally; calling ``nms`` would still raise, and awch-scale never does.

This is the one place where that is handled: :mod:`awch_scale` imports this
module before anything that may import torchvision (BackPACK does).
"""

from __future__ import annotations

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY: torch.library.Library | None = None


def _schema_exists(name: str) -> bool:
    try:
        torch._C._dispatch_has_kernel_for_dispatch_key(f"torchvision::{name}", "CPU")
    except RuntimeError:
        return False
    return True


def ensure_torchvision_importable() -> None:
    """Define the missing ``torchvision::nms``/``qnms`` schemas if needed (idempotent)."""
    global _LIBRARY
    missing = [name for name in _SCHEMAS if not _schema_exists(name)]
    if not missing:
        return
    if _LIBRARY is None:
        _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _LIBRARY.define(_SCHEMAS[name])


ensure_torchvision_importable()
