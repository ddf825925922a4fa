"""The checkpoints of a recipe's runs: training a run into them, and loading one back.

Checkpoints live next to the store (``<store>.ckpt/run-<seed>/epoch-<e>.pt``); the store
records each file's SHA-256, and :func:`load_checkpoint` refuses a file that is not the
one written for its (seed, epoch).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from awch_scale.errors import CheckpointError
from awch_scale.results.store import ResultStore
from awch_scale.run.failures import record_failure
from awch_scale.run.plan import Plan
from awch_scale.run.training import train

_CURVES = ("train_loss", "train_acc", "test_loss", "test_acc", "grad_norm")


def checkpoint_path(plan: Plan, seed: int, epoch: int) -> Path:
    """The checkpoint file of run ``seed`` at ``epoch``."""
    return plan.checkpoint_root / f"run-{seed}" / f"epoch-{epoch:05d}.pt"


def train_run(plan: Plan, store: ResultStore, i: int, seed: int, progress: bool) -> bool:
    """Train run ``i`` (seed ``seed``) into its checkpoints, unless they exist, and write
    its training records; returns False if it diverged."""
    r = plan.recipe
    ds = store.open()
    ckpts = [checkpoint_path(plan, seed, e) for e in r.analysis.epochs]
    if bool(ds.trained.values[i]):
        if bool(ds.failed.values[i]):
            return False
        if all(p.exists() for p in ckpts):
            return True
    model = plan.new_model(seed)
    res = train(model, plan.data, r.train, r.loss, seed, r.analysis.epochs,
                ckpts[0].parent, plan.device, plan.dtype, progress=progress)
    at = {}
    for name in _CURVES:
        curve = np.asarray(res.history[name])
        at[name] = [curve[res.ckpt_epoch[e]] if e in res.ckpt_epoch else np.nan
                    for e in r.analysis.epochs]
    ckpt_epoch = [res.ckpt_epoch.get(e, -1) for e in r.analysis.epochs]
    if res.failed:
        record_failure(store, str(seed), res.message)
    hashes = [file_sha256(p) if p.exists() else "" for p in ckpts]
    store.write_training(i, res.history, at, np.asarray(ckpt_epoch), res.failed, hashes)
    return not res.failed


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (checkpoints are tied to their run by it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(plan: Plan, seed: int, epoch: int, expected_sha256: str | None):
    """The state dict of (seed, epoch), refused unless it is the file written for it."""
    path = checkpoint_path(plan, seed, epoch)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} is missing; delete the store to retrain")
    if expected_sha256 and file_sha256(path) != expected_sha256:
        raise CheckpointError(
            f"checkpoint {path} is not the one written for run {seed}, epoch {epoch} (its "
            "SHA-256 differs from the one recorded in the store): it was replaced or "
            "modified. Restore it, or delete the store and its checkpoints to retrain")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (torch's text advises weights_only=False)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded as a plain tensor state dict "
            f"({type(exc).__name__}: {first}); it is refused for safety") from None
