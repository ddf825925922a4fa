"""Models of paper appendix B.1, without biases, the transformers, and lookup of Linear layers.

Every model is an ``nn.Sequential`` whose top-level children are named (``fc1``, ``relu1``,
``out``, ...), so that a target layer is addressed by its name, e.g. ``fc2``:

- ``fc``:  flatten, fc1 (in -> width), relu1, fc2 (width -> width), relu2, out (width -> K).
- ``mlp``: flatten, fc1 (in -> hidden), relu1, fc2 (hidden -> width), relu2,
  fc3 (width -> width), relu3, out (width -> K); the paper's CIFAR-10 MLP
  3072 -> 1000 -> 50 -> 50 -> 10 with target fc3.
- ``cnn``: VGG-style [32, M, 64, M, 128, 128, M] (3x3 convolutions with padding 1, ReLU,
  2x2 max pooling), adaptive average pooling to 128 features, flatten, fc1 (128 -> width),
  relu_fc1, out (width -> K); target fc1.

With ``dropout > 0`` a dropout layer (``drop1``, ``drop2``, ..., ``drop_fc1``) follows each
hidden fully connected activation.

- ``vit`` and ``gpt``: the vision transformer and the decoder-only transformer of
  :mod:`awch_scale.model.transformers` (``embed``, ``blocks.0`` ... ``blocks.{depth-1}``,
  ``norm``, ``pool``, ``out``; Linear layers with bias; targets such as
  ``blocks.0.mlp.fc1`` or ``blocks.0.attn.q``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
from torch import nn

from awch_scale.errors import DataError
from awch_scale.model.transformers import build_gpt, build_vit

if TYPE_CHECKING:  # the recipe layer builds models from its spec; no runtime import upward
    from awch_scale.run.recipe import ModelSpec

CNN_CONFIG: list[int | str] = [32, "M", 64, "M", 128, 128, "M"]


def _hidden_fc(layers: OrderedDict, widths: list[int], dropout: float) -> None:
    """Append Linear/ReLU/[Dropout] triples for consecutive widths, named fc1, relu1, drop1..."""
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=False), start=1):
        layers[f"fc{i}"] = nn.Linear(n_in, n_out, bias=False)
        layers[f"relu{i}"] = nn.ReLU()
        if dropout > 0:
            layers[f"drop{i}"] = nn.Dropout(dropout)


def _cnn_features(layers: OrderedDict, in_channels: int) -> int:
    """Append the convolutional part; returns the number of output channels."""
    channels, n_conv, n_pool = in_channels, 0, 0
    for item in CNN_CONFIG:
        if item == "M":
            n_pool += 1
            layers[f"pool{n_pool}"] = nn.MaxPool2d(kernel_size=2, stride=2)
        else:
            n_conv += 1
            layers[f"conv{n_conv}"] = nn.Conv2d(channels, int(item), 3, padding=1, bias=False)
            layers[f"relu{n_conv}"] = nn.ReLU()
            channels = int(item)
    return channels


def build_model(spec: ModelSpec, input_shape: tuple[int, ...]) -> nn.Sequential:
    """Build the model of a spec for inputs of a given shape.

    The weights get PyTorch's default initialisation, multiplied by ``spec.init_scale``.
    The caller seeds torch beforehand (this function draws from the global RNG).

    Args:
        spec: the ``model`` section of a recipe.
        input_shape: shape of one input sample, e.g. ``(1, 28, 28)`` or ``(20,)``.

    Returns:
        An ``nn.Sequential`` with named top-level children (no biases for fc, mlp, cnn).

    Raises:
        DataError: ``cnn`` or ``vit`` with inputs that are not images ``(C, H, W)`` (cnn:
            H, W >= 8; vit: sides divisible by ``patch``), ``gpt`` with inputs that are not
            token sequences.
    """
    if spec.arch in ("vit", "gpt"):
        build = build_vit if spec.arch == "vit" else build_gpt
        return _scaled(build(spec, tuple(input_shape)), spec.init_scale)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    n_in = math.prod(input_shape)
    if spec.arch == "fc":
        layers["flatten"] = nn.Flatten()
        _hidden_fc(layers, [n_in, spec.width, spec.width], spec.dropout)
        last = spec.width
    elif spec.arch == "mlp":
        layers["flatten"] = nn.Flatten()
        _hidden_fc(layers, [n_in, spec.hidden, spec.width, spec.width], spec.dropout)
        last = spec.width
    elif spec.arch == "cnn":
        if len(input_shape) != 3 or min(input_shape[1:]) < 8:
            raise DataError(
                f"model.arch cnn needs image inputs of shape (C, H, W) with H, W >= 8; "
                f"the data has input shape {tuple(input_shape)}."
            )
        channels = _cnn_features(layers, input_shape[0])
        layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["fc1"] = nn.Linear(channels, spec.width, bias=False)
        layers["relu_fc1"] = nn.ReLU()
        if spec.dropout > 0:
            layers["drop_fc1"] = nn.Dropout(spec.dropout)
        last = spec.width
    else:  # pragma: no cover - excluded by the recipe schema
        raise ValueError(f"unknown model.arch {spec.arch!r}")
    layers["out"] = nn.Linear(last, spec.output_dim, bias=False)
    return _scaled(nn.Sequential(layers), spec.init_scale)


def _scaled(model: nn.Sequential, scale: float) -> nn.Sequential:
    """Multiply every initial parameter by ``scale`` (``model.init_scale``)."""
    if scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
    return model


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The model's ``nn.Linear`` modules by dotted name, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
