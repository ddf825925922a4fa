"""Tests of awch_scale.model.architectures: architectures, initialisation and target lookup."""

from __future__ import annotations

import problems
import pytest
import torch
from torch import nn

from awch_scale.errors import DataError, TargetError
from awch_scale.model.architectures import build_model, linear_layers
from awch_scale.model.problem import resolve_block
from awch_scale.run.recipe import ModelSpec


def shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (m.in_features, m.out_features) for n, m in linear_layers(model).items()}


def test_fc_layout():
    model = build_model(ModelSpec(arch="fc", width=7, output_dim=4), (1, 5, 5))
    assert list(model._modules) == ["flatten", "fc1", "relu1", "fc2", "relu2", "out"]
    assert shapes(model) == {"fc1": (25, 7), "fc2": (7, 7), "out": (7, 4)}
    assert model(torch.randn(3, 1, 5, 5)).shape == (3, 4)


def test_mlp_layout_with_dropout():
    model = build_model(ModelSpec(arch="mlp", hidden=30, width=6, dropout=0.1), (3, 4, 4))
    assert list(model._modules) == [
        "flatten", "fc1", "relu1", "drop1", "fc2", "relu2", "drop2",
        "fc3", "relu3", "drop3", "out",
    ]
    assert shapes(model) == {"fc1": (48, 30), "fc2": (30, 6), "fc3": (6, 6), "out": (6, 10)}
    assert model.drop2.p == 0.1


@pytest.mark.parametrize("input_shape", [(1, 28, 28), (3, 32, 32), (2, 8, 8)])
def test_cnn_layout_and_forward(input_shape):
    model = build_model(ModelSpec(arch="cnn", width=20, dropout=0.2), input_shape)
    assert list(model._modules) == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3",
        "conv4", "relu4", "pool3", "avgpool", "flatten", "fc1", "relu_fc1", "drop_fc1", "out",
    ]
    assert model.conv1.in_channels == input_shape[0]
    assert [model.get_submodule(f"conv{i}").out_channels for i in range(1, 5)] == [32, 64, 128, 128]
    assert shapes(model) == {"fc1": (128, 20), "out": (20, 10)}
    assert model(torch.randn(2, *input_shape)).shape == (2, 10)


@pytest.mark.parametrize("input_shape", [(20,), (1, 4, 28), (28, 28)])
def test_cnn_rejects_non_images(input_shape):
    with pytest.raises(DataError, match="cnn needs image inputs"):
        build_model(ModelSpec(arch="cnn"), input_shape)


@pytest.mark.parametrize("arch", ["fc", "mlp", "cnn"])
def test_no_bias(arch):
    model = build_model(ModelSpec(arch=arch, hidden=16, width=8), (1, 8, 8))
    for module in model.modules():
        assert getattr(module, "bias", None) is None
    assert all(name.endswith("weight") for name, _ in model.named_parameters())


def test_init_scale_multiplies_default_init():
    torch.manual_seed(3)
    ref = build_model(ModelSpec(arch="cnn", width=8), (1, 8, 8))
    torch.manual_seed(3)
    scaled = build_model(ModelSpec(arch="cnn", width=8, init_scale=4.0), (1, 8, 8))
    for (name, p), q in zip(ref.named_parameters(), scaled.parameters(), strict=True):
        assert torch.allclose(q, 4.0 * p), name


def test_build_uses_callers_seed():
    torch.manual_seed(0)
    a = build_model(ModelSpec(width=5), (4,))
    torch.manual_seed(0)
    b = build_model(ModelSpec(width=5), (4,))
    c = build_model(ModelSpec(width=5), (4,))
    problems.assert_deterministic(a.fc1.weight, b.fc1.weight)  # same seed: rtol 1e-12
    problems.assert_differ(b.fc1.weight, c.fc1.weight)  # the RNG moved on


def test_linear_layers_dotted_names_in_order():
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 2)))
    assert list(linear_layers(model)) == ["0", "1.1"]


def test_resolve_block_names_the_linear_layers():
    model = build_model(ModelSpec(arch="fc", width=50), (784,))
    assert resolve_block(model, "fc2") == (["fc2.weight"], "fc2")
    listing = "the model's Linear layers are: fc1 (784->50), fc2 (50->50), out (50->10)"
    for bad in ("xyz", "", "relu1"):
        with pytest.raises(TargetError) as err:
            resolve_block(model, bad)
        assert listing in str(err.value)


def test_resolve_block_takes_a_linear_with_bias_as_weight_then_bias():
    """Any block is allowed (SPEC 1, issue 19): a Linear with a bias is its weight, then its
    bias, without the Kronecker structure (no Linear name); its weight alone neither."""
    model = nn.Sequential(nn.Linear(3, 4, bias=True), nn.Linear(4, 2, bias=False))
    assert resolve_block(model, "0") == (["0.weight", "0.bias"], None)
    assert resolve_block(model, ["0.weight"]) == (["0.weight"], None)
    assert resolve_block(model, "1") == (["1.weight"], "1")
