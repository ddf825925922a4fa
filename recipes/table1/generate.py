"""Write one recipe per cell of the paper's Table 1 (hyperparameters: Table 2, appendix B.2.2).

Zhang, Yang & Tu (2026), "On the Superlinear Relationship between SGD Noise Covariance and
Loss Landscape Curvature": data sets MNIST and CIFAR-10, models MLP and CNN, C = 3, 6, 10
classes, losses CE and MSE (softmax + MSE). 2 x 2 x 2 x 3 = 24 recipes, written next to this
script as ``<dataset>_<model>_<loss>_c<C>.yaml`` (recipe name ``table1_<same>``).

Usage::

    python recipes/table1/generate.py           # (re)write the 24 files
    python recipes/table1/generate.py --check   # exit 1 if a file differs from what it would write

The output depends only on the tables below, so reruns are byte-identical.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

DATASETS = ("mnist", "cifar10")
MODELS = ("mlp", "cnn")
LOSSES = ("ce", "mse")
CLASS_COUNTS = (3, 6, 10)

# Table 2: (dataset, model, loss) -> (N_data per class, batch B, epochs, {C: N eigenvalues}).
TABLE2: dict[tuple[str, str, str], tuple[int, int, int, dict[int, int]]] = {
    ("mnist", "mlp", "ce"): (2000, 50, 100, {3: 300, 6: 1000, 10: 1000}),
    ("mnist", "mlp", "mse"): (2000, 50, 100, {3: 300, 6: 1000, 10: 1000}),
    ("mnist", "cnn", "ce"): (2000, 50, 100, {3: 200, 6: 500, 10: 1000}),
    ("mnist", "cnn", "mse"): (5000, 128, 100, {3: 200, 6: 300, 10: 800}),
    ("cifar10", "mlp", "ce"): (2000, 100, 150, {3: 800, 6: 1500, 10: 1500}),
    ("cifar10", "mlp", "mse"): (5000, 100, 100, {3: 500, 6: 1000, 10: 1000}),
    ("cifar10", "cnn", "ce"): (2000, 128, 100, {3: 500, 6: 1000, 10: 1500}),
    ("cifar10", "cnn", "mse"): (5000, 128, 500, {3: 500, 6: 500, 10: 1000}),
}
# Table 2 footnote: CIFAR-10 CNN CE with C = 3 uses N_data = 5,000.
N_DATA_OVERRIDE = {("cifar10", "cnn", "ce", 3): 5000}

# The paper's reported gammas are data, in paper.csv beside this script (also read by
# ``awch-scale table``): Table 1 gamma_emp / gamma_AWD and Table 3 gamma'_AWD (MSE only),
# mean +/- std over 4 runs, one row per recipe.
PAPER_CSV = HERE / "paper.csv"


def read_paper(path: Path = PAPER_CSV) -> list[dict[str, str]]:
    """Rows of paper.csv as strings (lines starting with '#' are comments)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def _pm(row: dict[str, str], col: str) -> str:
    return f"{row[col]} +/- {row[col + '_std']}" if row[col] else ""


_PAPER = {(r["dataset"], r["model"], r["loss"], int(r["C"])): r for r in read_paper()}
# Table 1: (dataset, model, C) -> {loss: (gamma_emp, gamma_AWD)}, mean +/- std over 4 runs.
TABLE1: dict[tuple[str, str, int], dict[str, tuple[str, str]]] = {}
for (_d, _m, _l, _c), _r in _PAPER.items():
    TABLE1.setdefault((_d, _m, _c), {})[_l] = (_pm(_r, "gamma_emp"), _pm(_r, "gamma_awd"))
# Table 3 (MSE only): gamma'_AWD, which adds the gradient terms C^hg and C^gg (Eq. 58).
TABLE3_PRIME: dict[tuple[str, str, int], str] = {
    (_d, _m, _c): _pm(_r, "gamma_awd_prime") for (_d, _m, _l, _c), _r in _PAPER.items()
    if _l == "mse"
}

# Paper appendix B.1 -> awch-scale model section, target layer and its size D.
MODEL_SPEC: dict[tuple[str, str], tuple[str, str, str, int]] = {
    # (dataset, model): (paper architecture, YAML model mapping, target, D)
    ("mnist", "mlp"): ("784-50-50-10 MLP", "{arch: fc, width: 50, output_dim: 10}", "fc2", 2500),
    ("cifar10", "mlp"): ("3072-1000-50-50-10 MLP",
                         "{arch: mlp, hidden: 1000, width: 50, output_dim: 10}", "fc3", 2500),
    ("mnist", "cnn"): ("CNN [32,M,64,M,128,128,M] -> 128-20-10",
                       "{arch: cnn, width: 20, output_dim: 10}", "fc1", 2560),
    ("cifar10", "cnn"): ("CNN [32,M,64,M,128,128,M] -> 128-20-10",
                         "{arch: cnn, width: 20, output_dim: 10}", "fc1", 2560),
}

