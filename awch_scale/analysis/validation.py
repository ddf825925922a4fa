"""The one validator of an analysis: settings against the facts of the data and target.

:func:`check_analysis` is called by ``awch-scale validate`` and ``awch-scale analyze``
(both before anything is trained or written, through :func:`awch_scale.run.plan.prepare`)
and by :func:`awch_scale.analyze_checkpoint`, so the three refuse exactly the same
inputs with the same message. Messages name the recipe key (``analysis.awd.draws``)
and what is allowed.

:func:`check_inputs` checks the library's tensors (shapes, dtypes, label range,
finiteness) before any computation; :func:`check_arguments` checks its other
arguments (settings, loss, seed, device, dtype) before those.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from awch_scale.analysis.powerlaw import MIN_POINTS
from awch_scale.errors import NonFiniteError, SettingsError
from awch_scale.model.losses import get_loss
from awch_scale.model.problem import sample_classes
from awch_scale.settings import AnalysisSettings


@dataclass(frozen=True)
class TargetFacts:
    """What the validator needs to know about one target block.

    Attributes:
        name: the target as the recipe names it.
        D: block size.
        linear: the block is exactly one bias-free ``nn.Linear`` weight (AWD-capable).
        d_out: that layer's output size (None otherwise).
    """

    name: str
    D: int
    linear: bool
    d_out: int | None = None


@dataclass(frozen=True)
class DataFacts:
    """What the validator needs to know about the analysis set.

    Attributes:
        N: analysis samples.
        class_counts: samples per class label in the analysis set.
        n_train: training samples (None for the library, where there is no training).
    """

    N: int
    class_counts: Mapping[int, int] = field(default_factory=dict)
    n_train: int | None = None

    @staticmethod
    def from_labels(labels, n_train: int | None = None) -> DataFacts:
        """Facts of an analysis set from its labels (per-token labels (N, T): one class,
        :func:`~awch_scale.model.problem.sample_classes`)."""
        y = labels if isinstance(labels, Tensor) else torch.as_tensor(np.asarray(labels))
        y = np.asarray(sample_classes(y).cpu())
        classes, counts = np.unique(y, return_counts=True)
        return DataFacts(int(y.shape[0]), dict(zip(classes.tolist(), counts.tolist(),
                                                  strict=True)), n_train)


def _fail(key: str, message: str) -> SettingsError:
    return SettingsError(f"'{key}' {message}")


def check_analysis(settings: AnalysisSettings, targets: list[TargetFacts], data: DataFacts,
                   *, batch_size: int, batch_key: str = "train.batch_size",
                   prefix: str = "analysis.") -> None:
    """Refuse settings that cannot run on this data and these targets.

    Args:
        settings: the analysis settings.
        targets: one entry per target block.
        data: the analysis set's facts.
        batch_size: B (the training batch size; SPEC 3).
        batch_key: how the message names B.
        prefix: how the message names the analysis section.

    Raises:
        SettingsError: the first problem found, naming its key and what is allowed.
    """
    s, N, B = settings, data.N, batch_size
    if N < 2:
        raise _fail("data", f"gives {N} analysis sample(s); at least 2 are needed")
    if not isinstance(B, int) or isinstance(B, bool) or B < 1:
        raise _fail(batch_key, f"= {B!r} must be a positive integer")
    if data.n_train is not None and B > data.n_train:
        raise _fail(batch_key, f"= {B} exceeds the {data.n_train} training samples; "
                    f"allowed: 1..{data.n_train}")
    if B > N:
        raise _fail(batch_key, f"= {B} exceeds the {N} analysis samples; allowed: 1..{N}")
    check_settings_alone(s, prefix)
    for t in targets:
        if not s.k < t.D:
            raise _fail(prefix + "k", f"= {s.k} must be smaller than the target block's "
                        f"D = {t.D} ('{t.name}'); allowed: 1..{t.D - 1}")
        if s.enabled("spectra") and s.spectra.rank(s.k) >= t.D:
            raise _fail(prefix + "spectra.r", f"= {s.spectra.rank(s.k)} must be smaller than "
                        f"D = {t.D} ('{t.name}')")
        if s.enabled("awd"):
            # any block: h2 and c_pair; the Delta-w terms only for a bias-free Linear
            stats_awd = [c for c in (s.stats.covariances if s.enabled("stats") else [])
                         if c == "c_awd_raw"]
            if not t.linear and stats_awd:
                raise _fail(prefix + "stats.covariance", f"names c_awd_raw, which needs a "
                            f"bias-free nn.Linear target, but '{t.name}' is not one; "
                            "allowed for this block: covar, covar_mb, covar_within, c_pair")
            if s.awd.n_modes is not None and t.d_out is not None and s.awd.n_modes > t.d_out:
                raise _fail(prefix + "awd.n_modes", f"= {s.awd.n_modes} exceeds the "
                            f"{t.d_out} outputs of '{t.name}'; allowed: 1..{t.d_out}")
    if s.enabled("awd"):
        _check_awd_classes(s, data, B, prefix)


def check_settings_alone(settings: AnalysisSettings, prefix: str = "analysis.") -> None:
    """The checks of :func:`check_analysis` that need neither data nor a model: the gamma
    fits' points (n_fit <= k, k >= 3), eigen.ncv > k, and covariances that need the AWD
    stage only with it on. A sweep runs them on every point before anything is written.

    Raises:
        SettingsError: the first problem found, naming its key and what is allowed.
    """
    s = settings
    _check_fit_points(s, prefix)
    if s.eigen.ncv is not None and s.eigen.ncv <= s.k:
        raise _fail(prefix + "eigen.ncv", f"= {s.eigen.ncv} must exceed {prefix}k = {s.k}")
    if s.enabled("stats"):
        needs_awd = [c for c in s.stats.covariances if c in ("c_pair", "c_awd_raw")]
        if needs_awd and not s.enabled("awd"):
            raise _fail(prefix + "stats.covariance", f"names {needs_awd}, which the AWD stage "
                        "computes, but 'analysis.awd' is off; allowed without AWD: covar, "
                        "covar_mb, covar_within")


def _check_fit_points(s: AnalysisSettings, prefix: str) -> None:
    """Every gamma fit (SPEC 6) needs MIN_POINTS leading directions that can be resolved,
    and uses n_fit of them at most (k when unset): with fewer, every gamma would be NaN
    while the analysis is marked done, so such settings are refused. (k < D, checked per
    target, then also gives D > MIN_POINTS.)"""
    if s.n_fit is not None and s.n_fit > s.k:
        raise _fail(prefix + "n_fit", f"= {s.n_fit} must not exceed {prefix}k = {s.k}")
    if s.fit_points < MIN_POINTS:  # n_fit >= MIN_POINTS by the schema: only k is left
        raise _fail(prefix + "k", f"= {s.k} leaves {s.k} point(s) for the gamma fits, which "
                    f"need at least {MIN_POINTS} (a line through fewer has no standard "
                    f"error, so every gamma would be NaN); allowed: k >= {MIN_POINTS}")


def _check_awd_classes(s: AnalysisSettings, data: DataFacts, B: int, prefix: str) -> None:
    """The matched draws need two disjoint class-balanced batches; each probe needs
    partners of its own class (:mod:`awch_scale.analysis.awd.matching`)."""
    counts = data.class_counts
    n_cls = len(counts)
    if n_cls == 0:
        return
    probe = s.awd.probe_size(data.N)
    if probe > data.N:
        raise _fail(prefix + "awd.probe", f"= {probe} exceeds the {data.N} analysis samples; "
                    f"allowed: 1..{data.N}")
    need = 2 * math.ceil(B / n_cls)
    short = {c: n for c, n in counts.items() if n < need}
    if short and s.awd.pairing == "matched":
        c, n = next(iter(sorted(short.items())))
        raise _fail(prefix + "awd", f"needs two disjoint class-balanced batches of "
                    f"B = {B} over {n_cls} classes, i.e. up to {need} samples per class, but "
                    f"class {c} has {n} in the analysis set ({len(short)} class(es) short); "
                    "lower train.batch_size, enlarge the data, or set 'analysis.awd: null'")
    if s.awd.pairing == "reference" and s.awd.anchors < 2:
        raise _fail(prefix + "awd.anchors", f"= {s.awd.anchors} must be at least 2 with "
                    "pairing 'reference' (a sample's nearest anchor may be itself)")
    if s.awd.pairing == "reference":
        few = {c: n for c, n in counts.items() if n <= 1}
        if few:
            c = next(iter(sorted(few)))
            raise _fail(prefix + "awd.pairing", f"'reference' needs at least 2 samples of "
                        f"each class; class {c} has {few[c]}")


# ----------------------------------------------------------------------------- library inputs


DTYPES = {"float32": torch.float32, "float64": torch.float64}
"""dtypes of the products ``analyze_checkpoint`` accepts, by name."""


def check_arguments(*, loss, seed, device, dtype, settings, overrides: Mapping
                    ) -> tuple[AnalysisSettings, torch.device, torch.dtype | None]:
    """Check the library's scalar arguments before anything is computed.

    Returns:
        (settings with the overrides applied, the device, the dtype or None).

    Raises:
        SettingsError: the first bad argument, naming it and what is allowed.
    """
    settings = check_settings(settings, overrides)
    check_loss(loss)
    check_seed(seed)
    return settings, check_device(device), check_dtype(dtype)


def check_settings(settings, overrides: Mapping) -> AnalysisSettings:
    """``settings`` (an AnalysisSettings, a mapping of its fields or None) with the
    keyword overrides applied; a mapping is validated like overrides of the defaults."""
    if settings is None:
        settings = AnalysisSettings()
    elif isinstance(settings, Mapping):
        bad = [key for key in settings if not isinstance(key, str)]
        if bad:
            raise SettingsError(f"'settings' keys must be setting names (strings), got {bad[0]!r}")
        settings = AnalysisSettings().with_overrides(**settings)
    elif not isinstance(settings, AnalysisSettings):
        raise SettingsError(f"'settings' must be an AnalysisSettings, a dict of its fields or "
                            f"None, got {type(settings).__name__}")
    return settings.with_overrides(**overrides) if overrides else settings


def check_loss(loss) -> None:
    """``loss``: a loss name, ``ce``, ``mse`` or ``lmse`` (SPEC 1; the Fisher stage and
    the stored ``loss`` attribute need the name, not a function)."""
    if not isinstance(loss, str):
        raise SettingsError(f"'loss' must be a loss name, one of ce, mse, lmse, got "
                            f"{type(loss).__name__}")
    get_loss(loss)  # SettingsError naming 'loss' and the allowed names


def check_seed(seed) -> int:
    """``seed``: a non-negative integer (as the recipe's ``runs.seeds``)."""
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise SettingsError(f"'seed' = {seed!r} must be a non-negative integer")
    return int(seed)


def parse_device(device) -> torch.device:
    """``auto``/None -> cuda when available, else cpu; otherwise ``cpu``, ``cuda``,
    ``cuda:N`` or such a torch.device (availability: :func:`check_device`)."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    allowed = "allowed: 'auto', 'cpu', 'cuda', 'cuda:N', a torch.device or None"
    if not isinstance(device, str | torch.device):
        raise SettingsError(f"'device' must be a device name, got {type(device).__name__}; "
                            f"{allowed}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SettingsError(f"'device' = {device!r} is not a device; {allowed}") from None
    if parsed.type not in ("cpu", "cuda"):
        raise SettingsError(f"'device' = {str(device)!r} is not supported; {allowed}")
    return parsed


def check_device(device) -> torch.device:
    """:func:`parse_device`, and a CUDA device must exist on this machine."""
    parsed = parse_device(device)
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingsError(f"'device' = {str(device)!r} needs CUDA, but no CUDA device is "
                                "available; allowed: 'auto', 'cpu'")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise SettingsError(f"'device' = {str(device)!r} does not exist; allowed: 'auto', "
                                f"'cpu', 'cuda', 'cuda:0'..'cuda:{count - 1}'")
    return parsed


def check_dtype(dtype) -> torch.dtype | None:
    """``dtype``: torch.float32, torch.float64, their names, or None (the model's)."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    raise SettingsError(f"'dtype' = {dtype!r} is not allowed; allowed: torch.float32, "
                        "torch.float64, 'float32', 'float64' or None (the model's dtype)")


def as_tensor(name: str, value) -> Tensor:
    """A tensor from a tensor or NumPy array (anything else: SettingsError naming it)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise SettingsError(f"'{name}' must be a torch.Tensor or numpy.ndarray, got "
                        f"{type(value).__name__}")


def check_inputs(model: nn.Module, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Check the analysis set and the model's weights; returns (inputs, labels) as tensors.

    Raises:
        SettingsError: wrong types, shapes, an empty set, non-integer labels or labels
            outside 0..K-1 (K = the model's outputs); a model on the meta device or one
            whose forward does not return one tensor of logits.
        NonFiniteError: NaN or Inf in the inputs or in a parameter of the model.
    """
    if not isinstance(model, nn.Module):
        raise SettingsError(f"'model' must be a torch.nn.Module, got {type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise SettingsError("'model' has no parameters; the target block must be parameters "
                            "of the model")
    meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if meta:
        raise SettingsError(f"'model' is on the meta device (no values: {meta[0]}, ...); "
                            "load its weights first, e.g. model.to_empty(device='cpu') then "
                            "model.load_state_dict(...)")
    x, y = as_tensor("inputs", inputs), as_tensor("labels", labels)
    if x.ndim < 2:
        raise SettingsError(f"'inputs' must have a leading sample dimension and at least one "
                            f"feature dimension, got shape {tuple(x.shape)}")
    if y.ndim not in (1, 2):
        raise SettingsError(f"'labels' must be 1-D (one integer class per sample) or 2-D (one "
                            f"per token of each sequence, < 0 where a token is not "
                            f"predicted), got shape {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise SettingsError(f"'inputs' has {x.shape[0]} samples but 'labels' has {y.shape[0]}")
    if x.shape[0] == 0:
        raise SettingsError("'inputs' is empty (N = 0); the analysis set needs samples")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise SettingsError(f"'labels' must be integer class ids, got dtype {y.dtype}")
    if not x.dtype.is_floating_point:
        x = x.to(torch.get_default_dtype())
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=tuple(range(1, x.ndim))).sum())
        raise NonFiniteError(f"'inputs' contain NaN or Inf in {bad} sample(s)")
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise NonFiniteError(f"model parameter '{name}' contains NaN or Inf")
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            out = model(x[:1].to(next(model.parameters()).dtype))
            model.train(was)
    except Exception as exc:  # noqa: BLE001 (the model's own error, reported with the shape)
        raise SettingsError(f"the model cannot take 'inputs' of shape {tuple(x.shape[1:])} per "
                            f"sample: {type(exc).__name__}: {exc}") from None
    if not isinstance(out, Tensor) or out.ndim == 0:
        what = type(out).__name__ if not isinstance(out, Tensor) else "a 0-d tensor"
        raise SettingsError(f"'model' must return one tensor of logits, shape (samples, K), "
                            f"got {what}; wrap it so that forward returns the logits alone")
    K = int(out.shape[-1])
    if y.ndim == 2:
        _check_token_labels(out, y, K)
    predicted = y[y >= 0] if y.ndim == 2 else y  # per token: < 0 marks "not predicted"
    lo, hi = int(predicted.min()), int(predicted.max())
    if lo < 0 or hi >= K:
        raise SettingsError(f"'labels' must lie in 0..{K - 1} (the model has K = {K} outputs), "
                            f"got values in {lo}..{hi}")
    return x, y.to(torch.long)


def _check_token_labels(out: Tensor, y: Tensor, K: int) -> None:
    """Labels (N, T) of a model that predicts tokens: logits (1, T, K) per sample, every
    sequence with at least one predicted token (label >= 0); a negative label marks a
    position that is not predicted (:mod:`awch_scale.model.losses`)."""
    if out.ndim != 3 or out.shape[1] != y.shape[1]:
        raise SettingsError(f"'labels' of shape {tuple(y.shape)} give one label per token of "
                            f"{y.shape[1]} positions, so the model must return logits "
                            f"(samples, {y.shape[1]}, K); it returns shape "
                            f"{tuple(out.shape[1:])} per sample")
    empty = int(((y >= 0).sum(1) == 0).sum())
    if empty:
        raise SettingsError(f"'labels' leave {empty} sequence(s) without a predicted token "
                            "(every label < 0); each sample needs at least one label >= 0")
