"""Training by plain minibatch SGD, as in the reference code (``train_model.py``).

:func:`train` runs SGD with optional weight decay, cosine annealing of the learning rate and
gradient-norm clipping on the full (possibly label-noisy) training set, records training
curves on the analysis set and the test set after every epoch, stops early at a minimum,
detects divergence and writes the requested checkpoints.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from awch_scale.model.losses import LossFn, get_loss
from awch_scale.run.data import DataBundle
from awch_scale.run.recipe import TrainSpec

EVAL_CHUNK = 1024
HISTORY_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "grad_norm", "lr")


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        history: per-epoch curves ``train_loss``, ``train_acc`` (on the analysis set),
            ``test_loss``, ``test_acc``, ``grad_norm`` (norm of the full-batch gradient of the
            analysis-set loss) and ``lr`` (the learning rate used in that epoch; at epoch 0 the
            initial one), each of length ``spec.epochs + 1``, index = epoch (0 = before
            training), NaN for epochs not reached.
        checkpoints: requested checkpoint epoch -> file holding a CPU ``state_dict``.
        ckpt_epoch: requested checkpoint epoch -> epoch whose weights the file holds (the
            stopping epoch for requested epochs after an early stop).
        stopped_epoch: last epoch completed (after a divergence, the epoch before it).
        failed: True when training diverged (non-finite loss).
        message: one sentence on how training ended.
    """

    history: dict[str, np.ndarray]
    checkpoints: dict[int, Path] = field(default_factory=dict)
    ckpt_epoch: dict[int, int] = field(default_factory=dict)
    stopped_epoch: int = 0
    failed: bool = False
    message: str = ""


def _evaluate(
    model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, with_grad: bool
) -> tuple[float, float, float]:
    """Mean loss, accuracy and (optionally) full-batch gradient norm, in chunks, eval mode.

    Returns NaN for everything on an empty set, and NaN for the gradient norm when
    ``with_grad`` is false.
    """
    n = int(y.shape[0])
    if n == 0:
        return math.nan, math.nan, math.nan
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    with torch.set_grad_enabled(with_grad):
        for start in range(0, n, EVAL_CHUNK):
            xb, yb = x[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK]
            z = model(xb)
            losses = loss_fn(z, yb)
            if with_grad:
                (losses.sum() / n).backward()
            loss_sum += losses.detach().sum().double()
            correct += (z.detach().argmax(dim=-1) == yb).sum()
    grad_norm = math.nan
    if with_grad:
        sq = sum(p.grad.double().pow(2).sum() for p in params if p.grad is not None)
        grad_norm = float(torch.as_tensor(sq).sqrt())
        model.zero_grad(set_to_none=True)
    return float(loss_sum) / n, float(correct) / n, grad_norm


