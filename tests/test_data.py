"""Tests of awch_scale.run.data: shapes, determinism, label noise, subsets and loader errors."""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from awch_scale.errors import DataError
from awch_scale.run import data as data_mod
from awch_scale.run.data import CIFAR10_MEAN, CIFAR10_STD, DataBundle, load_data
from awch_scale.run.recipe import DataSpec


def gauss_spec(**kw) -> DataSpec:
    base = dict(dataset="gauss", classes=[0, 1, 2], train_per_class=30, test_size=10)
    return DataSpec(**{**base, **kw})


def assert_bundles_equal(a: DataBundle, b: DataBundle) -> None:
    for name in ("x_train", "y_train", "clean", "x_test", "y_test", "analysis_idx"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.input_shape == b.input_shape and a.classes == b.classes


def test_gauss_shapes_dtypes_and_balance():
    d = load_data(gauss_spec(classes=[1, 4, 7], gauss={"dim": 5}))
    assert d.x_train.shape == (90, 5) and d.x_train.dtype == torch.float32
    assert d.y_train.dtype == torch.int64 and d.clean.dtype == torch.bool
    assert d.input_shape == (5,) and d.classes == [1, 4, 7]
    assert d.x_test.shape == (10, 5)
    # original ids kept; train balanced; test balanced as far as possible
    assert torch.bincount(d.y_train, minlength=8)[[1, 4, 7]].tolist() == [30, 30, 30]
    assert sorted(torch.bincount(d.y_test, minlength=8)[[1, 4, 7]].tolist()) == [3, 3, 4]
    assert d.clean.all() and torch.equal(d.analysis_idx, torch.arange(90))
    assert torch.equal(d.x_analysis, d.x_train) and torch.equal(d.y_analysis, d.y_train)


def test_gauss_means_follow_separation():
    d = load_data(gauss_spec(train_per_class=2000, gauss={"dim": 4, "separation": 5.0}))
    for c in d.classes:
        mean = d.x_train[d.y_train == c].mean(0)
        assert abs(mean.norm().item() - 5.0) < 0.2


def test_deterministic_and_seed_dependent():
    spec = gauss_spec(label_noise=0.2, analysis_size=40)
    assert_bundles_equal(load_data(spec), load_data(spec))
    other = load_data(gauss_spec(label_noise=0.2, analysis_size=40, seed=1))
    assert not torch.equal(other.x_train, load_data(spec).x_train)


def test_label_noise_fraction_and_clean_mask():
    classes = [0, 2, 5, 9]
    noisy = load_data(gauss_spec(classes=classes, train_per_class=1000, label_noise=0.3))
    orig = load_data(gauss_spec(classes=classes, train_per_class=1000))
    assert torch.equal(noisy.x_train, orig.x_train)  # noise does not change the draw
    frac = 1 - noisy.clean.float().mean().item()
    assert abs(frac - 0.3) < 0.03
    assert torch.equal(noisy.y_train[noisy.clean], orig.y_train[noisy.clean])
    flipped = noisy.y_train[~noisy.clean]
    assert (flipped != orig.y_train[~noisy.clean]).all()
    assert set(flipped.tolist()) == set(classes)
    assert torch.equal(noisy.analysis_idx, torch.nonzero(noisy.clean).squeeze(1))
    assert (noisy.y_analysis == orig.y_train[noisy.analysis_idx]).all()


def test_label_noise_two_classes_swaps():
    d = load_data(gauss_spec(classes=[3, 8], train_per_class=200, label_noise=0.5))
    orig = load_data(gauss_spec(classes=[3, 8], train_per_class=200))
    swapped = {3: 8, 8: 3}
    expected = torch.tensor([swapped[int(c)] for c in orig.y_train[~d.clean]])
    assert torch.equal(d.y_train[~d.clean], expected)


def test_analysis_subsample():
    d = load_data(gauss_spec(label_noise=0.2, analysis_size=25))
    idx = d.analysis_idx
    assert idx.shape == (25,) and idx.dtype == torch.int64
    assert torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == 25
    assert d.clean[idx].all()
    assert d.x_analysis.shape == (25, 20)
    with pytest.raises(DataError, match="analysis_size = 1000 exceeds"):
        load_data(gauss_spec(analysis_size=1000))


def test_negative_seed_is_refused():
    """The recipe schema refuses it (as a boolean or a seed beyond int64); load_data keeps
    its own check for specs built without validation."""
    from pydantic import ValidationError

    for bad in (-1, True, 2**63):
        with pytest.raises(ValidationError, match="seed"):
            gauss_spec(seed=bad)
    spec = gauss_spec().model_copy(update={"seed": -1})
    with pytest.raises(DataError, match="non-negative"):
        load_data(spec)


def test_digits():
    spec = DataSpec(dataset="digits", classes=[3, 7], train_per_class=100, test_size=60)
    d = load_data(spec)
    assert d.x_train.shape == (200, 1, 8, 8) and d.input_shape == (1, 8, 8)
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0 and d.x_train.max() == 1.0
    assert torch.bincount(d.y_train, minlength=8)[[3, 7]].tolist() == [100, 100]
    assert d.x_test.shape == (60, 1, 8, 8) and set(d.y_test.tolist()) <= {3, 7}
    assert_bundles_equal(d, load_data(spec))


def test_digits_errors():
    with pytest.raises(DataError, match=r"class 0 .* has only 178 samples"):
        load_data(DataSpec(dataset="digits", classes=[0, 1], train_per_class=179))
    with pytest.raises(DataError, match=r"only 60 samples .* left after drawing"):
        load_data(DataSpec(dataset="digits", classes=[0, 1], train_per_class=150, test_size=61))
    with pytest.raises(DataError, match=r"\[12\] are not classes"):
        load_data(DataSpec(dataset="digits", classes=[1, 12]))


def test_mnist_missing_files(tmp_path: Path):
    with pytest.raises(DataError) as err:
        load_data(DataSpec(dataset="mnist", root=str(tmp_path)))
    msg = str(err.value)
    assert str(tmp_path) in msg and f"{tmp_path}/MNIST/raw" in msg
    assert "train-images-idx3-ubyte" in msg and "data.download: true" in msg


def test_cifar_missing_files(tmp_path: Path):
    with pytest.raises(DataError) as err:
        load_data(DataSpec(dataset="cifar10", root=str(tmp_path)))
    msg = str(err.value)
    assert f"{tmp_path}/cifar-10-batches-py" in msg and "data.download: true" in msg


def _write_idx(path: Path, array: np.ndarray) -> None:
    code = 0x08  # unsigned byte
    header = struct.pack(">I", (code << 8) | array.ndim)
    header += b"".join(struct.pack(">I", s) for s in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_from_local_files(tmp_path: Path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 30)):
        labels = np.arange(n) % 10
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    spec = DataSpec(dataset="mnist", root=str(tmp_path), classes=[2, 5], train_per_class=4,
                    test_size=5)
    d = load_data(spec)
    assert d.x_train.shape == (8, 1, 28, 28) and d.input_shape == (1, 28, 28)
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    assert torch.bincount(d.y_train, minlength=6)[[2, 5]].tolist() == [4, 4]
    assert d.x_test.shape == (5, 1, 28, 28) and set(d.y_test.tolist()) <= {2, 5}
    with pytest.raises(DataError, match="has only 6 samples in the training split"):
        load_data(DataSpec(dataset="mnist", root=str(tmp_path), classes=[2, 5],
                           train_per_class=7))


def test_cifar_normalisation(monkeypatch: pytest.MonkeyPatch):
    rng = np.random.default_rng(0)

    class FakeCIFAR10:
        def __init__(self, root, train, download):  # noqa: ANN001
            n = 40 if train else 20
            self.data = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
            self.targets = [i % 10 for i in range(n)]

    monkeypatch.setattr(data_mod, "_torchvision_datasets",
                        lambda: SimpleNamespace(CIFAR10=FakeCIFAR10))
    d = load_data(DataSpec(dataset="cifar10", root="unused", classes=[0, 1], train_per_class=3,
                           test_size=4))
    assert d.x_train.shape == (6, 3, 32, 32) and d.input_shape == (3, 32, 32)
    assert d.x_test.shape == (4, 3, 32, 32)
    raw = d.x_train * torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    raw = raw + torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert torch.allclose(raw * 255, (raw * 255).round(), atol=1e-3)
