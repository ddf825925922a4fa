"""Per-sample losses of SPEC section 1.

With z the logits (K outputs) and y the integer label:

- ``ce``:   l = -log softmax(z)[y]
- ``mse``:  l = (1/K) sum_c (softmax(z)_c - onehot(y)_c)^2   (softmax + MSE, paper B.1)
- ``lmse``: l = (1/K) sum_c (z_c - onehot(y)_c)^2            (linear MSE)

Every function maps logits of shape (n, K) and labels of shape (n,) to per-sample
losses of shape (n,); they also accept a single sample (K,), () for use under
``torch.func.vmap``.

Sequences. A sample is one whole sequence (SPEC section 1). A model that predicts one
token per sequence (the answer of ``a b =`` in the modular-arithmetic benchmark, a class
token) gives logits (n, K) and labels (n,) as above. A model that predicts several
tokens gives logits (n, T, K) and labels (n, T); the sample's loss is then the mean of
the per-token losses over its *predicted* tokens, those with a label >= 0 (a negative
label, e.g. -100 for a prompt token, marks a position that is not predicted). The batch
dimension must be present in that case (one sequence is (1, T, K)).
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


def token_weights(y: Tensor, dtype: torch.dtype) -> Tensor:
    """Weights of a sequence's positions in its loss, shape (n, T) for labels (n, T): 1/n_i
    at each of sample i's n_i predicted positions (label >= 0), 0 elsewhere. The sample's
    loss is the weighted sum of its per-token losses (:func:`sequence_mean`), so these
    weights also scale its per-token curvature (the Fisher's Lambda_i)."""
    mask = (y >= 0).to(dtype)
    return mask / mask.sum(1, keepdim=True)


def sequence_mean(token_losses: Tensor, y: Tensor) -> Tensor:
    """Per-sample losses from per-position ones: unchanged for (n,) or (); for (n, T, ...)
    the mean over each sample's predicted positions (label >= 0), shape (n,)."""
    if token_losses.ndim <= 1:
        return token_losses
    n = token_losses.shape[0]
    weights = token_weights(y.reshape(n, -1), token_losses.dtype)
    return (token_losses.reshape(n, -1) * weights).sum(1)


def cross_entropy(z: Tensor, y: Tensor) -> Tensor:
    """l = -log softmax(z)[y] (a sequence: the mean over its predicted tokens)."""
    logp = torch.log_softmax(z, dim=-1)
    picked = -torch.gather(logp, -1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return sequence_mean(picked, y)


def softmax_mse(z: Tensor, y: Tensor) -> Tensor:
    """l = (1/K) sum_c (softmax(z)_c - onehot(y)_c)^2 (a sequence: the token mean)."""
    k = z.shape[-1]
    return sequence_mean((torch.softmax(z, dim=-1) - _onehot(y, k, z)).pow(2).mean(dim=-1), y)


def linear_mse(z: Tensor, y: Tensor) -> Tensor:
    """l = (1/K) sum_c (z_c - onehot(y)_c)^2 (a sequence: the token mean)."""
    k = z.shape[-1]
    return sequence_mean((z - _onehot(y, k, z)).pow(2).mean(dim=-1), y)


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
