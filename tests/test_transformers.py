"""The built-in transformers (model.arch vit, gpt), the modular-arithmetic data, their
recipe keys, sequence losses and the targets inside a block."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from awch_scale.errors import RecipeError
from awch_scale.model.architectures import build_model
from awch_scale.model.losses import get_loss
from awch_scale.model.problem import make_problem, resolve_block
from awch_scale.run.data import load_data
from awch_scale.run.recipe import parse_recipe


def recipe(data: str, model: str, extra: str = ""):
    return parse_recipe(f"name: t\ndata: {data}\nmodel: {model}\n"
                        f"analysis: {{target: blocks.0.mlp.fc1, epochs: [0]}}\n{extra}")


GPT = recipe("{dataset: modular, modulus: 7, train_fraction: 0.6}",
             "{arch: gpt, d_model: 8, heads: 2, depth: 2}")
VIT = recipe("{dataset: digits, train_per_class: 5, test_size: 10}",
             "{arch: vit, d_model: 8, heads: 2, patch: 4, pool: mean}")


def test_modular_data_split_by_pairs_and_seeded():
    d = load_data(GPT.data)
    assert d.input_shape == (3,) and d.classes == list(range(7))
    assert d.n_train == round(0.6 * 49) and d.n_train + len(d.y_test) == 49
    pairs = {tuple(r[:2]) for r in d.x_train.int().tolist()}
    assert not pairs & {tuple(r[:2]) for r in d.x_test.int().tolist()}
    x = torch.cat([d.x_train, d.x_test]).long()
    assert (x[:, 2] == 7).all()
    y = torch.cat([d.y_train, d.y_test])
    assert torch.equal(y, (x[:, 0] + x[:, 1]) % 7)
    again = load_data(GPT.data)
    assert torch.equal(again.x_train, d.x_train)
    other = load_data(GPT.data.model_copy(update={"seed": 1}))
    assert not torch.equal(other.x_train, d.x_train)


def test_gpt_and_vit_names_and_shapes():
    assert (GPT.model.vocab, GPT.model.output_dim) == (8, 7)
    torch.manual_seed(0)
    gpt = build_model(GPT.model, (3,))
    names = [n for n, _ in gpt.named_parameters()]
    for n in ("blocks.1.attn.q.weight", "blocks.0.attn.o.bias", "blocks.0.mlp.fc1.bias",
              "blocks.0.ln2.weight", "embed.tok.weight", "out.bias"):
        assert n in names
    x = load_data(GPT.data).x_train[:5]
    assert gpt(x).shape == (5, 7)
    # causal: changing the answer position's own token changes only it; earlier logits
    # cannot see later tokens (the first position's output ignores b)
    h = gpt[:2](x)
    x2 = x.clone()
    x2[:, 1] = (x2[:, 1] + 1) % 7
    assert torch.allclose(gpt[:2](x2)[:, 0], h[:, 0])
    vit = build_model(VIT.model, (1, 8, 8))
    assert vit(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    assert dict(vit.named_parameters())["embed.pos"].shape == (1, 4, 8)  # mean pool: no cls


@pytest.mark.parametrize("bad, key", [
    ("data: {dataset: digits}\nmodel: {arch: vit, heads: 3}", "model.heads"),
    ("data: {dataset: digits}\nmodel: {arch: vit, width: 3}", "model.width"),
    ("data: {dataset: digits}\nmodel: {arch: fc, d_model: 8}", "model.d_model"),
    ("data: {dataset: digits}\nmodel: {arch: gpt}", "model.arch gpt"),
    ("data: {dataset: modular}\nmodel: {arch: vit}", "data.dataset modular"),
    ("data: {dataset: modular, test_size: 3}\nmodel: {arch: gpt}", "data.test_size"),
    ("data: {dataset: digits, modulus: 5}\nmodel: {arch: vit}", "data.modulus"),
    ("data: {dataset: modular, modulus: 5}\nmodel: {arch: gpt, vocab: 5}", "model.vocab"),
    ("data: {dataset: modular, modulus: 5}\nmodel: {arch: gpt, output_dim: 4}",
     "model.output_dim"),
    ("data: {dataset: modular, train_fraction: 1.0}\nmodel: {arch: gpt}", "train_fraction"),
])
def test_recipe_keys_are_validated_with_the_key_named(bad, key):
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        parse_recipe(f"name: t\n{bad}\nanalysis: {{target: x, epochs: [0]}}\n")


def test_vit_patch_must_divide_the_image():
    spec = VIT.model.model_copy(update={"patch": 3})
    with pytest.raises(Exception, match="model.patch"):
        build_model(spec, (1, 8, 8))


def test_sequence_loss_is_the_mean_over_predicted_tokens():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([[1, 2, -100, 0], [-100, -100, 3, 4]])
    for name in ("ce", "mse", "lmse"):
        f = get_loss(name)
        got = f(z, y)
        for i in range(2):
            keep = y[i] >= 0
            want = f(z[i][keep], y[i][keep]).mean()
            assert torch.allclose(got[i], want)
        assert torch.allclose(f(z[:, 3], y[:, 3]), f(z[:, 3:], y[:, 3:]))


@pytest.mark.parametrize("target, reason", [
    ("blocks.0.mlp.fc1", "bias"),
    ("blocks.0.attn.q", "bias"),
    ("blocks.0.attn", "module(s)"),
    ("blocks.0.ln2", "LayerNorm"),
    ("embed.proj", "Conv2d"),
    (["blocks.0.attn.v.weight"], "has a bias"),
])
def test_targets_inside_a_block(target, reason):
    torch.manual_seed(0)
    vit = build_model(VIT.model.model_copy(update={"pool": "cls"}), (1, 8, 8))
    names, linear = resolve_block(vit, target)
    assert linear is None
    if isinstance(target, str) and target.endswith(("fc1", ".q")):
        assert names == [f"{target}.weight", f"{target}.bias"]
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6) % 3
    p = make_problem(vit, target, x, y, "ce", chunk_size=4)
    assert reason in p.generic_reason
    assert p.features.shape == ((6, 5, 8) if target != "embed.proj" else (6, 1, 8, 8))


def test_bias_free_linear_over_tokens_takes_the_generic_route():
    torch.manual_seed(0)
    vit = build_model(VIT.model, (1, 8, 8)).double()
    vit.blocks[0].mlp.fc2 = torch.nn.Linear(32, 8, bias=False).double()
    names, linear = resolve_block(vit, "blocks.0.mlp.fc2")
    assert linear == "blocks.0.mlp.fc2"
    p = make_problem(vit, "blocks.0.mlp.fc2", torch.rand(4, 1, 8, 8).double(),
                     torch.arange(4) % 2, "ce")
    assert p.linear_name is None and "one input vector per sample" in p.generic_reason
    assert np.isfinite(p.per_sample_loss(p.w, p.features, p.labels).detach().numpy()).all()
