"""Make ``import torchvision`` work where its compiled extension cannot load.

The torchvision 0.28.0 wheel that matches torch 2.13.0 is a CUDA build. On a CPU-only
torch its compiled extension (``torchvision/_C``) does not load, and ``import
torchvision`` then fails while registering fake kernels for ``torchvision::nms`` and
``torchvision::qnms``: those schemas are defined by the extension, which is missing.
Wherever the extension loads (every CUDA machine), it defines them itself, and a second
definition aborts the process ("Tried to register an operator (torchvision::nms...)
multiple times"), so the schemas must never be defined up front.

Hence: the real import runs first. Only when it fails on a missing ``torchvision::``
operator while torchvision reports that its extension did not load
(``torchvision.extension._has_ops()`` is False) are the two schemas defined here (with no
kernel), and the import is run again. The pure-Python parts awch-scale uses
(``torchvision.datasets``) then work; calling ``nms`` would still raise, and awch-scale
never does.

The check runs when torchvision is first imported, by anyone (awch-scale's data
loaders, BackPACK, the user): :mod:`awch_scale` installs :class:`TorchvisionFinder` on
``sys.meta_path`` when it is imported, so ``import awch_scale`` itself does not pay for
importing torchvision.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None  # the torch.library.Library of the stand-ins, once defined


def _schema_exists(name: str) -> bool:
    import torch

    try:
        torch._C._dispatch_has_kernel_for_dispatch_key(f"torchvision::{name}", "CPU")
    except RuntimeError:
        return False
    return True


def define_stand_in_schemas() -> list[str]:
    """Define the ``torchvision::nms``/``qnms`` schemas that are missing (idempotent).

    Only for a torchvision whose compiled extension did not load: where it loads, it
    defines them itself, and defining them first aborts its import.

    Returns:
        The names defined now (empty when both existed).
    """
    global _LIBRARY
    import torch  # here, not at import: `import awch_scale` installs the finder only

    missing = [name for name in _SCHEMAS if not _schema_exists(name)]
    if missing and _LIBRARY is None:
        _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _LIBRARY.define(_SCHEMAS[name])
    return missing


def _extension_failed() -> bool:
    """Whether the partly imported torchvision says its compiled extension did not load."""
    extension = sys.modules.get("torchvision.extension")
    has_ops = getattr(extension, "_has_ops", None)
    return has_ops is not None and not has_ops()


def _missing_operator(exc: BaseException) -> bool:
    text = str(exc)
    return "torchvision::" in text and "does not exist" in text


class _RetryingLoader(importlib.abc.Loader):
    """Runs torchvision's own loader; on the missing-schema failure of a torchvision
    without its extension, defines the stand-ins and runs it once more."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        """The module torchvision's own loader creates."""
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        """Import torchvision; retry once with the stand-in schemas (see the module)."""
        try:
            self.loader.exec_module(module)
        except RuntimeError as exc:
            if not (_missing_operator(exc) and _extension_failed()):
                raise
            define_stand_in_schemas()
            self.loader.exec_module(module)  # its failed submodules were unloaded

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


class TorchvisionFinder(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` entry that finds ``torchvision`` with the other finders and
    wraps its loader in the retry above; every other name is left to the other finders."""

    def find_spec(self, fullname: str, path=None, target=None):
        """torchvision's own spec with a retrying loader, or None."""
        if fullname != "torchvision":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RetryingLoader(spec.loader)
                return spec
        return None


def ensure_torchvision_importable() -> None:
    """Install :class:`TorchvisionFinder` once (a torchvision already imported is left
    as it is)."""
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, TorchvisionFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, TorchvisionFinder())


ensure_torchvision_importable()