DATA_NAME = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
LOSS_NAME = {"ce": "CE (cross-entropy)", "mse": "MSE (softmax + mean squared error)"}
SEEDS = (0, 1, 2, 3)
TEST_SIZE = 1000
LR = 0.1


def recipe_name(dataset: str, model: str, loss: str, c: int) -> str:
    """Recipe name of one Table 1 cell, e.g. ``table1_mnist_mlp_ce_c3``."""
    return f"table1_{dataset}_{model}_{loss}_c{c}"


def file_name(dataset: str, model: str, loss: str, c: int) -> str:
    """File name of one Table 1 cell, e.g. ``mnist_mlp_ce_c3.yaml``."""
    return f"{dataset}_{model}_{loss}_c{c}.yaml"


def render(dataset: str, model: str, loss: str, c: int) -> str:
    """The YAML text of one Table 1 cell."""
    n_data, batch, epochs, n_eig = TABLE2[(dataset, model, loss)]
    n_data = N_DATA_OVERRIDE.get((dataset, model, loss, c), n_data)
    k = n_eig[c]
    paper_arch, model_yaml, target, d = MODEL_SPEC[(dataset, model)]
    if k >= d:  # pragma: no cover - guarded by the tables above
        raise ValueError(f"N = {k} must be below D = {d} for {dataset} {model}")
    g_emp, g_awd = TABLE1[(dataset, model, c)][loss]
    classes = list(range(c))
    root = f"data/{dataset}"
    footnote = (" (Table 2 footnote, C = 3)"
                if (dataset, model, loss, c) in N_DATA_OVERRIDE else "")
    prime = (f"\n#   gamma'_AWD = {TABLE3_PRIME[(dataset, model, c)]}  (Table 3: with the gradient "
             "terms C^hg, C^gg)" if loss == "mse" else "")
    header = f"""\
# Paper Table 1 cell: {DATA_NAME[dataset]}, {model.upper()}, C = {c}, loss {LOSS_NAME[loss]}.
# Paper's reported values (mean +/- std over 4 runs):
#   gamma_emp = {g_emp}, gamma_AWD = {g_awd}{prime}
# Hyperparameters from Table 2 (appendix B.2.2): N_data = {n_data:,} per class{footnote},
# B = {batch}, {epochs} epochs, N = {k} Hessian eigenvalues; SGD with lr {LR}, cosine annealing
# (T_max 500, eta_min = lr/100), gradient clipping 5.0, no L2, 4 seeds.
# Model (appendix B.1): {paper_arch}, no biases; target {target}, D = {d}.
# Data: the torchvision {DATA_NAME[dataset]} files must be present under data.root = {root}
# (relative to the working directory), or set data.download: true to fetch them.
# Generated by recipes/table1/generate.py; edit that script, not this file.
"""
    body = f"""\
name: {recipe_name(dataset, model, loss, c)}
data:
  dataset: {dataset}
  root: {root}
  download: false
  classes: {classes}
  train_per_class: {n_data}
  test_size: {TEST_SIZE}
model: {model_yaml}
loss: {loss}
train:
  lr: {LR}
  batch_size: {batch}
  epochs: {epochs}
  cosine: {{t_max: 500, eta_min_ratio: 0.01}}
  clip_grad_norm: 5.0
  l2: 0.0
  stop_loss: 1.0e-5
runs:
  seeds: {list(SEEDS)}
analysis:
  target: {target}
  epochs: [{epochs}]
  k: {k}
  n_fit: {k}
  chunk_size: 1024
  eigen: {{method: auto, tol: 1.0e-6, ncv: null}}
device: auto
dtype: float32
"""
    return header + body


def render_all() -> dict[str, str]:
    """File name -> YAML text for all 24 cells, in a fixed order."""
    out = {}
    for dataset in DATASETS:
        for model in MODELS:
            for loss in LOSSES:
                for c in CLASS_COUNTS:
                    out[file_name(dataset, model, loss, c)] = render(dataset, model, loss, c)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only check that the files are up to date")
    parser.add_argument("--out", type=Path, default=HERE, help="output folder")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render_all().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if args.check:
        if stale:
            print(f"out of date: {', '.join(stale)}; run {Path(__file__).name}", file=sys.stderr)
            return 1
        print("all 24 recipes are up to date")
    else:
        print(f"wrote 24 recipes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
