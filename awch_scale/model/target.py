"""The target Linear layer split out of a :class:`BlockProblem`.

For a bias-free ``nn.Linear`` target with weight W (d_out x d_in) the loss of sample p
depends on W only through the layer's output z_p = W a_p, so

    g_p = vec(delta_p a_p^T),   h_p = Q_p (x) a_p a_p^T   (row-major vec),

with delta_p = d l_p / d z and Q_p = d^2 l_p / d z^2, taken *through the rest of the
network* (the layers after the target, the loss). :class:`TargetLayer` gives l_p as a
function of z (``loss_of_z``) and its z-space derivatives, vmapped over samples.

How l_p(z) is formed (the simplest correct way for each kind of model):

- ``suffix``: the problem's head is an ``nn.Sequential`` whose first child is the
  target (the case of every Sequential model whose target is a top-level child, as
  ``make_problem`` splits the model there). Then l_p(z) = loss(head[1:](z), y_p);
  only the layers after the target run.
- ``hook``: any other model. The whole head runs on the sample's features, and a
  forward hook on the target layer replaces its output by z. This requires that the
  target layer runs exactly once per sample and maps a (1, d_in) input to a (1, d_out)
  output; both are checked when the :class:`TargetLayer` is built.

In both modes the construction checks that the logits obtained from z_p = W a_p equal
``problem.logits(w, x_p)`` on a few samples, so ``linear_inputs`` and the split agree.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jacrev, jvp, vmap

from awch_scale.model.problem import BlockProblem

PIECEWISE_LINEAR: tuple[type, ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh,
    nn.Identity, nn.Flatten, nn.Unflatten, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
"""Module types (exact types, not subclasses) whose output is piecewise linear in their
input, so that their second derivative vanishes almost everywhere (also in autograd,
which takes relu'' = 0)."""

AFFINE_IN_EVAL: tuple[type, ...] = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.BatchNorm1d, nn.BatchNorm2d,
    nn.BatchNorm3d,
)
"""Module types that are affine maps in evaluation mode (``training`` False)."""


def is_piecewise_linear(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Sequential`` tree of :data:`PIECEWISE_LINEAR` (or, in
    eval mode, :data:`AFFINE_IN_EVAL`) modules. Conservative: any other module type,
    including a custom container whose ``forward`` could do anything, gives False."""
    for mod in module.modules():
        kind = type(mod)
        if kind is nn.Sequential or kind in PIECEWISE_LINEAR:
            continue
        if kind in AFFINE_IN_EVAL and not mod.training:
            continue
        return False
    return True


