"""The variable registry: one catalogue entry per stored variable (../shared/SPEC.md).

Every number awch-scale stores has exactly one :class:`Variable` here: its name, its
dims (per analysis, i.e. without the leading ``run``/``epoch``), the dtype it is
stored in, its units, whether a recipe may store it as its diagonal only, its role
as a power-law estimator (SPEC 6), the stage that computes it, and what it is.
Everything else derives from this catalogue:

- :func:`annotate` writes ``long_name``, ``description`` and ``units`` attributes
  (xarray's plotting reads ``long_name`` and ``units``);
- :func:`stored_dtype` gives the store's dtype (the zarr ``encoding``);
- :data:`DIAG_ONLY` lists the k x k variables ``analysis.diag_only`` accepts;
- :data:`GAMMA_ESTIMATORS` orders the ``estimator`` dim of the gamma fits;
- :data:`GAMMA_ROLES` maps the paper's named gammas to their estimators (table columns,
  figure labels);
- ``docs/quantities.md`` carries the table :func:`awch_scale.docgen.variable_tables`
  generates (``python -m awch_scale.docgen`` rewrites it; a test keeps it current).

Adding a variable means one entry here plus its computation.

Notation: V = [v_1..v_k] top-k Hessian eigenvectors, X_V = V^T X V, N analysis
samples, B the training batch size, g_i per-sample gradients of the target block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

KK = ("eig", "eig_")


@dataclass(frozen=True)
class Variable:
    """One stored variable.

    Attributes:
        name: name in the store.
        dims: dims of one analysis (``run``/``epoch``, and ``layer`` for several
            targets, lead them in the store).
        dtype: stored dtype (``float32``, ``float64``, ``int64``, ``bool``, ``str``).
        returned: the dtype ``analyze_checkpoint`` returns, if not float64 for a float.
        long_name: short human-readable name (plot labels).
        description: the exact definition, with its normalisation.
        units: ``1`` for dimensionless; loss units are written ``loss``, the target
            weights' units ``w`` (so H is ``loss/w^2``, C is ``loss^2/w^2``).
        stage: the analysis stage that computes it (or ``training``/``store``).
        spec: the SPEC section (and paper equation) that defines it.
        diag_only: a k x k variable that ``analysis.diag_only`` may store as its diagonal.
        gamma: a power-law estimator (SPEC 6): its X_ii is fitted against lambda_i.
        role: the name the paper gives its gamma (``gamma_emp``, ``gamma_AWD``, ...).
        accuracy: the stated accuracy of each value (SPEC 6), written as the ``accuracy``
            attribute; empty when none is stated.
    """

    name: str
    dims: tuple[str, ...]
    dtype: str
    long_name: str
    description: str
    units: str = "1"
    stage: str = ""
    spec: str = ""
    diag_only: bool = False
    gamma: bool = False
    role: str = ""
    returned: str = ""
    accuracy: str = ""


_ENTRIES: list[Variable] = []


def _add(name, dims, dtype, long_name, description, **kw) -> None:
    _ENTRIES.append(Variable(name, tuple(dims), dtype, long_name, description, **kw))


def _matrix(name, long_name, description, units, stage, spec, *, gamma=False, role=""):
    _add(name, KK, "float32", long_name, description, units=units, stage=stage, spec=spec,
         diag_only=True, gamma=gamma, role=role)


# ----------------------------------------------------------------- SPEC 2: eigenbasis
_add("hess_eigval", ("eig",), "float64", "Hessian eigenvalue lambda_i",
     "top-k algebraically largest eigenvalues of H = (1/N) sum_i hess l_i (= H_ii in the "
     "eigenbasis; the diagonal of the reference's H_1_d), by the eigensolver of "
     "analysis.eigen.method",
     units="loss/w^2", stage="eigen", spec="2")
_add("hess_residual", ("eig",), "float64", "relative eigen-residual",
     "||H v_i - lambda_i v_i|| / |lambda_1|, from one fresh batched product",
     stage="eigen", spec="2")
_add("hess_eigvec", ("param", "eig"), "float32", "Hessian eigenvector v_i",
     "V = [v_1..v_k], entry of largest magnitude positive (only with analysis.store_eigvec; "
     "chunked along param)", stage="eigen", spec="2, 8")

# ----------------------------------------------------------------- SPEC 3: covariance
_matrix("covar", "SGD noise covariance C_V (Eq. 2)",
        "V^T C V, C = (1/B) [ (1/N) sum_i g_i g_i^T - g g^T ], exact over the analysis set",
        "loss^2/w^2", "covariance", "3", gamma=True, role="gamma_emp")
_matrix("covar_mb", "minibatch noise covariance (reference estimator)",
        "V^T C_mb V, C_mb = mean_b g_b g_b^T - g g^T over one seeded shuffled pass of "
        "minibatches of size B (analysis.covar_mb.last_batch: drop or keep the partial one)",
        "loss^2/w^2", "covariance", "3", gamma=True)
_matrix("second_moment", "second moment of stochastic gradients M_V",
        "V^T M V, M = (1/N) sum_i g_i g_i^T", "loss^2/w^2", "covariance", "3")
_matrix("covar_within", "within-class noise covariance",
        "(1/B) (1/C) sum_c V^T S_c V, S_c = (1/N_c) sum_{i in c} g_i g_i^T - g_c g_c^T: what "
        "the class-balanced AWD terms estimate (E[c_pair] = (1/(BC)) sum_c N_c/(N_c-1) S_c)",
        "loss^2/w^2", "covariance", "3", gamma=True)

# ----------------------------------------------------------------- SPEC 4: AWD
_matrix("c_pair", "exact matched-batch gradient-difference covariance",
        "(1/2) E_t[e e^T], e = V^T (grad L^mu - grad L^nu)", "loss^2/w^2", "awd", "4",
        gamma=True)
_matrix("c_awd_raw", "AWD covariance C^hh + C^hg + C^gg (Eq. 58-59)", "c_hh + c_hg + c_gg",
        "loss^2/w^2", "awd", "4", gamma=True, role="gamma'_AWD")
_matrix("c_hh", "AWD Hessian-weight term C^hh (Eq. 10)",
        "(1/(2B^2)) E_t[s_I s_I^T], s_I = V^T sum_{p in nu} h_p dw_p", "loss^2/w^2", "awd",
        "4", gamma=True)
_matrix("c_hg", "AWD cross term C^hg",
        "(1/(2B^2)) E_t[s_I s_II^T + s_II s_I^T] (analysis.awd.cross_term: symmetrised), or "
        "(1/(2B^2)) E_t[s_I s_II^T] (once, the reference's convention)", "loss^2/w^2", "awd",
        "4")
_matrix("c_gg", "AWD gradient-activity term C^gg",
        "(1/(2B^2)) E_t[s_II s_II^T], s_II = V^T sum_{p in nu} (d dw_p/dw)^T g_p",
        "loss^2/w^2", "awd", "4")
_matrix("c_hh_sd", "same-sample part of C^hh (Eq. 64)",
        "(1/(2B^2)) E_t[sum_p (V^T h_p dw_p)(V^T h_p dw_p)^T]", "loss^2/w^2", "awd", "4",
        gamma=True)
_matrix("c_hg_sd", "same-sample part of C^hg",
        "(1/(2B^2)) E_t[sum_p (V^T I_p)(V^T II_p)^T + (V^T II_p)(V^T I_p)^T] (once: first "
        "product only)", "loss^2/w^2", "awd", "4")
_matrix("c_gg_sd", "same-sample part of C^gg", "(1/(2B^2)) E_t[sum_p (V^T II_p)(V^T II_p)^T]",
        "loss^2/w^2", "awd", "4")
_matrix("h2", "second moment of per-sample Hessians (Eq. 15 with M_p = I; 64 x the "
        "reference's C1_h = H_2_d)",
        "V^T E_p[h_p^2] V over the analysis set", "loss^2/w^4", "awd", "4", gamma=True,
        role="gamma_AWD")
_matrix("c_hh_sd_wd", "C^hh same-sample with diagonal weight-perturbation covariance",
        "(1/(2B)) E_{p in P}[sum_m kappa_m^2 sigma2_pm (V^T u_m)(V^T u_m)^T] (C1_dia_w_dia)",
        "loss^2/w^2", "awd", "4", gamma=True)
_matrix("c_li", "Theorem 3.4 prediction of C (Eq. 15)", "(sigma_w2 / (2B)) * h2",
        "loss^2/w^2", "awd", "4", gamma=True)
_add("h2_diag", ("eig",), "float32", "diagonal of h2 (64 x the diagonal of the reference's "
     "H_2_d)", "v_i^T E_p[h_p^2] v_i",
     units="loss^2/w^4", stage="awd", spec="4")
_add("sigma_w2", (), "float64", "AWD weight-perturbation scale sigma_w^2",
     "sum_{p,m} kappa_m^2 sigma2_pm / sum_{p,m} kappa_m^2 over the probe set",
     units="w^2", stage="awd", spec="4")
_add("pair_nu", ("draw", "slot"), "int64", "matched-batch draw nu",
     "indices into the analysis set; slot s of nu is matched to slot s of mu",
     stage="awd", spec="4")
_add("pair_mu", ("draw", "slot"), "int64", "matched-batch draw mu",
     "indices into the analysis set: the partners of pair_nu (analysis.awd.pairing)",
     stage="awd", spec="4")
_add("probe_idx", ("probe",), "int64", "probe-set samples",
     "indices into the analysis set", stage="awd", spec="4")
_add("probe_partner", ("probe", "partner"), "int64", "probe partners",
     "same-class sample of partner batch mu_r nearest in target-layer input",
     stage="awd", spec="4")
_add("kappa", ("probe", "mode"), "float32", "per-sample Hessian eigenvalue kappa_m^(p)",
     "||a_p||^2 eig_m(Q_p), Q_p = d^2 l_p/dz^2, descending (analysis.awd.probe_spectra)",
     units="loss/w^2", stage="awd", spec="4", returned="model")
_add("u_proj", ("probe", "mode", "eig"), "float32",
     "per-sample Hessian eigenvector projected on V",
     "v_i . u_m^(p), u_m = vec(q_m a_p^T)/||a_p|| (analysis.awd.probe_spectra)",
     stage="awd", spec="4", returned="model")

# ----------------------------------------------------------------- SPEC 5: Fisher
_matrix("fisher", "Fisher / generalised Gauss-Newton F_V",
        "V^T F V, F = (1/N) sum_i J_i^T Lambda_i J_i (ce: Lambda = diag(p) - p p^T; mse: "
        "S_i^T (2/K) S_i with S = d softmax/dw; lmse: J^T (2/K) J)", "loss/w^2", "fisher",
        "5", gamma=True)
_add("fisher_eigval", ("eig",), "float64", "Fisher eigenvalue",
     "top-k eigenvalues of F in its own eigenbasis, same eigensolver", units="loss/w^2",
     stage="fisher", spec="5")

# ----------------------------------------------------------------- SPEC 6: statistics
_add("gamma", ("estimator",), "float64", "power-law exponent gamma of X_ii ~ lambda_i^gamma",
     "least squares of log10 X_ii on log10 lambda_i (scipy.stats.linregress) over the "
     "resolved points among i <= n_fit: the leading run of eigenvalues lambda_i > "
     "max(hess_residual_i, eigen.tol, eps) |lambda_1| and above the dtype's underflow floor "
     "tiny/eps, and within it the X_ii that are finite and > max(tiny/eps, eps^2 max_j X_jj); "
     "NaN with fewer than 3 such points (provenance gamma_fit gives n and the reason); "
     "estimator covar = gamma_emp, h2 = gamma_AWD, c_awd_raw = gamma'_AWD",
     stage="statistics", spec="6")
_add("gamma_stderr", ("estimator",), "float64", "standard error of gamma",
     "linregress stderr of the slope over the resolved points", stage="statistics", spec="6")
_add("gamma_r2", ("estimator",), "float64", "r^2 of the log-log fit",
     "squared Pearson correlation of the fitted (resolved) points", stage="statistics",
     spec="6")
_add("gamma_n", ("estimator",), "int64", "number of points in the gamma fit",
     "resolved points used, i <= n_fit with lambda_i and X_ii resolved (see gamma); fewer "
     "than n_fit: the reason is in provenance gamma_fit", stage="statistics", spec="6")
_add("corr", ("top", "top_"), "float32", "correlation matrix of C in the Hessian eigenbasis",
     "R_ij = C_ij / sqrt(|C_ii C_jj|) on the top m = analysis.stats.corr_top directions",
     stage="statistics", spec="6")
_add("mu_offdiag", (), "float64", "mean off-diagonal |R_ij|", "mean over i != j of |R_ij|",
     stage="statistics", spec="6")
_add("mu_rand", (), "float64", "mean off-diagonal |R| of a Haar-rotated C",
     "C_rand = Q diag(eig(C)) Q^T, Q Haar in O(m), averaged over n_rand seeded draws",
     stage="statistics", spec="6")
_add("m_eff", (), "float64", "participation ratio of C's eigenvalues",
     "(sum lambda_C)^2 / sum lambda_C^2 (top m block)", stage="statistics", spec="6")
_add("mu_h0", (), "float64", "chance level of mu_offdiag", "sqrt(2/pi) / sqrt(m_eff)",
     stage="statistics", spec="6")
_add("z_score", (), "float64", "z-score of mu_offdiag against mu_h0",
     "(mu_offdiag - mu_h0) / SE, SE = sqrt((1 - 2/pi)/m_eff) / sqrt(m(m-1))",
     stage="statistics", spec="6")
_add("log10_p", (), "float64", "log10 p-value of the alignment",
     "log10 Phi(z_score), computed in log space", stage="statistics", spec="6")
_add("comm_err", (), "float64", "commutation error of C and H (top k)",
     "||C Lam - Lam C||_F / (||C||_F ||Lam||_F), Lam = diag(lambda)", stage="statistics",
     spec="6")
_add("comm_err_rand", (), "float64", "commutation error of a Haar-rotated C",
     "comm_err with C -> Q C Q^T, Q Haar in O(k), averaged over n_rand draws (spectrum kept)",
     stage="statistics", spec="6")
_add("comm_err_unrelated", (), "float64", "commutation error of unrelated matrices",
     "the same ratio for two independent k x k GOE matrices, averaged over n_rand draws "
     "(near sqrt(2) for large k)", stage="statistics", spec="6")
_add("eig_alignment", (), "float64", "eigenbasis alignment of C",
     "sqrt(sum_i C_ii^2) / ||C||_F", stage="statistics", spec="6")
_add("spearman", (), "float64", "rank correlation of C_ii with lambda_i",
     "Spearman correlation over i = 1..n_fit", stage="statistics", spec="6")
_add("frob", ("term",), "float64", "Frobenius norms of the AWD terms (Fig. 4f)",
     "||X||_F for X in c_hh, c_hg, c_gg, c_awd_raw, c_hh_sd, c_hh_sd_wd, covar",
     units="loss^2/w^2", stage="statistics", spec="6")
_add("dir_alignment", ("eig",), "float64", "directional alignment (Wang & Wu)",
     "v_i^T Sigma v_i / (2 L v_i^T F v_i), Sigma = B C", stage="statistics", spec="6")
_add("loss_alignment", (), "float64", "loss alignment (Wang & Wu)",
     "Tr(Sigma_V F_V) / (2 L ||F_V||_F^2), Sigma = B C, traces in the top-k subspace",
     stage="statistics", spec="6")

# ----------------------------------------------------------------- SPEC 6: spectra
_OF = ("within analysis.spectra.tol (default analysis.eigen.tol) times {} of the true "
       "value, else NaN with the reason in provenance spectra_notes")
_add("m_eigval", ("rank",), "float64", "top eigenvalues of M",
     "top-r eigenvalues of M = (1/N) sum_i g_i g_i^T", units="loss^2/w^2", stage="spectra",
     spec="6", accuracy=_OF.format("lambda_1(M)"))
_add("hp_eigval_top", ("rank",), "float64", "largest eigenvalues of H_p = M - H",
     "r algebraically largest eigenvalues of M - H", units="loss/w^2", stage="spectra",
     spec="6", accuracy=_OF.format("|lambda_1(H)|"))
_add("hp_eigval_bottom", ("rank",), "float64", "smallest eigenvalues of H_p = M - H",
     "r algebraically smallest eigenvalues of M - H, ascending", units="loss/w^2",
     stage="spectra", spec="6", accuracy=_OF.format("|lambda_1(H)|"))
_add("principal_cos", ("angle",), "float64", "principal cosines between H and M",
     "singular values of V_r^T U_r, top-r eigenspaces of H and M, descending",
     stage="spectra", spec="6")
_add("c_eigval", ("rank",), "float64", "top eigenvalues of C",
     "top-r eigenvalues of C (matrix-free covariance operator)", units="loss^2/w^2",
     stage="spectra", spec="6", accuracy=_OF.format("lambda_1(C)"))
_add("hc_principal_cos", ("angle",), "float64", "principal cosines between H and C",
     "singular values of V_r^T W_r, top-r eigenspaces of H and C, descending",
     stage="spectra", spec="6")
_add("comm_full", (), "float64", "commutation of H and C over the whole block",
     "||HC - CH||_F / (||H||_F ||C||_F), Hutchinson estimates", stage="spectra", spec="6")
_add("comm_full_se", (), "float64", "standard error of comm_full", "delta method",
     stage="spectra", spec="6")
_add("density", ("grid",), "float64", "spectral density of H",
     "stochastic Lanczos quadrature with Gaussian broadening, confined to H's spectrum; "
     "integrates to 1 on the grid", units="w^2/loss", stage="spectra", spec="6")
_add("density_m", ("grid",), "float64", "spectral density of M",
     "as density, for M (from its exact spectrum when the dense or Gram route computed it; "
     "provenance spectra_routes)", units="w^2/loss^2", stage="spectra", spec="6")
_add("density_hp", ("grid",), "float64", "spectral density of H_p = M - H",
     "as density, for H_p = M - H", units="w^2/loss", stage="spectra", spec="6")
_add("density_grid", ("grid",), "float64", "abscissae of the spectral densities",
     "eigenvalue at each grid point of density, density_m and density_hp (the grid spans "
     "the spectra of those stored)", units="loss/w^2", stage="spectra", spec="6")
_add("hess_trace", (), "float64", "trace of H", "Hutchinson / Hutch++ estimate of tr(H)",
     units="loss/w^2", stage="spectra", spec="6")
_add("hess_trace_se", (), "float64", "standard error of hess_trace",
     "sample standard deviation of the per-probe estimates / sqrt(probes)",
     units="loss/w^2", stage="spectra", spec="6")

# ----------------------------------------------------------------- SPEC 7: suppression
_add("supp_h1", ("variant", "eig"), "float64", "suppressed first moment in the eigenbasis",
     "(1/|P|) sum_p sum_m kappa~_m (u_m . v_i)^2", units="loss/w^2", stage="suppression",
     spec="7")
_add("supp_h2", ("variant", "eig"), "float64", "suppressed second moment in the eigenbasis",
     "(1/|P|) sum_p sum_m kappa~_m^2 (u_m . v_i)^2", units="loss^2/w^4",
     stage="suppression", spec="7")
_add("supp_gamma", ("variant",), "float64", "power-law slope of supp_h2 on supp_h1",
     "linregress of log10 supp_h2 on log10 supp_h1 per variant", stage="suppression",
     spec="7")
_add("mode_cumfrac", ("mode", "eig"), "float64", "cumulative mode fraction",
     "E_p[sum_{m<=j} kappa_m^2 (u_m.v_i)^2] / E_p[sum_m kappa_m^2 (u_m.v_i)^2]",
     stage="suppression", spec="7")
_add("xy_corr", ("eig",), "float64", "X-Y correlation",
     "Pearson correlation over the probe set of X = kappa_1^2 and Y_i = (u_1 . v_i)^2",
     stage="suppression", spec="7")

# ----------------------------------------------------------------- provenance (per analysis)
_add("n_hvp", (), "int64", "Hessian-vector products used",
     "eigensolver products plus the residual check", units="count", stage="provenance")
_add("eigen_passes", (), "int64", "eigensolver passes over the analysis set",
     "operator calls of the eigensolver (each streams the analysis set once)", units="count",
     stage="provenance")
_add("n_threads", (), "int64", "torch intra-op threads", "torch.get_num_threads() during the "
     "analysis (analysis.threads, or the library's default)", units="count", stage="provenance")
_add("chunk_size", (), "int64", "samples per streamed chunk", "from analysis.memory",
     units="count", stage="provenance")
_add("awd_h1_rel_err", (), "float64", "AWD self-check",
     "max_i |v_i^T H v_i - lambda_i| / |lambda_1| recomputed by the AWD pass (~0)",
     stage="provenance")
_add("seconds_eigen", (), "float64", "eigensolver wall time", "top-k eigenpairs and residuals",
     units="s", stage="provenance")
_add("seconds_covariance", (), "float64", "covariance wall time",
     "per-sample gradient pass and projected covariances", units="s", stage="provenance")
_add("seconds_awd", (), "float64", "AWD wall time",
     "matched batches, Terms I/II, per-sample spectra", units="s", stage="provenance")
_add("seconds_fisher", (), "float64", "Fisher wall time", "Fisher projection and eigenpairs",
     units="s", stage="provenance")
_add("seconds_statistics", (), "float64", "statistics wall time",
     "alignment and noise-geometry statistics", units="s", stage="provenance")
_add("seconds_spectra", (), "float64", "spectra wall time",
     "M, H_p, C spectra, densities, trace, comm_full (each part's seconds: provenance "
     "spectra_seconds)", units="s", stage="provenance")
_add("provenance", (), "str", "how the analysis was computed",
     "JSON: operator used, eigen method resolved, chunk sizes, seeds, settings",
     stage="provenance")

# ----------------------------------------------------------------- training (SPEC 8)
for _n, _ln, _d in [
    ("train_loss", "train loss", "mean loss over the analysis set (eval mode)"),
    ("train_acc", "train accuracy", "accuracy over the analysis set"),
    ("test_loss", "test loss", "mean loss over the test set"),
    ("test_acc", "test accuracy", "accuracy over the test set"),
    ("grad_norm", "full-batch gradient norm",
     "||grad_theta L|| over all parameters, analysis set, eval mode"),
]:
    _units = "loss" if _n.endswith("loss") else "1"
    _add(_n, (), "float32", f"{_ln} at the checkpoint", _d, units=_units, stage="training",
         spec="8")
    _add(f"curve_{_n}", ("train_epoch",), "float32", f"{_ln} per training epoch", _d,
         units=_units, stage="training", spec="8")
_add("curve_lr", ("train_epoch",), "float32", "learning rate per training epoch",
     "SGD learning rate used in that epoch", stage="training", spec="8")
_add("ckpt_epoch", (), "int64", "epoch whose weights were analysed",
     "equals epoch unless training stopped early (then the last epoch trained)",
     stage="training", spec="8")
_add("ckpt_sha256", (), "str", "SHA-256 of the checkpoint",
     "recorded when the checkpoint is written; a different file is refused before analysis",
     stage="store", spec="8")
_add("trained", (), "bool", "training of the run finished",
     "true once the run's checkpoints exist", stage="store", spec="8")
_add("failed", (), "bool", "training of the run diverged",
     "non-finite loss; see attribute failures", stage="store", spec="8")
_add("done", (), "bool", "analysis finished",
     "true once every variable of (run, epoch) is written", stage="store", spec="8")

VARIABLES: dict[str, Variable] = {v.name: v for v in _ENTRIES}
"""The catalogue, by name."""
assert len(VARIABLES) == len(_ENTRIES), "duplicate variable names in the registry"

DIAG_ONLY: tuple[str, ...] = tuple(v.name for v in _ENTRIES if v.diag_only)
"""k x k variables that ``analysis.diag_only`` may store as their diagonal."""

GAMMA_ESTIMATORS: tuple[str, ...] = (
    "covar", "covar_mb", "covar_within", "c_pair", "c_awd_raw", "c_hh", "c_hh_sd",
    "c_hh_sd_wd", "c_li", "h2", "fisher",
)
"""The power-law estimators of SPEC 6, in the order of the ``estimator`` dim."""
assert set(GAMMA_ESTIMATORS) == {v.name for v in _ENTRIES if v.gamma}

GAMMA_ROLES: dict[str, str] = {
    v.role: v.name for v in sorted((v for v in _ENTRIES if v.role),
                                   key=lambda v: ("AWD" in v.role, "'" in v.role))}
"""The paper's named exponents, role -> estimator (``gamma_emp``: ``covar``, ...), read from
each variable's ``role``, in the paper's table order: the empirical gamma first, then the
AWD ones, the primed one last."""


def stored_dtype(name: str, dtype: np.dtype | None = None) -> np.dtype:
    """The dtype ``name`` is stored in; unregistered names keep ``dtype`` (floats: float32)."""
    var = VARIABLES.get(name)
    if var is not None:
        return np.dtype(object) if var.dtype == "str" else np.dtype(var.dtype)
    if dtype is not None and np.issubdtype(dtype, np.floating):
        return np.dtype(np.float32)
    return np.dtype(dtype)


def annotate(ds: xr.Dataset) -> xr.Dataset:
    """Attach ``long_name``, ``description``, ``units`` (and ``accuracy`` where stated) to
    every registered variable."""
    for name in ds.data_vars:
        var = VARIABLES.get(str(name))
        if var is not None:
            ds[name].attrs.update(long_name=var.long_name, description=var.description,
                                  units=var.units)
            if var.accuracy:
                ds[name].attrs["accuracy"] = var.accuracy
    return ds


def gamma_order(names) -> list[str]:
    """``names`` sorted in the order of :data:`GAMMA_ESTIMATORS`."""
    names = set(names)
    return [n for n in GAMMA_ESTIMATORS if n in names]


def returned(v: Variable) -> str:
    """The dtype ``analyze_checkpoint`` returns ``v`` in: floats in float64 unless
    ``v.returned`` says otherwise; ``—`` for what only a recipe run records."""
    if v.stage in ("training", "store"):
        return "—"
    return v.returned or ("float64" if v.dtype.startswith("float") else v.dtype)
