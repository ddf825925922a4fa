"""The YAML recipe: one validated description of data, model, training and analysis.

A recipe covers everything the AW-CH reference configuration has (``model_config.py``
of the authors' code) plus the analysis settings of awch-scale. It is validated by
pydantic models that reject unknown keys and wrong types; :func:`load_recipe` turns
any problem into a :class:`~awch_scale.errors.RecipeError` whose message names the
field and what is allowed.

Example (``recipes/quickstart.yaml``)::

    name: quickstart
    data: {dataset: gauss, classes: [0, 1, 2], train_per_class: 300, test_size: 300}
    model: {arch: fc, width: 20}
    loss: ce
    train: {lr: 0.1, batch_size: 50, epochs: 30}
    runs: {seeds: [0]}
    analysis: {target: fc2, epochs: [30], k: 30}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from awch_scale.errors import RecipeError
from awch_scale.settings import AnalysisSettings, field_path

PosInt = Annotated[int, Field(strict=True, gt=0)]
NonNegInt = Annotated[int, Field(strict=True, ge=0)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
Seed = Annotated[int, Field(strict=True, ge=0, le=2**63 - 1)]
"""A seed: a non-negative integer that fits the store's int64 ``run`` coordinate."""

MAX_RECIPE_BYTES = 1 << 20
"""Largest recipe file read (a recipe is a few hundred bytes)."""
MAX_ALIASES = 100
"""Most YAML aliases a recipe may use (guards against alias-expansion bombs)."""
MAX_MESSAGE = 600
"""Error messages quote at most this many characters of the offending input."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, validate_default=True)


class GaussSpec(_Section):
    """Synthetic Gaussian mixture: class c has mean ``separation * m_c`` with ``m_c``
    a seeded random unit vector in R^dim, and identity covariance.

    Attributes:
        dim: input dimension.
        separation: distance of each class mean from the origin.
    """

    dim: PosInt = 20
    separation: PosFloat = 3.0


class DataSpec(_Section):
    """Data set and the subset of it that is trained on and analysed.

    Attributes:
        dataset: ``gauss`` (synthetic, embedded), ``digits`` (scikit-learn, embedded),
            ``mnist`` or ``cifar10`` (torchvision, read from ``root``), ``modular``
            (generated: the sequences ``a b =`` with answer (a + b) mod ``modulus``, the
            grokking benchmark of Power et al. 2022; for ``model.arch: gpt``).
        root: folder holding the torchvision files (``mnist``/``cifar10`` only).
        download: let torchvision download into ``root`` when files are missing.
        classes: class ids used (the reference's ``sample_holder``); labels keep their
            ids, so the model's ``output_dim`` must exceed the largest one (``modular``:
            not used, the classes are the residues 0..modulus-1).
        train_per_class: training samples per class (not used by ``modular``).
        test_size: total test samples (drawn from the chosen classes; not used by
            ``modular``, whose test set is every pair not trained on).
        label_noise: probability rho that a training label is replaced by another class;
            the analysis set is the uncorrupted part of the training set.
        analysis_size: optional size of a fixed random subsample of the analysis set.
        seed: seed of the data draw (subsets, noise, synthetic data, the modular split).
        gauss: the Gaussian mixture of ``gauss`` (only with that data set).
        modulus: p of ``modular``: all p^2 pairs (a, b), 0 <= a, b < p, tokens 0..p-1
            and p for ``=`` (vocabulary p + 1), answers 0..p-1.
        train_fraction: fraction of the p^2 pairs of ``modular`` trained on (a seeded
            split by pairs); the other pairs are the test set.
    """

    dataset: Literal["gauss", "digits", "mnist", "cifar10", "modular"] = "gauss"
    root: str | None = None
    download: bool = False
    classes: list[NonNegInt] = Field(default_factory=lambda: list(range(10)), min_length=2)
    train_per_class: PosInt = 200
    test_size: NonNegInt = 200
    label_noise: Probability = 0.0
    analysis_size: PosInt | None = None
    seed: Seed = 0
    gauss: GaussSpec = Field(default_factory=GaussSpec)
    modulus: Annotated[int, Field(strict=True, ge=2)] = 97
    train_fraction: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 0.5

    @property
    def class_ids(self) -> list[int]:
        """The class ids of the data: ``classes``, or 0..modulus-1 for ``modular``."""
        return list(range(self.modulus)) if self.dataset == "modular" else list(self.classes)

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        given = self.model_fields_set
        if self.dataset == "modular":
            unused = sorted(given & {"classes", "train_per_class", "test_size", "root",
                                     "download"})
            if unused:
                raise ValueError(f"data.{unused[0]} is not used with dataset: modular (the "
                                 "classes are the residues 0..modulus-1, the split is set by "
                                 "data.train_fraction); remove it")
        else:
            extra = sorted(given & {"modulus", "train_fraction"})
            if extra:
                raise ValueError(f"data.{extra[0]} is only allowed with dataset: modular")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"data.classes has repeated ids: {self.classes}")
        if self.dataset in ("mnist", "cifar10") and self.root is None:
            raise ValueError(
                f"data.root is required for dataset '{self.dataset}': the folder that holds "
                "(or, with download: true, will hold) the torchvision files"
            )
        if self.dataset != "gauss" and "gauss" in self.model_fields_set:
            raise ValueError("data.gauss is only allowed with dataset: gauss")
        return self


TRANSFORMER_KEYS = ("d_model", "depth", "heads", "mlp_ratio")
"""``model`` keys of both transformers (``vit``, ``gpt``)."""


class ModelSpec(_Section):
    """Architecture (paper appendix B.1 without bias; transformers with bias).

    Attributes:
        arch: ``fc`` (flatten, fc1, fc2, out: in -> width -> width -> out),
            ``mlp`` (fc1 to ``hidden`` then fc2, fc3 of ``width``: the paper's CIFAR-10 MLP
            3072 -> 1000 -> 50 -> 50 -> 10), ``cnn`` (VGG-style [32,M,64,M,128,128,M],
            adaptive average pooling, fc1: 128 -> width, out: width -> out), ``vit``
            (patch embedding, ``depth`` pre-LayerNorm blocks of softmax attention and a
            GELU MLP, class token or mean pool; images) or ``gpt`` (decoder-only, causal
            attention, the last position predicts; ``data.dataset: modular``). Transformer
            targets: ``blocks.0.mlp.fc1``, ``blocks.0.attn.q``, ... (docs/transformers.md).
        width: width of the analysed hidden layers (fc/mlp: 50 in the paper; cnn: 20).
        hidden: width of the first hidden layer of ``mlp``.
        dropout: dropout probability after each hidden fully connected activation
            (transformers: after the MLP's GELU).
        init_scale: factor s multiplying PyTorch's default initial weights.
        output_dim: number of outputs K (the reference keeps 10 for subsets of classes;
            ``modular``: default ``data.modulus``).
        d_model: token width of a transformer (vit, gpt).
        depth: number of transformer blocks.
        heads: attention heads (must divide d_model).
        mlp_ratio: MLP hidden width in units of d_model.
        patch: side of the square image patches of ``vit`` (must divide the image sides).
        pool: ``vit`` readout: ``cls`` (a class token) or ``mean`` (mean over patches).
        vocab: token ids of ``gpt`` (default with ``modular``: data.modulus + 1).
    """

    arch: Literal["fc", "mlp", "cnn", "vit", "gpt"] = "fc"
    width: PosInt = 50
    hidden: PosInt = 1000
    dropout: Probability = 0.0
    init_scale: PosFloat = 1.0
    output_dim: PosInt = 10
    d_model: PosInt = 64
    depth: PosInt = 1
    heads: PosInt = 4
    mlp_ratio: PosInt = 4
    patch: PosInt = 2
    pool: Literal["cls", "mean"] = "cls"
    vocab: PosInt | None = None

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        given = self.model_fields_set
        owner = {**{k: ("vit", "gpt") for k in TRANSFORMER_KEYS}, "patch": ("vit",),
                 "pool": ("vit",), "vocab": ("gpt",), "width": ("fc", "mlp", "cnn"),
                 "hidden": ("fc", "mlp", "cnn")}
        for key in sorted(given & set(owner)):
            if self.arch not in owner[key]:
                raise ValueError(f"model.{key} is not used with model.arch {self.arch} (it "
                                 f"belongs to arch {' or '.join(owner[key])}); remove it")
        if self.arch in ("vit", "gpt") and self.d_model % self.heads:
            raise ValueError(f"model.heads = {self.heads} must divide model.d_model = "
                             f"{self.d_model}")
        return self


class CosineSpec(_Section):
    """CosineAnnealingLR(T_max, eta_min = lr * eta_min_ratio); reference: 500, 1/100.

    Attributes:
        t_max: T_max, the epochs of one half cosine period.
        eta_min_ratio: the smallest learning rate as a fraction of ``train.lr``.
    """

    t_max: PosInt = 500
    eta_min_ratio: NonNegFloat = 0.01


class TrainSpec(_Section):
    """Plain SGD as in the reference (``train_model.py``).

    Attributes:
        lr: learning rate eta.
        batch_size: minibatch size B (also the B of the noise covariance, SPEC 3).
        epochs: maximal number of epochs.
        cosine: cosine annealing of the learning rate, or null for a constant rate.
        clip_grad_norm: gradient-norm clipping threshold (reference 5.0), or null.
        l2: L2 coefficient beta, applied as SGD weight decay (adds beta/2 ||theta||^2).
        stop_loss: stop when the train loss is below this at 100% train accuracy.
    """

    lr: PosFloat = 0.1
    batch_size: PosInt = 50
    epochs: NonNegInt = 100
    cosine: CosineSpec | None = Field(default_factory=CosineSpec)
    clip_grad_norm: PosFloat | None = 5.0
    l2: NonNegFloat = 0.0
    stop_loss: NonNegFloat = 1e-5


class RunsSpec(_Section):
    """Independent training runs, one per seed (model init and minibatch order).

    Attributes:
        seeds: one run per seed (distinct non-negative integers).
    """

    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> RunsSpec:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"runs.seeds has repeated seeds: {self.seeds}")
        return self


class AnalysisSpec(AnalysisSettings):
    """The recipe's ``analysis`` section: what is analysed, and how.

    The settings (k, eigen, awd, ...) are :class:`awch_scale.settings.AnalysisSettings`,
    the object :func:`awch_scale.analyze_checkpoint` takes; this adds the targets and
    the checkpoint epochs.

    Attributes:
        target: name of the target module (e.g. ``fc2``), a list of names (adds a
            ``layer`` dim), or a parameter name such as ``fc2.weight``.
        epochs: checkpoint epochs to analyse (0 = initial weights).
    """

    target: Annotated[str, Field(min_length=1)] | Annotated[
        list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] = "fc2"
    epochs: list[NonNegInt] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_targets(self) -> AnalysisSpec:
        if len(set(self.epochs)) != len(self.epochs):
            raise ValueError(f"analysis.epochs has repeated epochs: {self.epochs}")
        if isinstance(self.target, list) and len(set(self.target)) != len(self.target):
            raise ValueError(f"analysis.target has repeated names: {self.target}")
        return self

    @property
    def targets(self) -> list[str]:
        """The target names as a list."""
        return [self.target] if isinstance(self.target, str) else list(self.target)

    def settings(self) -> AnalysisSettings:
        """The analysis settings alone (without target and epochs)."""
        fields = set(AnalysisSettings.model_fields)
        return AnalysisSettings.model_validate(self.model_dump(include=fields))


class Recipe(_Section):
    """A whole recipe. ``store`` defaults to ``store/<name>.zarr``."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")]
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: Literal["ce", "mse", "lmse"] = "ce"
    train: TrainSpec = Field(default_factory=TrainSpec)
    runs: RunsSpec = Field(default_factory=RunsSpec)
    analysis: AnalysisSpec
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` (the N-th GPU)."""
    dtype: Literal["float32", "float64"] = "float32"
    store: str | None = None

    @field_validator("device")
    @classmethod
    def check_device_name(cls, value: str) -> str:
        """``value`` if it names a device (auto, cpu, cuda, cuda:N); else ValueError."""
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", value):
            raise ValueError(f"{value!r} is not a device; allowed: auto, cpu, cuda, cuda:N "
                             "(N = 0, 1, ...: the N-th GPU)")
        return value

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        self._check_architecture()
        too_big = [c for c in self.data.class_ids if c >= self.model.output_dim]
        if too_big:
            raise ValueError(
                f"data.classes {too_big} are not below model.output_dim "
                f"({self.model.output_dim}); labels keep their class ids"
            )
        late = [e for e in self.analysis.epochs if e > self.train.epochs]
        if late:
            raise ValueError(
                f"analysis.epochs {late} exceed train.epochs ({self.train.epochs})"
            )
        return self

    def _check_architecture(self) -> None:
        """Transformers and their data; fills the defaults that depend on the data
        (``model.vocab`` and ``model.output_dim`` of gpt on modular)."""
        arch, dataset = self.model.arch, self.data.dataset
        if arch == "gpt" and dataset != "modular":
            raise ValueError(f"model.arch gpt needs token sequences: data.dataset modular "
                             f"(got {dataset})")
        if dataset == "modular" and arch != "gpt":
            raise ValueError(f"data.dataset modular gives token sequences: model.arch gpt "
                             f"(got {arch})")
        if arch == "vit" and dataset == "gauss":
            raise ValueError("model.arch vit needs images: data.dataset digits, mnist or "
                             "cifar10 (got gauss)")
        if dataset == "modular":
            p = self.data.modulus
            if self.model.vocab is None:
                self.model.vocab = p + 1
            elif self.model.vocab < p + 1:
                raise ValueError(f"model.vocab = {self.model.vocab} must be at least "
                                 f"data.modulus + 1 = {p + 1} (tokens 0..{p - 1} and '=')")
            if "output_dim" not in self.model.model_fields_set:
                self.model.output_dim = p

    @property
    def store_path(self) -> Path:
        """``store``, or ``store/<name>.zarr``."""
        from awch_scale.results.store import STORE_SUFFIX  # not at import: zarr, dask

        return Path(self.store) if self.store else Path("store") / f"{self.name}{STORE_SUFFIX}"

    @property
    def n_fit(self) -> int:
        """n_fit, or k when unset."""
        return self.analysis.fit_points


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        nxt = models[0] if models else None
        if nxt is None:
            return []
        model = nxt
    return sorted(model.model_fields)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One paragraph naming every offending field and what is allowed."""
    parts = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = field_path(loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            parts.append(f"unknown key '{where}' (allowed here: {', '.join(allowed)})")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            shown = "" if isinstance(got, dict) or got is None else f" (got {got!r:.200})"
            parts.append(f"'{where}': {msg}{shown}" if loc else msg)
    text = "; ".join(parts)
    if len(text) > 4 * MAX_MESSAGE:
        text = text[:4 * MAX_MESSAGE] + " ..."
    return f"invalid recipe {source}: {text}."


def parse_recipe(text: str, source: str = "<string>") -> Recipe:
    """Parse and validate recipe text (safe YAML loader)."""
    if len(text.encode("utf-8", "replace")) > MAX_RECIPE_BYTES:
        raise RecipeError(f"recipe {source} is larger than {MAX_RECIPE_BYTES} bytes; a recipe "
                          "is a short YAML file")
    try:
        aliases = sum(isinstance(t, yaml.AliasToken) for t in yaml.scan(text))
    except yaml.YAMLError:
        aliases = 0  # reported by safe_load below
    if aliases > MAX_ALIASES:
        raise RecipeError(f"recipe {source} uses {aliases} YAML aliases (at most {MAX_ALIASES} "
                          "are allowed)")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {source} is not valid YAML: {str(exc)[:MAX_MESSAGE]}") from None
    if not isinstance(raw, dict):
        raise RecipeError(
            f"recipe {source} must be a YAML mapping of sections, got {type(raw).__name__}"
        )
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, source)) from None


def load_recipe(path: str | Path) -> tuple[Recipe, str]:
    """Read and validate a recipe file; returns the recipe and its text."""
    path = Path(path)
    try:
        text = path.read_bytes()[:MAX_RECIPE_BYTES + 1].decode("utf-8")
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"recipe {path} is not UTF-8 text (byte {exc.start}); save it as "
                          "UTF-8") from None
    return parse_recipe(text, str(path)), text
