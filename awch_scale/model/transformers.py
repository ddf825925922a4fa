"""Small vision and language transformers, built as named ``nn.Sequential`` models.

Both are ``nn.Sequential(embed, blocks, norm, pool, out)`` with named children, so that
a target is addressed by its dotted name and the analysis caches the embedding's output
(the model's prefix before the target's top-level child) as features:

- ``embed``: :class:`PatchEmbedding` (ViT: a ``patch`` x ``patch`` convolution with
  stride ``patch``, a class token when ``pool`` is ``cls``, learned positions) or
  :class:`TokenEmbedding` (GPT: token and learned position embeddings);
- ``blocks``: ``depth`` pre-LayerNorm blocks ``blocks.0``, ``blocks.1``, ... each
  x + attn(ln1(x)), then x + mlp(ln2(x)), with

  - ``blocks.i.attn``: softmax self-attention with ``heads`` heads and separate
    ``q``, ``k``, ``v``, ``o`` Linear layers (d_model -> d_model, with bias), causal
    for GPT;
  - ``blocks.i.mlp``: ``fc1`` (d_model -> mlp_ratio * d_model), ``act`` (GELU),
    [``drop``], ``fc2`` (back to d_model), with bias;
- ``norm``: the final LayerNorm;
- ``pool``: :class:`Pool`: the class token (``cls``), the mean over tokens (``mean``)
  or the last token (``last``, GPT: the position of ``=`` predicts the answer);
- ``out``: Linear d_model -> K, with bias.

So ``blocks.0.mlp.fc1`` is a Linear with bias over the token dimension (inputs
(N, T, d_model)), ``blocks.0.attn.q`` an attention projection and ``blocks.0.ln2`` the
LayerNorm in front of the MLP. Every operation is written so that ``torch.func``
(vmap, grad, jvp) handles it: attention is spelled out (no fused kernel), and token ids
arrive as floats (the analysis casts inputs to the model's dtype) and are rounded to
integers inside :class:`TokenEmbedding`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from awch_scale.errors import DataError

if TYPE_CHECKING:  # the recipe layer builds models from its spec; no runtime import upward
    from awch_scale.run.recipe import ModelSpec


class Attention(nn.Module):
    """Multi-head softmax self-attention with separate q, k, v, o projections.

    Args:
        d_model: token width.
        heads: number of heads (divides d_model).
        causal: mask attention to later positions.
    """

    def __init__(self, d_model: int, heads: int, causal: bool):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model = {d_model} is not divisible by heads = {heads}")
        self.heads, self.causal = heads, causal
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        """(n, T, d) -> (n, T, d)."""
        n, t, d = x.shape
        h = self.heads

        def split(z: Tensor) -> Tensor:
            return z.reshape(n, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // h)
        if self.causal:
            later = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(later, float("-inf"))
        mixed = scores.softmax(dim=-1) @ v
        return self.o(mixed.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)).

    Args:
        d_model: token width.
        heads: attention heads.
        mlp_ratio: hidden width of the MLP in units of d_model.
        causal: causal attention.
        dropout: dropout after the MLP's activation (0: none).
    """

    def __init__(self, d_model: int, heads: int, mlp_ratio: int, causal: bool,
                 dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, heads, causal)
        self.ln2 = nn.LayerNorm(d_model)
        mlp: OrderedDict[str, nn.Module] = OrderedDict(
            fc1=nn.Linear(d_model, mlp_ratio * d_model), act=nn.GELU())
        if dropout > 0:
            mlp["drop"] = nn.Dropout(dropout)
        mlp["fc2"] = nn.Linear(mlp_ratio * d_model, d_model)
        self.mlp = nn.Sequential(mlp)

    def forward(self, x: Tensor) -> Tensor:
        """(n, T, d) -> (n, T, d)."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class PatchEmbedding(nn.Module):
    """Image (n, C, H, W) -> tokens (n, T, d): non-overlapping patches, a class token
    (``cls``) in front, plus learned positions (initialised N(0, 0.02^2)).

    Args:
        channels: image channels C.
        n_patches: (H / patch) * (W / patch).
        patch: patch side.
        d_model: token width.
        cls: prepend a learned class token.
    """

    def __init__(self, channels: int, n_patches: int, patch: int, d_model: int, cls: bool):
        super().__init__()
        self.proj = nn.Conv2d(channels, d_model, kernel_size=patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model)) if cls else None
        self.pos = nn.Parameter(0.02 * torch.randn(1, n_patches + int(cls), d_model))

    def forward(self, x: Tensor) -> Tensor:
        """(n, C, H, W) -> (n, T, d)."""
        z = self.proj(x).flatten(2).transpose(1, 2)
        if self.cls is not None:
            z = torch.cat([self.cls.expand(z.shape[0], -1, -1), z], dim=1)
        return z + self.pos


class TokenEmbedding(nn.Module):
    """Token ids (n, T) (integers, possibly stored as floats) -> (n, T, d): token plus
    learned position embeddings.

    Args:
        vocab: number of token ids.
        length: sequence length T.
        d_model: token width.
    """

    def __init__(self, vocab: int, length: int, d_model: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(1, length, d_model))

    def forward(self, x: Tensor) -> Tensor:
        """(n, T) ids -> (n, T, d)."""
        return self.tok(x.round().long()) + self.pos[:, :x.shape[1]]


class Pool(nn.Module):
    """Tokens (n, T, d) -> (n, d): ``cls`` (first token), ``mean`` or ``last`` token."""

    def __init__(self, mode: str):
        super().__init__()
        if mode not in ("cls", "mean", "last"):
            raise ValueError(f"pool mode {mode!r} must be cls, mean or last")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        """(n, T, d) -> (n, d)."""
        if self.mode == "mean":
            return x.mean(dim=1)
        return x[:, 0] if self.mode == "cls" else x[:, -1]

    def extra_repr(self) -> str:
        """The mode, in the module's repr."""
        return self.mode


