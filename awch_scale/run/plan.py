"""The plan of ``awch-scale analyze``: a recipe checked against its data and model.

Everything that can be wrong with a recipe (schema, data root, target layer, k, batch
size, model size) is checked by :func:`prepare` before anything is written;
:func:`check_store_path` refuses a store location that cannot be written, before
anything is trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from awch_scale.analysis.validation import (
    DataFacts,
    SettingsError,
    TargetFacts,
    check_analysis,
    check_device,
)
from awch_scale.errors import AwchError, RecipeError, TargetError
from awch_scale.model.architectures import build_model
from awch_scale.model.problem import resolve_block
from awch_scale.results.store import ResultStore, sibling
from awch_scale.run.data import DataBundle, load_data
from awch_scale.run.outputs import store_around
from awch_scale.run.recipe import Recipe, load_recipe

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Plan:
    """A validated recipe with its data and resolved settings."""

    recipe: Recipe
    text: str
    data: DataBundle
    device: torch.device
    dtype: torch.dtype
    block_sizes: dict[str, int]

    @property
    def store(self) -> ResultStore:
        """The recipe's result store."""
        return ResultStore(self.recipe.store_path)

    @property
    def checkpoint_root(self) -> Path:
        """Checkpoints live next to the store: ``<store>.ckpt/run-<seed>/epoch-<e>.pt``."""
        p = self.recipe.store_path
        return sibling(p, ".ckpt")

    def new_model(self, seed: int) -> torch.nn.Module:
        """A fresh model of the recipe's architecture, initialised from ``seed``."""
        torch.manual_seed(seed)
        return build_model(self.recipe.model, self.data.input_shape)

    def describe(self) -> str:
        """``recipe NAME: store ..., device ..., D = ..., N = ...``: the line ``analyze``
        starts with (the caller adds its processes and threads)."""
        return (f"recipe {self.recipe.name}: store {self.recipe.store_path}, device "
                f"{self.device}, D = {self.block_sizes}, N = {self.data.n_analysis}")


def prepare(recipe: Recipe, text: str) -> Plan:
    """Check everything that can be checked before writing; raise AwchError otherwise.

    The analysis settings are checked by :func:`awch_scale.analysis.validation.check_analysis`,
    the same validator :func:`~awch_scale.analysis.checkpoint.analyze_checkpoint` runs,
    against the data and the targets of an untrained model of the recipe's architecture.

    Args:
        recipe: the parsed recipe.
        text: its YAML text (stored with the results; a resumed run must match it).
    """
    try:
        device = check_device(recipe.device)  # cuda: available; cuda:N: exists
    except SettingsError as exc:
        raise RecipeError(f"recipe {exc}") from None
    data = load_data(recipe.data)
    check_model_size(recipe, data.input_shape)
    torch.manual_seed(0)
    model = build_model(recipe.model, data.input_shape)
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    facts, sizes = [], {}
    for target in recipe.analysis.targets:
        try:
            names, linear = resolve_block(model, target)
        except TargetError as exc:
            raise RecipeError(f"recipe 'analysis.target': {exc}") from None
        sizes[target] = sum(params[n].numel() for n in names)
        d_out = modules[linear].out_features if linear is not None else None
        facts.append(TargetFacts(target, sizes[target], linear is not None, d_out))
    try:
        check_analysis(recipe.analysis.settings(), facts,
                       DataFacts.from_labels(data.y_analysis, n_train=data.n_train),
                       batch_size=recipe.train.batch_size)
    except SettingsError as exc:
        noise = recipe.data.label_noise
        hint = (f" (data.label_noise = {noise} leaves {data.n_analysis} of {data.n_train} "
                "training labels uncorrupted, and the analysis set is drawn from those: lower "
                "data.label_noise or enlarge the data)" if noise > 0 else "")
        raise RecipeError(f"recipe {exc}{hint}") from None
    return Plan(recipe, text, data, device, _DTYPES[recipe.dtype], sizes)


