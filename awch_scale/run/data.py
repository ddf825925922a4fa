"""Data sets of a recipe: the training subset, label noise, the test set and the analysis set.

:func:`load_data` turns a :class:`~awch_scale.run.recipe.DataSpec` into a :class:`DataBundle` of
tensors. Everything is deterministic given the spec: each random draw uses its own numpy
generator derived from ``spec.seed`` (never the global RNG), so that, for example, changing
the label noise does not change which samples are drawn.

Data sets:

- ``gauss``: synthetic Gaussian mixture; class c has mean ``separation * m_c`` with ``m_c`` a
  seeded random unit vector in R^dim (it depends only on the seed, c and dim) and identity
  covariance. Train and test sets are balanced across classes.
- ``digits``: scikit-learn's 8x8 digits (shipped with scikit-learn), scaled to [0, 1].
- ``mnist``: torchvision MNIST, scaled to [0, 1].
- ``cifar10``: torchvision CIFAR-10, normalised per channel with the standard mean and std.
- ``modular``: generated, the grokking benchmark (Power et al. 2022): every pair (a, b),
  0 <= a, b < p = ``modulus``, is the token sequence ``a b =`` (ids a, b and p, stored as
  float32, shape (3,)) with label (a + b) mod p. A seeded permutation of the p^2 pairs
  puts round(train_fraction * p^2) of them in the training set and the others in the
  test set (a split by pairs: no pair is in both). The classes are 0..p-1.

Labels keep their original class ids (they are not remapped to 0..C-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from awch_scale.errors import DataError
from awch_scale.run.recipe import DataSpec

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# Independent random streams, all derived from spec.seed.
_STREAM_TRAIN, _STREAM_TEST, _STREAM_NOISE, _STREAM_ANALYSIS, _STREAM_MEANS = range(5)


@dataclass
class DataBundle:
    """Tensors of one data spec.

    Attributes:
        x_train: training inputs, shape ``(N_train, *input_shape)``, float32.
        y_train: training labels after label noise, shape ``(N_train,)``, int64, original ids.
        clean: shape ``(N_train,)``, bool; True where the label was not corrupted.
        x_test: test inputs, shape ``(N_test, *input_shape)``, float32.
        y_test: test labels, shape ``(N_test,)``, int64.
        analysis_idx: int64 indices into the training set of the analysis set (the clean
            samples, or a fixed seeded subsample of them of size ``spec.analysis_size``),
            in increasing order.
        input_shape: shape of one input.
        classes: the class ids used, as in the spec.
    """

    x_train: Tensor
    y_train: Tensor
    clean: Tensor
    x_test: Tensor
    y_test: Tensor
    analysis_idx: Tensor
    input_shape: tuple[int, ...]
    classes: list[int]

    @property
    def x_analysis(self) -> Tensor:
        """Inputs of the analysis set."""
        return self.x_train[self.analysis_idx]

    @property
    def y_analysis(self) -> Tensor:
        """Labels of the analysis set (all uncorrupted)."""
        return self.y_train[self.analysis_idx]

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return int(self.y_train.shape[0])

    @property
    def n_analysis(self) -> int:
        """Number of analysis samples."""
        return int(self.analysis_idx.shape[0])


def _rng(spec: DataSpec, *stream: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, *stream])


def load_data(spec: DataSpec) -> DataBundle:
    """Load the data set of a spec, draw its subsets and apply label noise.

    Args:
        spec: the ``data`` section of a recipe.

    Returns:
        The training set (with noisy labels and the clean mask), the test set and the
        analysis indices.

    Raises:
        DataError: unknown class ids, too few samples, missing files or a negative seed.
    """
    if spec.seed < 0:
        raise DataError(f"data.seed must be a non-negative integer, got {spec.seed}.")
    loaders = {"gauss": _gauss, "digits": _digits, "mnist": _mnist, "cifar10": _cifar10,
               "modular": _modular}
    x_train, y_train, x_test, y_test = loaders[spec.dataset](spec)
    y_noisy, clean = _label_noise(y_train, spec)
    analysis_idx = _analysis_indices(clean, spec)
    return DataBundle(
        x_train=torch.as_tensor(x_train, dtype=torch.float32),
        y_train=torch.as_tensor(y_noisy, dtype=torch.int64),
        clean=torch.as_tensor(clean, dtype=torch.bool),
        x_test=torch.as_tensor(x_test, dtype=torch.float32),
        y_test=torch.as_tensor(y_test, dtype=torch.int64),
        analysis_idx=torch.as_tensor(analysis_idx, dtype=torch.int64),
        input_shape=tuple(int(s) for s in x_train.shape[1:]),
        classes=spec.class_ids,
    )


def _balanced_counts(total: int, n_classes: int) -> list[int]:
    """Split ``total`` into ``n_classes`` counts differing by at most one (first ones larger)."""
    base, extra = divmod(total, n_classes)
    return [base + (i < extra) for i in range(n_classes)]


def _gauss(spec: DataSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    dim, sep = spec.gauss.dim, spec.gauss.separation
    means = {}
    for c in spec.classes:
        m = _rng(spec, _STREAM_MEANS, c).standard_normal(dim)
        means[c] = sep * m / np.linalg.norm(m)

    def draw(counts: list[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pairs = list(zip(spec.classes, counts, strict=True))
        xs = [means[c] + rng.standard_normal((n, dim)) for c, n in pairs]
        ys = [np.full(n, c) for c, n in pairs]
        return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)

    n_cls = len(spec.classes)
    x_train, y_train = draw([spec.train_per_class] * n_cls, _rng(spec, _STREAM_TRAIN))
    x_test, y_test = draw(_balanced_counts(spec.test_size, n_cls), _rng(spec, _STREAM_TEST))
    return x_train, y_train, x_test, y_test


def _check_classes(spec: DataSpec, available: np.ndarray) -> None:
    unknown = [c for c in spec.classes if c not in set(available.tolist())]
    if unknown:
        raise DataError(
            f"data.classes {unknown} are not classes of dataset '{spec.dataset}', "
            f"which has classes {sorted(set(available.tolist()))}."
        )


def _train_indices(spec: DataSpec, targets: np.ndarray, where: str) -> np.ndarray:
    """Seeded draw of ``train_per_class`` indices per class (class blocks, sorted inside)."""
    _check_classes(spec, np.unique(targets))
    rng = _rng(spec, _STREAM_TRAIN)
    chosen = []
    for c in spec.classes:
        pool = np.flatnonzero(targets == c)
        if len(pool) < spec.train_per_class:
            raise DataError(
                f"class {c} of dataset '{spec.dataset}' has only {len(pool)} samples{where}, "
                f"fewer than data.train_per_class = {spec.train_per_class}."
            )
        chosen.append(np.sort(rng.choice(pool, spec.train_per_class, replace=False)))
    return np.concatenate(chosen)


def _test_indices(
    spec: DataSpec, targets: np.ndarray, exclude: np.ndarray, where: str
) -> np.ndarray:
    """Seeded draw of ``test_size`` indices among the chosen classes, not in ``exclude``."""
    pool = np.setdiff1d(np.flatnonzero(np.isin(targets, spec.classes)), exclude)
    if len(pool) < spec.test_size:
        raise DataError(
            f"dataset '{spec.dataset}' has only {len(pool)} samples of classes {spec.classes} "
            f"{where}, fewer than data.test_size = {spec.test_size}."
        )
    return np.sort(_rng(spec, _STREAM_TEST).choice(pool, spec.test_size, replace=False))


def _digits(spec: DataSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    train = _train_indices(spec, y, "")
    test = _test_indices(spec, y, train, "left after drawing the training set")
    return x[train], y[train], x[test], y[test]


def _missing_files_error(spec: DataSpec, folder: str, files: str, exc: Exception) -> DataError:
    if spec.download:
        return DataError(
            f"could not download dataset '{spec.dataset}' into {spec.root}: {exc}; fetch the "
            f"files by hand into {folder} ({files})."
        )
    return DataError(
        f"dataset '{spec.dataset}' not found under data.root = {spec.root}: torchvision expects "
        f"{folder} ({files}); set data.download: true to fetch them."
    )


def _torchvision_datasets() -> ModuleType:
    from awch_scale import _torchvision_compat

    _torchvision_compat.ensure_torchvision_importable()  # must precede the torchvision import
    import torchvision.datasets

    return torchvision.datasets


def _load_split(
    spec: DataSpec, cls_name: str, folder: str, files: str
) -> list[tuple[Any, np.ndarray]]:
    """Train and test split of a torchvision data set as (raw ``.data``, targets) pairs."""
    datasets = _torchvision_datasets()
    cls = getattr(datasets, cls_name)
    out = []
    for train in (True, False):
        try:
            ds = cls(spec.root, train=train, download=spec.download)
        except Exception as exc:  # noqa: BLE001  (torchvision raises many kinds)
            present = [f for f in files.replace(" ", "").split(",")
                       if any(Path(folder).glob(f"{f}*"))] if Path(folder).is_dir() else []
            if present:
                raise DataError(
                    f"dataset '{spec.dataset}' files under {folder} exist ({', '.join(present)}) "
                    f"but cannot be read ({type(exc).__name__}: {str(exc)[:200]}): they are "
                    "corrupt or truncated; delete them and fetch them again (data.download: "
                    "true)") from None
            raise _missing_files_error(spec, folder, files, exc) from None
        out.append((ds.data, np.asarray(ds.targets, dtype=np.int64)))
    return out


def _mnist(spec: DataSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    folder = f"{spec.root}/MNIST/raw"
    files = ("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
             "t10k-labels-idx1-ubyte")
    (xa, ya), (xb, yb) = _load_split(spec, "MNIST", folder, files)
    train = _train_indices(spec, ya, " in the training split")
    test = _test_indices(spec, yb, np.empty(0, dtype=np.int64), "in the test split")

    def prep(data: Tensor, idx: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(data)[torch.as_tensor(idx)].to(torch.float32) / 255.0
        return x.unsqueeze(1).numpy()

    return prep(xa, train), ya[train], prep(xb, test), yb[test]


def _cifar10(spec: DataSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    folder = f"{spec.root}/cifar-10-batches-py"
    files = "data_batch_1 to data_batch_5, test_batch, batches.meta"
    (xa, ya), (xb, yb) = _load_split(spec, "CIFAR10", folder, files)
    train = _train_indices(spec, ya, " in the training split")
    test = _test_indices(spec, yb, np.empty(0, dtype=np.int64), "in the test split")
    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR10_STD, dtype=np.float32).reshape(1, 3, 1, 1)

    def prep(data: np.ndarray, idx: np.ndarray) -> np.ndarray:
        x = np.asarray(data)[idx].astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        return (x - mean) / std

    return prep(xa, train), ya[train], prep(xb, test), yb[test]


def _modular(spec: DataSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    p = spec.modulus
    a, b = (g.ravel() for g in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    x = np.stack([a, b, np.full_like(a, p)], axis=1).astype(np.float32)
    y = ((a + b) % p).astype(np.int64)
    n_train = int(min(p * p - 1, max(1, round(spec.train_fraction * p * p))))
    perm = _rng(spec, _STREAM_TRAIN).permutation(p * p)
    train, test = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    return x[train], y[train], x[test], y[test]


def _label_noise(y: np.ndarray, spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """Replace each label with probability rho by a uniformly chosen different class."""
    if spec.label_noise == 0:
        return y.copy(), np.ones(len(y), dtype=bool)
    classes = np.sort(np.asarray(spec.class_ids, dtype=np.int64))
    rng = _rng(spec, _STREAM_NOISE)
    flip = rng.random(len(y)) < spec.label_noise
    shift = rng.integers(1, len(classes), size=len(y))  # 1..C-1: never the same class
    new = classes[(np.searchsorted(classes, y) + shift) % len(classes)]
    y_noisy = np.where(flip, new, y)
    return y_noisy, ~flip


def _analysis_indices(clean: np.ndarray, spec: DataSpec) -> np.ndarray:
    idx = np.flatnonzero(clean)
    if len(idx) < 2 and spec.label_noise > 0:
        raise DataError(
            f"data.label_noise = {spec.label_noise} leaves {len(idx)} of {len(clean)} training "
            "labels uncorrupted; the analysis set is drawn from those and needs at least 2: "
            "lower data.label_noise or enlarge data.train_per_class."
        )
    if spec.analysis_size is None:
        return idx
    if spec.analysis_size > len(idx):
        raise DataError(
            f"data.analysis_size = {spec.analysis_size} exceeds the {len(idx)} training samples "
            "with uncorrupted labels; lower it or leave it unset to use them all."
        )
    return np.sort(_rng(spec, _STREAM_ANALYSIS).choice(idx, spec.analysis_size, replace=False))
