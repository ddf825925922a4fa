"""Analysis settings: typed, frozen, with every default declared once.

The recipe's ``analysis`` section *is* an :class:`AnalysisSettings` (plus the target
and the checkpoint epochs, :class:`awch_scale.run.recipe.AnalysisSpec`), and
:func:`awch_scale.analyze_checkpoint` takes the same object, so a setting has one
name from the recipe key to the code: ``analysis.awd.draws`` is ``settings.awd.draws``
(the paper's T). Library callers override fields by keyword::

    analyze_checkpoint(model, "fc2", x, y, loss="ce", batch_size=50, k=100,
                       eigen={"tol": 1e-8}, awd=None)

Cross-field checks that need the data (D, N, class counts, the target's kind) live in
:mod:`awch_scale.analysis.validation`, which serves ``validate``, ``analyze`` and the library.
"""

from __future__ import annotations

import zlib
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from awch_scale.errors import SettingsError, UnknownSettingError
from awch_scale.variables import DIAG_ONLY

StrictPosInt = Annotated[int, Field(strict=True, gt=0)]
StrictNonNegInt = Annotated[int, Field(strict=True, ge=0)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]


class Settings(BaseModel):
    """Base of every settings section: frozen, unknown keys refused, ints strict."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class EigenSettings(Settings):
    """Eigensolver of the top-k eigenbasis (:func:`awch_scale.linalg.eigen.top_eigenpairs`).

    Attributes:
        method: ``auto`` (``lanczos`` for k < 32; from k = 32 on, ``lanczos`` or block
            Krylov by a rule of D, k and the operator kind from committed measurements,
            no timing: :func:`awch_scale.linalg.eigen.choice_rule`), ``lanczos``
            (thick-restart Lanczos, one vector per product, basis in the model's dtype,
            values from float64 Rayleigh quotients), ``eigsh`` (scipy's ARPACK Lanczos,
            the reference) or ``block`` (thick-restart block Krylov).
        tol: relative residual tolerance, ||H v_i - lambda_i v_i|| <= tol |lambda_1|.
        rel_to: the block solver's stopping rule: ``first`` (residuals relative to
            |lambda_1|, the SPEC's ``hess_residual``) or ``self`` (relative to |lambda_i|:
            every eigenvalue to its own relative accuracy, for gamma fits down to i = k).
        maxiter: ARPACK iterations / lanczos and block restarts allowed (null: solver
            default).
        ncv: Lanczos basis size (eigsh, lanczos; null: 2k+1) or basis size before a
            restart (block; null: max(2k, k + 2 block)); must exceed k.
        block: vectors per product of the block solver.
    """

    method: Literal["auto", "lanczos", "eigsh", "block"] = "auto"
    tol: PosFloat = 1e-6
    rel_to: Literal["first", "self"] = "first"
    maxiter: StrictPosInt | None = None
    ncv: StrictPosInt | None = None
    block: StrictPosInt = 32


class AwdSettings(Settings):
    """Activity-weight duality terms and per-sample spectra (SPEC section 4).

    Attributes:
        enabled: compute them (needs a bias-free ``nn.Linear`` target).
        draws: matched batch pairs T.
        probe: probe-set size |P| (null: 100, or the whole analysis set if smaller).
        partner_batches: partner batches R per probe sample.
        probe_spectra: store ``kappa(probe, mode)`` and ``u_proj(probe, mode, eig)``.
        n_modes: modes kept in the stored probe spectra and in ``mode_cumfrac``
            (null: all d_out).
        pairing: ``matched`` (SPEC 4: within-class linear assignment) or ``reference``
            (the reference code's rule: nearest of ``anchors`` random same-class anchors).
        anchors: anchors per class of ``pairing: reference``.
        cross_term: ``symmetrised`` (SPEC 4: s_I s_II^T + s_II s_I^T) or ``once`` (the
            reference's s_I s_II^T).
    """

    enabled: bool = True
    draws: StrictPosInt = 20
    probe: StrictPosInt | None = None
    partner_batches: StrictPosInt = 10
    probe_spectra: bool = False
    n_modes: StrictPosInt | None = None
    pairing: Literal["matched", "reference"] = "matched"
    anchors: StrictPosInt = 20
    cross_term: Literal["symmetrised", "once"] = "symmetrised"

    def probe_size(self, n_analysis: int) -> int:
        """|P|: ``probe``, or min(100, N)."""
        return self.probe if self.probe is not None else min(100, n_analysis)


class CovarMbSettings(Settings):
    """The reference code's minibatch covariance ``covar_mb`` (SPEC 3).

    Attributes:
        last_batch: ``drop`` the N mod B samples left after the full minibatches
            (SPEC default) or ``keep`` them as a last, smaller batch (the reference).
    """

    last_batch: Literal["drop", "keep"] = "drop"


class StatsSettings(Settings):
    """Alignment and commutation statistics (SPEC 6).

    Attributes:
        enabled: compute them.
        corr_top: directions m of ``corr`` and the alignment test (clipped to k).
        n_rand: Haar / GOE draws of the random baselines.
        covariance: the covariance(s) tested (``covar`` by default); a list adds a
            ``covariance`` dim.
    """

    enabled: bool = True
    corr_top: StrictPosInt = 100
    n_rand: StrictPosInt = 20
    covariance: Literal["covar", "covar_mb", "covar_within", "c_pair", "c_awd_raw"] | list[
        Literal["covar", "covar_mb", "covar_within", "c_pair", "c_awd_raw"]] = "covar"

    @property
    def covariances(self) -> list[str]:
        """The covariances tested, as a list."""
        return [self.covariance] if isinstance(self.covariance, str) else list(self.covariance)


class FisherSettings(Settings):
    """Fisher / generalised Gauss-Newton matrix (SPEC 5).

    Attributes:
        enabled: store ``fisher`` = V^T F V (one streamed pass).
        eigval: also ``fisher_eigval``, F's own top-k eigenvalues (one more eigensolve).
    """

    enabled: bool = True
    eigval: bool = True


class SpectraSettings(Settings):
    """Spectra beyond the top k (SPEC 6): M, H_p = M - H, C, densities, trace, comm_full.

    Attributes:
        enabled: compute them.
        r: eigenpairs of M, H_p and C (null: min(k, 5): at D = 1e6, one CPU thread, the
            stage then took 1.1-1.5 times the eigen stage; with r = 10 both ends of H_p
            took 114 products instead of 80, and the stage 1.5-2 times).
        probes: random probe vectors of the trace and comm_full estimates.
        density_probes: probe vectors of each SLQ density (null: probes * min(1, 1e4 / D)
            rounded up: a probe averages over D directions, so at D = 1e6 one does what
            100 do at D = 1e4).
        steps: Lanczos steps per probe of the spectral densities (30: 40 took 5.4 s per
            density at D = 1e6, a quarter of the eigen stage).
        grid: points of the density grid.
        width: Gaussian broadening, as a fraction of the grid's span.
        tol: accuracy of every stored eigenvalue, in units of its operator's scale
            (|lambda_1(H)| for H_p); a value not brought within it is stored as NaN with
            the reason in provenance (null: ``analysis.eigen.tol``).
        method: ``auto`` (dense for D <= dense_max; else M and C from the samples' Gram
            matrix when N^2 <= D r, Krylov solvers otherwise), ``dense``, ``gram`` (M and
            C from the Gram matrix, H_p by Krylov), ``krylov``, or ``eigsh`` (ARPACK; the
            tests' reference).
        dense_max: largest D of the dense route under ``auto`` (exact whatever the
            multiplicities; at D = 1024 it took 2.1 s where the Krylov route took 0.75 s).
        maxiter: restarts allowed to each Krylov solve.
        m: compute m_eigval and principal_cos.
        c: compute c_eigval and hc_principal_cos.
        hp_top: compute hp_eigval_top.
        hp_bottom: compute hp_eigval_bottom.
        trace: compute hess_trace and hess_trace_se.
        comm_full: compute comm_full and comm_full_se.
        density: compute density (of H) and density_grid.
        density_m: compute density_m (of M).
        density_hp: compute density_hp (of H_p).
    """

    enabled: bool = True
    r: StrictPosInt | None = None
    probes: StrictPosInt = 10
    density_probes: StrictPosInt | None = None
    steps: StrictPosInt = 30
    grid: StrictPosInt = 200
    width: Fraction = 0.01
    tol: PosFloat | None = None
    method: Literal["auto", "dense", "gram", "krylov", "eigsh"] = "auto"
    dense_max: StrictPosInt = 512
    maxiter: StrictPosInt = 50
    m: bool = True
    c: bool = True
    hp_top: bool = True
    hp_bottom: bool = True
    trace: bool = True
    comm_full: bool = True
    density: bool = True
    density_m: bool = True
    density_hp: bool = True

    def rank(self, k: int) -> int:
        """r, or min(k, 5) when unset."""
        return self.r if self.r is not None else min(k, 5)

    def parts(self) -> tuple[str, ...]:
        """The sub-parts switched on, in the order of
        :data:`awch_scale.analysis.spectra.PARTS`."""
        names = ("m", "c", "hp_top", "hp_bottom", "trace", "comm_full", "density",
                 "density_m", "density_hp")
        return tuple(n for n in names if getattr(self, n))


class SuppressionSettings(Settings):
    """Suppression experiment on the probe set (SPEC 7, App. B.3).

    Attributes:
        enabled: compute it (needs the AWD stage).
        theta: stiff set S = {p : kappa_1^(p) > theta max_p kappa_1^(p)}.
    """

    enabled: bool = True
    theta: Fraction = 0.05


STREAMS = ("eigen", "covar_mb", "awd", "stats", "spectra")
"""Independent random streams of one analysis."""


class SeedSettings(Settings):
    """Seeds of the analysis's random streams; null derives each from the run seed.

    Attributes:
        eigen: start vector / block of the eigensolver.
        covar_mb: minibatch shuffle of ``covar_mb``.
        awd: matched draws, probe set and partners.
        stats: Haar rotations and GOE draws of the random baselines.
        spectra: probe vectors of density, trace and comm_full.
    """

    eigen: StrictNonNegInt | None = None
    covar_mb: StrictNonNegInt | None = None
    awd: StrictNonNegInt | None = None
    stats: StrictNonNegInt | None = None
    spectra: StrictNonNegInt | None = None

    def resolve(self, run_seed: int) -> dict[str, int]:
        """Every stream's seed: the one given, else derived from ``run_seed`` and the
        stream's name (``numpy.random.SeedSequence``, so streams are independent)."""
        out = {}
        for name in STREAMS:
            given = getattr(self, name)
            if given is not None:
                out[name] = int(given)
            else:
                entropy = [int(run_seed) & 0xFFFFFFFF, zlib.crc32(name.encode())]
                seq = np.random.SeedSequence(entropy)
                out[name] = int(seq.generate_state(1, dtype=np.uint32)[0])
        return out


DiagOnlyName = Literal[DIAG_ONLY]  # type: ignore[valid-type]


class AnalysisSettings(Settings):
    """How one checkpoint is analysed: the recipe's ``analysis`` section without targets.

    See ``docs/quantities.md`` for what each stage stores.

    Attributes:
        k: Hessian eigenpairs (top k, algebraically largest), 1 <= k < D.
        n_fit: leading directions in the gamma fits, 3 <= n_fit <= k (null: k; a
            line through fewer than 3 points has no standard error).
        chunk_size: samples per streamed chunk (null: chosen from memory_budget_mb).
        memory_budget_mb: memory for streamed temporaries and caches (MiB; null: 2048
            on the CPU, a quarter of the GPU's total memory on CUDA).
        operator: Hessian products: ``auto`` (kronecker for a bias-free Linear target),
            ``hvp`` (torch.func, any block), ``kronecker`` (h_i = Q_i (x) a_i a_i^T).
        per_sample: per-sample gradients by ``auto``/``torch_func`` or ``backpack``.
        threads: torch intra-op threads (null: the library's choice for the machine).
        eigen: eigensolver settings.
        covar_mb: minibatch covariance settings.
        awd: activity-weight duality settings, or null to skip them.
        fisher: Fisher settings, or null to skip.
        stats: statistics settings, or null to skip.
        spectra: spectra beyond the top k, or null to skip.
        suppression: suppression experiment, or null to skip.
        diag_only: k x k variables stored as their diagonal only (for large k).
        store_eigvec: store the eigenvectors V as ``hess_eigvec(param, eig)``.
        seeds: seeds of the random streams (null: derived from the run seed).
    """

    k: StrictPosInt = 20
    n_fit: Annotated[int, Field(strict=True, ge=3)] | None = None
    chunk_size: StrictPosInt | None = None
    memory_budget_mb: PosFloat | None = None
    operator: Literal["auto", "hvp", "kronecker"] = "auto"
    per_sample: Literal["auto", "torch_func", "backpack"] = "auto"
    threads: StrictPosInt | None = None
    eigen: EigenSettings = Field(default_factory=EigenSettings)
    covar_mb: CovarMbSettings = Field(default_factory=CovarMbSettings)
    awd: AwdSettings | None = Field(default_factory=AwdSettings)
    fisher: FisherSettings | None = Field(default_factory=FisherSettings)
    stats: StatsSettings | None = Field(default_factory=StatsSettings)
    spectra: SpectraSettings | None = Field(default_factory=SpectraSettings)
    suppression: SuppressionSettings | None = Field(default_factory=SuppressionSettings)
    diag_only: list[DiagOnlyName] = Field(default_factory=list)
    store_eigvec: bool = False
    seeds: SeedSettings = Field(default_factory=SeedSettings)

    @model_validator(mode="after")
    def _check(self) -> AnalysisSettings:
        if len(set(self.diag_only)) != len(self.diag_only):
            raise ValueError(f"diag_only has repeated names: {self.diag_only}")
        return self

    # -- resolved views ------------------------------------------------------------
    @property
    def fit_points(self) -> int:
        """n_fit, or k when unset."""
        return self.n_fit if self.n_fit is not None else self.k

    def enabled(self, section: str) -> bool:
        """Whether an optional stage (``awd``, ``fisher``, ``stats``, ``spectra``,
        ``suppression``) runs; suppression needs the AWD stage."""
        sec = getattr(self, section)
        on = sec is not None and sec.enabled
        if section == "suppression":
            return on and self.enabled("awd")
        return on

    def with_overrides(self, **overrides: Any) -> AnalysisSettings:
        """A validated copy with top-level fields replaced; a dict for a section updates
        that section's fields (``eigen={"tol": 1e-8}``), None switches it off."""
        data = self.model_dump()
        for key, value in overrides.items():
            if key not in type(self).model_fields:
                raise UnknownSettingError(f"unknown analysis setting {key!r}; allowed: "
                                          f"{', '.join(type(self).model_fields)}")
            if isinstance(value, BaseModel):
                value = value.model_dump()
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                value = {**data[key], **value}
            elif value is True and key in _SECTIONS:
                value = {}
            elif value is False and key in _SECTIONS:
                value = None
            data[key] = value
        try:
            return type(self).model_validate(data)
        except ValidationError as exc:
            parts = [f"'{field_path(e['loc'])}': {e['msg'].removeprefix('Value error, ')} "
                     f"(got {e.get('input')!r})" for e in exc.errors()]
            raise SettingsError("; ".join(parts)) from None


_SECTIONS = ("awd", "fisher", "stats", "spectra", "suppression")


def field_path(loc: tuple) -> str:
    """A pydantic error location as the dotted key a user writes (``eigen.tol``)."""
    return ".".join(str(p) for p in loc
                    if not str(p).startswith(("function-", "union[", "literal[")))
