"""The loss over the analysis set as a function of one parameter block.

A :class:`BlockProblem` holds everything an operator needs: the flattened target
block ``w`` in R^D (SPEC section 1: a Linear weight W of shape (d_out, d_in)
flattened row-major, ``W.reshape(-1)``, or several named parameters concatenated),
a functional ``head`` that maps (w, features) to logits with every other parameter
held fixed, the per-sample loss, and the analysis set.

Feature caching: when the model is an ``nn.Sequential`` whose block lives in
top-level child i and later, the prefix ``model[:i]`` does not depend on w, so its
output is computed once (in chunks, without gradients) and stored as ``features``;
every later pass only runs ``model[i:]``. For any other model the features are the
inputs themselves and the head is the whole model. The numbers are identical either
way; only the cost differs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from awch_scale.errors import TargetError
from awch_scale.model.architectures import linear_layers
from awch_scale.model.losses import LossFn, get_loss


def _describe_linears(model: nn.Module) -> str:
    parts = [f"{name} ({m.in_features}->{m.out_features})"
             for name, m in linear_layers(model).items()]
    if len(parts) > 12:
        parts = parts[:12] + [f"... ({len(parts) - 12} more)"]
    return ", ".join(parts) or "(none)"


def _describe_value(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def resolve_block(model: nn.Module, target: str | Sequence[str]) -> tuple[list[str], str | None]:
    """Parameter names of the target block and, for a bias-free Linear target, its name.

    Any block is allowed (SPEC section 1): a module name means all the module's
    parameters in ``named_parameters`` order (for an ``nn.Linear``: weight, then bias;
    for an attention module: ``q.weight``, ``q.bias``, ``k.weight``, ...); a list of
    parameter names means those, in the given order. The second value names the module
    when the block is one bias-free ``nn.Linear`` (the module itself, or ``[name.weight]``
    alone): the candidate for the Kronecker structure and the whole AWD section, which
    :func:`make_problem` keeps only if the layer acts on one vector per sample.

    Args:
        model: the network.
        target: the name of a module, or a list of parameter names.

    Raises:
        TargetError: a target that is neither a name nor a list of names, an empty list,
            an unknown module/parameter, a repeated name, or a module without parameters.
    """
    params = dict(model.named_parameters())
    if isinstance(target, str):
        modules = dict(model.named_modules())
        mod = modules.get(target)
        if mod is None or target == "":
            raise TargetError(
                f"target layer '{target}' not found; the model's Linear layers are: "
                f"{_describe_linears(model)}"
            )
        names = [f"{target}.{n}" for n, _ in mod.named_parameters()]
        if not names:
            raise TargetError(f"target module '{target}' has no parameters; the model's Linear "
                              f"layers are: {_describe_linears(model)}")
        bias_free = isinstance(mod, nn.Linear) and mod.bias is None
        return names, (target if bias_free else None)
    if not isinstance(target, list | tuple) or not all(isinstance(n, str) for n in target):
        raise TargetError(f"'target' must be a module name or a list of parameter names, got "
                          f"{_describe_value(target)}; the model's Linear layers are: "
                          f"{_describe_linears(model)}")
    names = list(target)
    if not names:
        raise TargetError(f"'target' is an empty list; give a module name or at least one "
                          f"parameter name (the model's Linear layers are: "
                          f"{_describe_linears(model)})")
    missing = [n for n in names if n not in params]
    if missing:
        shown = list(params)
        more = f", ... ({len(shown) - 40} more)" if len(shown) > 40 else ""
        raise TargetError(
            f"target parameters {missing} not found; the model's parameters are: "
            f"{', '.join(shown[:40])}{more}"
        )
    if len(set(names)) != len(names):
        raise TargetError(f"target parameters {names} repeat a name")
    return names, _linear_owner(model, names)


def generic_reason(model: nn.Module, names: list[str]) -> str:
    """Why the block of ``names`` is not one bias-free ``nn.Linear`` weight (the
    structure the Kronecker operator and the AWD terms need), in a few words."""
    owners = {n.rsplit(".", 1)[0] if "." in n else "" for n in names}
    modules = dict(model.named_modules())
    if len(owners) == 1:
        owner = next(iter(owners))
        mod = modules.get(owner)
        if isinstance(mod, nn.Linear):
            if mod.bias is not None and f"{owner}.bias" in names:
                return f"the block includes the bias of nn.Linear '{owner}'"
            if mod.bias is not None:
                return (f"nn.Linear '{owner}' has a bias (its weight alone is not the layer's "
                        "whole affine map)")
        if mod is not None and not isinstance(mod, nn.Linear):
            return f"'{owner}' is a {type(mod).__name__}, not an nn.Linear"
    return f"the block is {len(names)} parameters of {len(owners)} module(s), not one nn.Linear"


def _linear_owner(model: nn.Module, names: list[str]) -> str | None:
    """The module name when ``names`` is exactly the weight of one bias-free nn.Linear
    (``["fc2.weight"]``, the natural port of the reference's ``layer_index``): such a
    block is the same target as the module ``fc2``, with the Kronecker fast path and AWD."""
    if len(names) != 1 or not names[0].endswith(".weight"):
        return None
    owner = names[0].removesuffix(".weight")
    mod = dict(model.named_modules()).get(owner)
    if isinstance(mod, nn.Linear) and mod.bias is None:
        return owner
    return None


@dataclass
class BlockProblem:
    """The analysis-set loss as a function of the flattened target block.

    Attributes:
        head: module mapping ``features`` to logits (a suffix of the model or the model).
        block_names: parameter names of the block in the full model.
        block_shapes: their shapes.
        w: the current block, flattened and concatenated, shape (D,).
        features: inputs of ``head`` for the analysis set, shape (N, ...).
        labels: integer labels, shape (N,).
        loss: per-sample loss function (SPEC section 1).
        chunk_size: samples per streamed chunk.
        linear_name: module name when the block is one bias-free ``nn.Linear`` weight
            acting on one input vector per sample (the Kronecker structure
            h_p = Q_p (x) a_p a_p^T; None for every other block).
        linear_inputs: inputs a_p of that Linear layer, shape (N, d_in), when known.
        generic_reason: for every other block, why it has no such structure (e.g. "the
            block includes the bias of nn.Linear 'fc1'"), for messages and provenance.
    """

    head: nn.Module
    block_names: list[str]
    block_shapes: list[torch.Size]
    w: Tensor
    features: Tensor
    labels: Tensor
    loss: LossFn
    chunk_size: int
    linear_name: str | None = None
    linear_inputs: Tensor | None = None
    generic_reason: str | None = None
    _fixed: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def D(self) -> int:  # noqa: N802  (the paper's symbol)
        """Block size D."""
        return self.w.numel()

    @property
    def N(self) -> int:  # noqa: N802
        """Analysis-set size N."""
        return self.labels.shape[0]

    @property
    def classes(self) -> Tensor:
        """The class of each sample, shape (N,): its label; for sequences labelled per
        token (labels (N, T)) there is no class per sample, and the set is one class (0):
        the class-balanced AWD draws then pair any two sequences and ``covar_within``
        equals ``covar``."""
        return sample_classes(self.labels)

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the products."""
        return self.w.dtype

    @property
    def device(self) -> torch.device:
        """Device of the block and the analysis set."""
        return self.w.device

    @property
    def n_chunks(self) -> int:
        """Number of streamed chunks."""
        return math.ceil(self.N / self.chunk_size)

    def slices(self) -> list[slice]:
        """Index ranges of the chunks, covering the analysis set once, in order."""
        return [slice(s, s + self.chunk_size) for s in range(0, self.N, self.chunk_size)]

    def chunks(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (features, labels) chunks covering the analysis set once, in order."""
        for sl in self.slices():
            yield self.features[sl], self.labels[sl]

    def unflatten(self, w: Tensor) -> dict[str, Tensor]:
        """Split a flat block vector into the head's named parameters.

        By ``torch.split`` (one piece: a view of ``w``), not by slicing: the backward of
        a slice fills a zero vector of size D and adds into it, per parameter, in every
        gradient and Hessian-vector product; split's backward writes each piece once.
        On a 768 x 3072 Linear with its bias (D = 2.4e6) that was 44 % of a per-sample
        Hessian-vector product's time (``aten::fill_`` and ``aten::add`` in the profile).
        """
        sizes = [math.prod(shape) for shape in self.block_shapes]
        pieces = (w,) if len(sizes) == 1 else torch.split(w, sizes)
        return {name: piece.view(shape) for name, piece, shape
                in zip(self.block_names, pieces, self.block_shapes, strict=True)}

    def logits(self, w: Tensor, x: Tensor) -> Tensor:
        """z = f(x; w) with all non-block parameters fixed."""
        return functional_call(self.head, {**self._fixed, **self.unflatten(w)}, (x,))

    def per_sample_loss(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """l_i(w) for a chunk, shape (n,)."""
        return self.loss(self.logits(w, x), y)

    def sample_loss(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """l(w) for one sample (x without batch dimension): the form torch.func.vmap needs."""
        return self.per_sample_loss(w, x.unsqueeze(0), y.unsqueeze(0))[0]


def _split_index(model: nn.Module, block_names: list[str]) -> int | None:
    if not isinstance(model, nn.Sequential):
        return None
    children = [name for name, _ in model.named_children()]
    owners = {n.split(".", 1)[0] for n in block_names}
    idx = [i for i, c in enumerate(children) if c in owners]
    return min(idx) if idx else None


@torch.no_grad()
def make_problem(
    model: nn.Module,
    target: str | Sequence[str],
    inputs: Tensor,
    labels: Tensor,
    loss: str | LossFn,
    *,
    chunk_size: int = 512,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> BlockProblem:
    """Build the :class:`BlockProblem` of ``model`` (put in eval mode) on (inputs, labels).

    The model is deep-copied to ``device``/``dtype``, so the caller's model is untouched.
    """
    names, linear_name = resolve_block(model, target)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = dtype or next(model.parameters()).dtype
    model = _copy_to(model, device, dtype)
    model.eval()
    inputs = inputs.to(device=device, dtype=dtype)
    check_target_use(model, target, names, linear_name, inputs[:1])
    labels = labels.to(device=device, dtype=torch.long)

    split = _split_index(model, names)
    if split is not None:
        # Sequential slices keep their children's names, so block names stay valid.
        head, prefix_mod = model[split:], model[:split]
        feats = torch.cat([prefix_mod(inputs[i:i + chunk_size])
                           for i in range(0, inputs.shape[0], chunk_size)]) if split else inputs
    else:
        head, feats = model, inputs

    params = dict(head.named_parameters())
    fixed = {n: p.detach() for n, p in params.items() if n not in set(names)}
    buffers = {n: b for n, b in head.named_buffers()}
    block = [params[n].detach() for n in names]
    w = torch.cat([b.reshape(-1) for b in block])

    linear_inputs, reason = None, None
    if linear_name is not None:
        layer = dict(model.named_modules())[linear_name]
        first = next(iter(head.children()), None) if split is not None else None
        if first is layer:
            linear_inputs = feats if feats.ndim == 2 else None
        else:
            linear_inputs = _capture_inputs(head, layer, feats, chunk_size)
        if linear_inputs is None:
            reason = (f"nn.Linear '{linear_name}' does not act on one input vector per sample "
                      "(e.g. inputs (N, T, d) over a token dimension, or a layer run more "
                      "than once per pass)")
            linear_name = None
    else:
        reason = generic_reason(model, names)

    return BlockProblem(
        head=head,
        block_names=names,
        block_shapes=[b.shape for b in block],
        w=w,
        features=feats,
        labels=labels,
        loss=get_loss(loss) if isinstance(loss, str) else loss,
        chunk_size=chunk_size,
        linear_name=linear_name,
        linear_inputs=linear_inputs,
        generic_reason=reason,
        _fixed={**fixed, **buffers},
    )


def check_target_use(model: nn.Module, target, names: list[str], linear_name: str | None,
                     sample: Tensor) -> None:
    """Refuse a target block the model's output does not depend on, and a Linear target
    that one forward pass calls more than once (its inputs a_p and the Kronecker and AWD
    paths assume one call per sample, SPEC section 1).

    Checked on one sample (a forward and a backward pass of ``model``, a copy whose
    parameters may be changed to require gradients).

    Raises:
        TargetError: naming ``target`` and what is wrong.
    """
    params = dict(model.named_parameters())
    calls: list[int] = []
    hook = (dict(model.named_modules())[linear_name].register_forward_hook(
        lambda *_: calls.append(1)) if linear_name is not None else None)
    try:
        with torch.enable_grad():
            block = [params[n].requires_grad_(True) for n in names]
            out = model(sample)
            grads = (torch.autograd.grad(out.sum(), block, allow_unused=True)
                     if isinstance(out, Tensor) and out.requires_grad else [None] * len(block))
    finally:
        if hook is not None:
            hook.remove()
    unused = [n for n, g in zip(names, grads, strict=True) if g is None]
    if unused or (linear_name is not None and not calls):
        raise TargetError(f"'target' {target!r} is not used by the model's forward pass (its "
                          f"output does not depend on {', '.join(unused or names)}); choose a "
                          f"layer the output depends on: {_describe_linears(model)}")
    if linear_name is not None and len(calls) > 1:
        raise TargetError(f"'target' {target!r}: layer '{linear_name}' is called {len(calls)} "
                          "times in one forward pass; awch-scale analyses a layer applied "
                          "once per sample (its inputs a_p, SPEC section 1): choose a layer "
                          f"called once: {_describe_linears(model)}")


def _copy_to(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(device=device, dtype=dtype)


def _capture_inputs(head: nn.Module, layer: nn.Linear, feats: Tensor, chunk: int
                    ) -> Tensor | None:
    """The layer's inputs (N, d_in), or None when it does not see one vector per sample
    (inputs over a token dimension, or several calls per forward pass)."""
    seen: list[Tensor] = []
    hook = layer.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].detach()))
    try:
        for i in range(0, feats.shape[0], chunk):
            head(feats[i:i + chunk])
    finally:
        hook.remove()
    a = torch.cat(seen) if seen else None
    if a is None or a.ndim != 2 or a.shape[0] != feats.shape[0]:
        return None
    return a


def sample_classes(labels: Tensor) -> Tensor:
    """One class per sample (:attr:`BlockProblem.classes`): ``labels`` when 1-D, zeros
    (one class) for per-token labels (N, T)."""
    if labels.ndim == 1:
        return labels
    return torch.zeros(labels.shape[0], dtype=labels.dtype, device=labels.device)
