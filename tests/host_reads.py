"""Counting the tensor-to-Python conversions of a piece of code: each is a device-to-host
round trip (and a stall of the device's queue) when the tensor lives on a GPU, so the
count measures on a CPU what a GPU run would wait for."""

from __future__ import annotations

import torch


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts ``item``, ``tolist``, ``numpy``, ``cpu`` and the Python number conversions of
    tensors inside the ``with`` block (``count``); ``x.cpu().numpy()`` is one read (the
    copy), not two."""

    NAMES = {"item", "tolist", "numpy", "cpu", "__float__", "__bool__", "__int__"}

    def __init__(self):
        super().__init__()
        self.count = 0
        self._copied = None  # the last ``cpu()`` result, whose ``numpy()`` is free

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        out = func(*args, **(kwargs or {}))
        if name in self.NAMES and not (name == "numpy" and args and args[0] is self._copied):
            self.count += 1
        if name == "cpu":
            self._copied = out
        return out