class TargetLayer:
    """z-space view of a Linear target block.

    Attributes:
        problem: the block problem.
        W: the target weight, (d_out, d_in), a view of ``problem.w``.
        A: target-layer inputs a_p, (N, d_in).
        mode: ``"suffix"`` or ``"hook"`` (see the module docstring).

    Raises:
        ValueError: the block is not one bias-free Linear weight with known inputs, or
            the split of the model is inconsistent with ``linear_inputs``.
    """

    def __init__(self, problem: BlockProblem, *, check: bool = True):
        name = problem.linear_name
        if name is None:
            raise ValueError(
                "the AWD terms (SPEC section 4) need a target that is one bias-free nn.Linear "
                f"layer; this block is {problem.block_names}"
            )
        if problem.linear_inputs is None:
            raise ValueError(f"the inputs of target layer '{name}' are unknown (linear_inputs)")
        if len(problem.block_shapes) != 1 or len(problem.block_shapes[0]) != 2:
            raise ValueError(f"target '{name}' block has shapes {problem.block_shapes}")
        self.problem = problem
        self.name = name
        self.d_out, self.d_in = (int(s) for s in problem.block_shapes[0])
        self.W = problem.w.view(self.d_out, self.d_in)
        self.A = problem.linear_inputs
        if self.A.shape != (problem.N, self.d_in):
            raise ValueError(
                f"linear_inputs of '{name}' have shape {tuple(self.A.shape)}, expected "
                f"({problem.N}, {self.d_in}): the layer must act on one vector per sample"
            )
        head = problem.head
        children = list(head.named_children()) if isinstance(head, nn.Sequential) else []
        if children and children[0][0] == name:
            self.mode = "suffix"
            self._suffix = head[1:]
            own = {n for n, _ in self._suffix.named_parameters()}
            own |= {n for n, _ in self._suffix.named_buffers()}
            self._params = {n: t for n, t in problem._fixed.items() if n in own}
        else:
            self.mode = "hook"
            self._layer = dict(head.named_modules())[name]
            self._params = {**problem._fixed, **problem.unflatten(problem.w)}
        self.ggn_exact = is_piecewise_linear(self._suffix if self.mode == "suffix" else head)
        """Whether Q_p = J_p^T S_p J_p exactly (:meth:`ggn_factors`): the logits are
        piecewise linear in z, so the term sum_c (dl/df_c) d^2 f_c/dz^2 vanishes."""
        with torch.no_grad():
            self.n_logits = int(self._logits_of_z(self.A[0] @ self.W.T,
                                                  problem.features[0]).shape[-1])
        """K, the number of logits."""
        if check:
            self._check()

    # ------------------------------------------------------------------ per-sample l(z)

    def _logits_of_z(self, z: Tensor, x: Tensor) -> Tensor:
        """Logits (1, K) of one sample whose target-layer output is z (d_out,)."""
        if self.mode == "suffix":
            return functional_call(self._suffix, self._params, (z.unsqueeze(0),))

        def replace(_mod, _inp, out):
            return z.reshape(out.shape)

        handle = self._layer.register_forward_hook(replace)
        try:
            return functional_call(self.problem.head, self._params, (x.unsqueeze(0),))
        finally:
            handle.remove()

    def loss_of_z(self, z: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """l_p as a function of the target output z (d_out,); x, y of one sample."""
        return self.problem.loss(self._logits_of_z(z, x), y.unsqueeze(0))[0]

    def _check(self, n: int = 4) -> None:
        p = self.problem
        n = min(n, p.N)
        x, a = p.features[:n], self.A[:n]
        if self.mode == "hook":
            calls: list[tuple[int, ...]] = []
            h = self._layer.register_forward_hook(
                lambda _m, _i, out: calls.append(tuple(out.shape)))
            try:
                with torch.no_grad():
                    functional_call(p.head, self._params, (x[:1],))
            finally:
                h.remove()
            if calls != [(1, self.d_out)]:
                raise ValueError(
                    f"target layer '{self.name}' must run once per forward pass on a "
                    f"(1, {self.d_in}) input; one sample gave outputs of shapes {calls}"
                )
        with torch.no_grad():
            want = p.logits(p.w, x)
            got = torch.cat([self._logits_of_z(zi, xi) for zi, xi in zip(a @ self.W.T, x,
                                                                         strict=True)])
        tol = 1e-4 if p.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
        err = (got - want).abs().max().item()
        scale = max(want.abs().max().item(), 1.0)
        if not err <= tol * scale:
            raise ValueError(
                f"logits from the target output z = W a differ from the model's by {err:.3g}: "
                f"linear_inputs of '{self.name}' do not match the model split ({self.mode})"
            )

    # ------------------------------------------------------------------ batched access

    def index(self, idx) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(a, z, x, y) of the analysis samples ``idx`` (array-like of ints)."""
        p = self.problem
        i = torch.as_tensor(idx, device=p.device, dtype=torch.long)
        a = self.A[i]
        return a, a @ self.W.T, p.features[i], p.labels[i]

    def deltas(self, z: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """delta_p = d l_p / d z for a batch, (n, d_out)."""
        return vmap(grad(self.loss_of_z))(z, x, y)

    def deltas_and_q(self, z: Tensor, x: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """(delta_p, Q_p v_p) for a batch: one forward-over-reverse product per sample."""

        def one(z1, x1, y1, v1):
            return jvp(lambda zz: grad(self.loss_of_z)(zz, x1, y1), (z1,), (v1,))

        return vmap(one)(z, x, y, v)

    def q_times(self, z: Tensor, x: Tensor, y: Tensor, M: Tensor) -> Tensor:
        """Q_p M_p for a batch, M (n, d_out, m) -> (n, d_out, m), by m z-space HVPs."""

        def one(z1, x1, y1, m1):
            def hvp(col):
                return jvp(lambda zz: grad(self.loss_of_z)(zz, x1, y1), (z1,), (col,))[1]

            return vmap(hvp, in_dims=1, out_dims=1)(m1)

        return vmap(one)(z, x, y, M)

    def q_full(self, z: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Q_p = d^2 l_p / dz^2 for a batch, (n, d_out, d_out), symmetrised."""
        Q = vmap(hessian(self.loss_of_z))(z, x, y)
        return 0.5 * (Q + Q.transpose(1, 2))

    def logit_jacobian(self, z: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(J_p, f_p) for a batch: J_p = df_p/dz (n, K, d_out) and the logits f_p (n, K),
        from one vmapped reverse-mode Jacobian (the logits ride along as its aux output)."""
        def logits(z1, x1):
            f = self._logits_of_z(z1, x1)[0]
            return f, f

        return vmap(jacrev(logits, has_aux=True))(z, x)

    def ggn_factors(self, z: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(J_p, S_p) with J_p = df_p/dz (K x d_out) and S_p = d^2 l_p/df^2 (K x K).

        For every model, J_p^T S_p J_p is the Gauss-Newton part of Q_p; when
        :attr:`ggn_exact` it is all of Q_p = d^2 l_p / dz^2, and Q_p M costs
        O(K d_out m) through :func:`ggn_times` instead of m z-space HVPs. Shapes
        (n, K, d_out) and (n, K, K).
        """
        J, f = self.logit_jacobian(z, x)
        S = vmap(hessian(lambda f1, y1: self.problem.loss(f1[None], y1[None])[0]))(f, y)
        return J, 0.5 * (S + S.transpose(1, 2))


def ggn_times(J: Tensor, S: Tensor, M: Tensor) -> Tensor:
    """J_p^T S_p J_p M_p for a batch: J (n, K, d), S (n, K, K), M (n, d, m) -> (n, d, m)."""
    return J.transpose(1, 2) @ (S @ (J @ M))
