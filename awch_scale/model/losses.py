"""Per-sample losses of SPEC section 1.

With z the logits (K outputs) and y the integer label:

- ``ce``:   l = -log softmax(z)[y]
- ``mse``:  l = (1/K) sum_c (softmax(z)_c - onehot(y)_c)^2   (softmax + MSE, paper B.1)
- ``lmse``: l = (1/K) sum_c (z_c - onehot(y)_c)^2            (linear MSE)

Every function maps logits of shape (n, K) and labels of shape (n,) to per-sample
losses of shape (n,); they also accept a single sample (K,), () for use under
``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from awch_scale.errors import SettingsError

LossFn = Callable[[Tensor, Tensor], Tensor]


def _onehot(y: Tensor, k: int, like: Tensor) -> Tensor:
    # A comparison rather than F.one_hot, which torch.func.vmap cannot batch.
    return (torch.arange(k, device=y.device) == y.unsqueeze(-1)).to(like.dtype)


def cross_entropy(z: Tensor, y: Tensor) -> Tensor:
    """l = -log softmax(z)[y]."""
    logp = torch.log_softmax(z, dim=-1)
    return -torch.gather(logp, -1, y.unsqueeze(-1)).squeeze(-1)


def softmax_mse(z: Tensor, y: Tensor) -> Tensor:
    """l = (1/K) sum_c (softmax(z)_c - onehot(y)_c)^2."""
    k = z.shape[-1]
    return (torch.softmax(z, dim=-1) - _onehot(y, k, z)).pow(2).mean(dim=-1)


def linear_mse(z: Tensor, y: Tensor) -> Tensor:
    """l = (1/K) sum_c (z_c - onehot(y)_c)^2."""
    k = z.shape[-1]
    return (z - _onehot(y, k, z)).pow(2).mean(dim=-1)


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "mse": softmax_mse, "lmse": linear_mse}


def get_loss(name: str) -> LossFn:
    """Per-sample loss function by recipe name (``ce``, ``mse``, ``lmse``).

    Raises:
        SettingsError: (a ValueError) an unknown name; the message names ``loss``.
    """
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise SettingsError(f"'loss' = {name!r} is unknown; allowed: "
                            f"{', '.join(LOSSES)}") from None