def _save_atomic(model: nn.Module, path: Path) -> None:
    """Save the model's ``state_dict`` (as CPU tensors) via a temporary file and rename.

    The file is written through a Python file object: a full disk is then an ``OSError``
    (ENOSPC, naming ``path``) instead of torch's ``RuntimeError: basic_ios::clear:
    iostream error``; the temporary file is removed on failure.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:
            exc.filename = str(path)
        raise


def _rng_devices(device: torch.device) -> Iterable[int]:
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


def train(
    model: nn.Module,
    data: DataBundle,
    spec: TrainSpec,
    loss: str,
    seed: int,
    checkpoint_epochs: list[int],
    checkpoint_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = True,
) -> TrainResult:
    """Train a model in place with plain minibatch SGD.

    Each epoch visits the full training set (noisy labels included) in minibatches of
    ``spec.batch_size`` from a fresh permutation drawn by a generator seeded with ``seed``
    (the last batch may be smaller). The minibatch loss is the mean per-sample loss. After
    each epoch (and at epoch 0, before training) the model is evaluated in eval mode on the
    analysis set (loss, accuracy, full-batch gradient norm) and on the test set.

    Training stops early after an epoch whose analysis-set loss is below ``spec.stop_loss``
    at 100% analysis-set accuracy, and stops with ``failed=True`` when a minibatch loss is
    not finite. The global torch RNG is seeded with ``seed`` inside a fork, so dropout masks
    are reproducible and the caller's RNG state is left untouched.

    Args:
        model: the model; moved to ``device``/``dtype`` and trained in place.
        data: the data bundle.
        spec: the ``train`` section of a recipe.
        loss: loss name (``ce``, ``mse``, ``lmse``).
        seed: seed of the minibatch order and dropout.
        checkpoint_epochs: epochs (0..spec.epochs) whose weights are saved as
            ``checkpoint_dir / f"epoch-{e:05d}.pt"``.
        checkpoint_dir: folder of the checkpoints (created if needed).
        device: device to train on.
        dtype: floating point type of model and data.
        progress: show a progress bar over epochs.

    Returns:
        The training curves, the checkpoint files and how training ended.

    Raises:
        ValueError: a checkpoint epoch outside 0..spec.epochs.
    """
    bad = [e for e in checkpoint_epochs if not 0 <= e <= spec.epochs]
    if bad:
        raise ValueError(f"checkpoint epochs {bad} are outside 0..train.epochs ({spec.epochs})")
    with torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(seed)
        return _train(model, data, spec, loss, seed, sorted(set(checkpoint_epochs)),
                      Path(checkpoint_dir), device, dtype, progress)


def _train(
    model: nn.Module,
    data: DataBundle,
    spec: TrainSpec,
    loss: str,
    seed: int,
    requested: list[int],
    checkpoint_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool,
) -> TrainResult:
    loss_fn = get_loss(loss)
    model.to(device=device, dtype=dtype)
    x_train = data.x_train.to(device=device, dtype=dtype)
    y_train = data.y_train.to(device)
    x_ana, y_ana = x_train[data.analysis_idx.to(device)], y_train[data.analysis_idx.to(device)]
    x_test = data.x_test.to(device=device, dtype=dtype)
    y_test = data.y_test.to(device)
    n_train = int(y_train.shape[0])

    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, weight_decay=spec.l2)
    scheduler = None
    if spec.cosine is not None:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=spec.cosine.t_max, eta_min=spec.lr * spec.cosine.eta_min_ratio
        )
    generator = torch.Generator().manual_seed(seed)
    history = {k: np.full(spec.epochs + 1, np.nan) for k in HISTORY_KEYS}
    result = TrainResult(history=history)
    if requested:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)

    def record(epoch: int, lr: float) -> None:
        model.eval()
        tr_loss, tr_acc, gnorm = _evaluate(model, loss_fn, x_ana, y_ana, with_grad=True)
        te_loss, te_acc, _ = _evaluate(model, loss_fn, x_test, y_test, with_grad=False)
        values = (tr_loss, tr_acc, te_loss, te_acc, gnorm, lr)
        for key, value in zip(HISTORY_KEYS, values, strict=True):
            history[key][epoch] = value
        if epoch in requested:
            path = checkpoint_dir / f"epoch-{epoch:05d}.pt"
            _save_atomic(model, path)
            result.checkpoints[epoch] = path
            result.ckpt_epoch[epoch] = epoch

    record(0, spec.lr)
    bar = tqdm(range(1, spec.epochs + 1), desc="train", unit="epoch", disable=not progress)
    n_steps = math.ceil(n_train / spec.batch_size)
    for epoch in bar:
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        perm = torch.randperm(n_train, generator=generator).to(device)
        for step, start in enumerate(range(0, n_train, spec.batch_size), start=1):
            idx = perm[start : start + spec.batch_size]
            batch_loss = loss_fn(model(x_train[idx]), y_train[idx]).mean()
            if not torch.isfinite(batch_loss):
                bar.close()
                result.failed = True
                result.message = (
                    f"training diverged: the minibatch loss became {float(batch_loss.detach())} at "
                    f"epoch {epoch}, step {step} of {n_steps} (lr {lr:.3g}); lower train.lr "
                    "or set train.clip_grad_norm."
                )
                return result
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            if spec.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), spec.clip_grad_norm)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        record(epoch, lr)
        result.stopped_epoch = epoch
        tr_loss, tr_acc = history["train_loss"][epoch], history["train_acc"][epoch]
        bar.set_postfix(loss=f"{tr_loss:.4g}", acc=f"{tr_acc:.4f}")
        if tr_loss < spec.stop_loss and tr_acc == 1.0:
            bar.close()
            for e in (e for e in requested if e > epoch):
                path = checkpoint_dir / f"epoch-{e:05d}.pt"
                _save_atomic(model, path)
                result.checkpoints[e] = path
                result.ckpt_epoch[e] = epoch
            result.message = (
                f"stopped early after epoch {epoch}: train loss {tr_loss:.3g} < "
                f"train.stop_loss {spec.stop_loss:g} at 100% train accuracy."
            )
            return result
    bar.close()
    final = history["train_loss"][-1]
    result.message = f"trained {spec.epochs} epochs; final train loss {final:.4g}."
    return result
