"""Tests of awch_scale.run.training: SGD loop, curves, early stopping, checkpoints, divergence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from awch_scale.model.architectures import build_model
from awch_scale.run.data import DataBundle, load_data
from awch_scale.run.recipe import DataSpec, ModelSpec, TrainSpec
from awch_scale.run.training import HISTORY_KEYS, train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def gauss() -> DataBundle:
    spec = DataSpec(dataset="gauss", classes=[0, 1, 2], train_per_class=60, test_size=30,
                    gauss={"dim": 10, "separation": 3.0})
    return load_data(spec)


def fresh_model(data: DataBundle, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    spec = ModelSpec(**{"arch": "fc", "width": 16, "output_dim": 3, **kw})
    return build_model(spec, data.input_shape)


def run(model, data, tmp_path, *, loss="ce", seed=0, ckpts=(), dtype=torch.float32, **kw):
    spec = TrainSpec(**{"lr": 0.1, "batch_size": 16, "epochs": 8, **kw})
    return train(model, data, spec, loss, seed, list(ckpts), tmp_path, CPU, dtype,
                 progress=False)


def test_training_reduces_loss(gauss, tmp_path):
    res = run(fresh_model(gauss), gauss, tmp_path, epochs=10, cosine={"t_max": 10})
    h = res.history
    assert set(h) == set(HISTORY_KEYS)
    assert all(v.shape == (11,) and np.isfinite(v).all() for v in h.values())
    assert h["train_loss"][-1] < 0.5 * h["train_loss"][0]
    assert h["train_acc"][-1] > 0.9 and h["test_acc"][-1] > 0.8
    assert not res.failed and res.stopped_epoch == 10
    # lr: the rate used in each epoch, cosine-annealed from 0.1 towards 0.001
    assert h["lr"][0] == h["lr"][1] == pytest.approx(0.1)
    assert np.all(np.diff(h["lr"][1:]) < 0) and h["lr"][-1] > 0.001


def test_mse_losses_and_float64(gauss, tmp_path):
    for loss in ("mse", "lmse"):
        res = run(fresh_model(gauss), gauss, tmp_path, loss=loss, epochs=3)
        assert res.history["train_loss"][-1] < res.history["train_loss"][0]
    model = fresh_model(gauss)
    res = run(model, gauss, tmp_path, epochs=2, dtype=torch.float64)
    assert model.fc1.weight.dtype == torch.float64 and np.isfinite(res.history["grad_norm"]).all()


def test_grad_norm_is_full_batch_gradient_on_analysis_set(gauss, tmp_path):
    data = load_data(DataSpec(dataset="gauss", classes=[0, 1, 2], train_per_class=40,
                              test_size=0, label_noise=0.3, gauss={"dim": 10}))
    model = fresh_model(data)
    res = run(model, data, tmp_path, epochs=0)
    out = model(data.x_analysis)
    loss = torch.nn.functional.cross_entropy(out, data.y_analysis)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected = torch.sqrt(sum(g.pow(2).sum() for g in grads)).item()
    assert res.history["grad_norm"][0] == pytest.approx(expected, rel=1e-5)
    assert res.history["train_loss"][0] == pytest.approx(loss.item(), rel=1e-5)
    assert np.isnan(res.history["test_loss"][0]) and np.isnan(res.history["test_acc"][0])


def test_checkpoints_written_and_loadable(gauss, tmp_path):
    model = fresh_model(gauss)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    res = run(model, gauss, tmp_path / "ckpt", epochs=4, ckpts=[0, 2, 4])
    assert sorted(res.checkpoints) == [0, 2, 4] and res.ckpt_epoch == {0: 0, 2: 2, 4: 4}
    assert res.checkpoints[2] == tmp_path / "ckpt" / "epoch-00002.pt"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "epoch-00000.pt", "epoch-00002.pt", "epoch-00004.pt"]
    state0 = torch.load(res.checkpoints[0], weights_only=True)
    assert all(torch.equal(state0[k], initial[k]) for k in initial)
    state4 = torch.load(res.checkpoints[4], weights_only=True)
    assert all(torch.equal(state4[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="outside 0..train.epochs"):
        run(fresh_model(gauss), gauss, tmp_path, epochs=4, ckpts=[5])


def test_early_stopping(tmp_path):
    data = load_data(DataSpec(dataset="gauss", classes=[0, 1], train_per_class=40, test_size=10,
                              gauss={"dim": 5, "separation": 10.0}))
    model = fresh_model(data, output_dim=2)
    res = run(model, data, tmp_path, epochs=50, stop_loss=0.01, ckpts=[1, 50],
              cosine=None)
    e = res.stopped_epoch
    assert 2 <= e < 50 and not res.failed and "stopped early" in res.message
    h = res.history
    assert h["train_loss"][e] < 0.01 and h["train_acc"][e] == 1.0
    assert not (h["train_loss"][e - 1] < 0.01 and h["train_acc"][e - 1] == 1.0)
    assert res.ckpt_epoch[1] == 1
    assert np.isnan(h["train_loss"][e + 1 :]).all() and np.isfinite(h["train_loss"][: e + 1]).all()
    assert res.ckpt_epoch[50] == e and res.checkpoints[50].name == "epoch-00050.pt"
    final = torch.load(res.checkpoints[50], weights_only=True)
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())


def test_divergence_detected(gauss, tmp_path):
    res = run(fresh_model(gauss), gauss, tmp_path, loss="lmse", lr=1e6, clip_grad_norm=None,
              cosine=None, epochs=5, ckpts=[0, 3])
    assert res.failed and res.stopped_epoch == 0
    assert "diverged" in res.message and "epoch 1, step" in res.message
    assert "lower train.lr" in res.message
    assert list(res.checkpoints) == [0] and not (tmp_path / "epoch-00003.pt").exists()
    loss = res.history["train_loss"]
    assert np.isfinite(loss[0]) and np.isnan(loss[1:]).all()


def test_clipping_keeps_training_finite(gauss, tmp_path):
    res = run(fresh_model(gauss), gauss, tmp_path, loss="ce", lr=1.0, clip_grad_norm=0.1,
              epochs=2)
    assert not res.failed


def test_determinism_with_dropout(gauss, tmp_path):
    def once(seed):
        model = fresh_model(gauss, dropout=0.3)
        res = run(model, gauss, tmp_path, seed=seed, epochs=3)
        return res.history, model.state_dict()

    h1, w1 = once(0)
    torch.manual_seed(123)  # the global RNG state must not matter
    h2, w2 = once(0)
    h3, w3 = once(1)
    assert all(np.array_equal(h1[k], h2[k], equal_nan=True) for k in h1)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not all(torch.equal(w1[k], w3[k]) for k in w1)


def test_leaves_global_rng_untouched(gauss, tmp_path):
    model = fresh_model(gauss, dropout=0.2)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    run(model, gauss, tmp_path, epochs=1)
    assert torch.equal(torch.rand(3), expected)