def load_plan(recipe_path: Path, store: Path | None = None,
              device: str | None = None) -> Plan:
    """:func:`prepare` the recipe file at ``recipe_path``, its store replaced by ``store``
    (``--store``) and its device by ``device`` (``--device``: auto, cpu, cuda, cuda:N)
    when given. Neither changes the recipe text a store is compared with: a store made on
    one device resumes on another (each analysis records its device in its provenance).

    Raises:
        RecipeError: ``device`` is not a device name (the message names --device).
    """
    recipe, text = load_recipe(recipe_path)
    if store is not None:
        recipe = recipe.model_copy(update={"store": str(store)})
    if device is not None:
        try:
            Recipe.check_device_name(device)
        except ValueError as exc:
            raise RecipeError(f"--device: {exc}") from None
        recipe = recipe.model_copy(update={"device": device})
    return prepare(recipe, text)


def store_path_problem(path: Path) -> AwchError | None:
    """What makes ``path`` unusable as a store, found without writing anything: it cannot
    be resolved, is a file, is a folder that is not a store, lies inside another store, or
    lies below a file; None when none of these."""
    try:
        path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        return AwchError(f"store path {path} cannot be resolved ({exc}); set 'store' (or "
                         "--store) to a folder")
    if path.exists() and not path.is_dir():
        return AwchError(f"store path {path} is a file, not an awch-scale store; set 'store' "
                         "(or --store) to a new folder")
    if path.is_dir() and not ResultStore(path).exists() and any(path.iterdir()):
        return AwchError(f"store path {path} is a folder that is not an awch-scale store "
                         "(no zarr.json); choose a new or empty folder")
    outer = store_around(path.resolve().parent)
    if outer is not None:
        return AwchError(f"store path {path} lies inside the store {outer}; a store holds "
                         "only what analyze writes: set 'store' (or --store) to a folder "
                         "outside any store")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        return AwchError(f"cannot write the store at {path}: {blocker} is a file, not a "
                         "folder; choose a writable location")
    return None


def check_store_path(path: Path) -> None:
    """Refuse a store path that is a file, a folder that is not a store, a path inside
    another store, or not writable, before anything is trained or computed
    (:func:`store_path_problem`, then a probe file written and removed beside it)."""
    problem = store_path_problem(path)
    if problem is not None:
        raise problem
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".{path.name}.write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise AwchError(f"cannot write the store at {path}: {exc.strerror or exc} "
                        f"({parent}); choose a writable location") from None


MAX_MODEL_FRACTION = 0.25
"""A model's parameters may take at most this fraction of the machine's memory (training
needs the weights, their gradients and the analysis copies several times over)."""


def parameter_count(spec, input_shape) -> int:
    """The exact number of parameters of the recipe's model for inputs of ``input_shape``,
    counted on a copy built on the meta device (shapes only, nothing allocated): one
    count for every architecture, transformers included."""
    with torch.device("meta"):
        model = build_model(spec, tuple(input_shape))
    return sum(p.numel() for p in model.parameters())


def check_model_size(recipe: Recipe, input_shape) -> None:
    """Refuse, before allocating it, a model whose parameters cannot fit in memory.

    Raises:
        RecipeError: more than :data:`MAX_MODEL_FRACTION` of the machine's memory; the
            message names the keys that size the architecture.
        DataError: inputs the architecture cannot take (as building it would).
    """
    n = parameter_count(recipe.model, input_shape)
    need = n * (8 if recipe.dtype == "float64" else 4)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > MAX_MODEL_FRACTION * total:
        keys = SIZE_KEYS[recipe.model.arch]
        raise RecipeError(
            f"recipe 'model' has {n:.3g} parameters ({need / 2**30:.1f} GiB in "
            f"{recipe.dtype}), more than {MAX_MODEL_FRACTION:.0%} of this machine's "
            f"{total / 2**30:.0f} GiB; lower {keys}")


SIZE_KEYS = {"fc": "model.width", "mlp": "model.width or model.hidden",
             "cnn": "model.width",
             "vit": "model.d_model, model.depth or model.mlp_ratio (or raise model.patch)",
             "gpt": "model.d_model, model.depth, model.mlp_ratio or model.vocab"}
"""The ``model`` keys that set the size of each architecture (named when it is too big)."""