def _assemble(embed: nn.Module, spec: ModelSpec, causal: bool, pool: str) -> nn.Sequential:
    blocks = nn.Sequential(*(Block(spec.d_model, spec.heads, spec.mlp_ratio, causal,
                                   spec.dropout) for _ in range(spec.depth)))
    return nn.Sequential(OrderedDict(
        embed=embed, blocks=blocks, norm=nn.LayerNorm(spec.d_model), pool=Pool(pool),
        out=nn.Linear(spec.d_model, spec.output_dim)))


def build_vit(spec: ModelSpec, input_shape: tuple[int, ...]) -> nn.Sequential:
    """The ViT of a spec for images of shape (C, H, W) (module docstring).

    Raises:
        DataError: inputs that are not images, or sides not divisible by ``model.patch``.
    """
    if len(input_shape) != 3:
        raise DataError(f"model.arch vit needs image inputs of shape (C, H, W); the data has "
                        f"input shape {tuple(input_shape)}.")
    c, h, w = input_shape
    if h % spec.patch or w % spec.patch:
        raise DataError(f"model.patch = {spec.patch} must divide the image sides {h} x {w}.")
    embed = PatchEmbedding(c, (h // spec.patch) * (w // spec.patch), spec.patch, spec.d_model,
                           cls=spec.pool == "cls")
    return _assemble(embed, spec, causal=False, pool=spec.pool)


def build_gpt(spec: ModelSpec, input_shape: tuple[int, ...]) -> nn.Sequential:
    """The decoder-only transformer of a spec for token sequences of shape (T,); the
    last position's logits are the prediction (module docstring).

    Raises:
        DataError: inputs that are not one sequence of token ids per sample, or no
            ``model.vocab``.
    """
    if len(input_shape) != 1:
        raise DataError(f"model.arch gpt needs token sequences of shape (T,); the data has "
                        f"input shape {tuple(input_shape)}.")
    if spec.vocab is None:
        raise DataError("model.vocab is not set: model.arch gpt needs the number of token ids "
                        "(a recipe with data.dataset modular sets it to data.modulus + 1).")
    embed = TokenEmbedding(spec.vocab, input_shape[0], spec.d_model)
    return _assemble(embed, spec, causal=True, pool="last")
