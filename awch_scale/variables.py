"""Names, long names and formulas of every stored variable (../shared/SPEC.md).

:func:`annotate` copies these into a dataset's attributes, so a user exploring a
store in a notebook sees what each array is (``ds.covar.attrs["description"]``).
Notation: V = [v_1..v_k] top-k Hessian eigenvectors, X_V = V^T X V, N analysis
samples, B the training batch size, g_i per-sample gradients of the target block.
"""

from __future__ import annotations

import xarray as xr

VARIABLES: dict[str, tuple[str, str]] = {
    # SPEC 2
    "hess_eigval": ("Hessian eigenvalue lambda_i (= H_ii in the eigenbasis)",
                    "top-k algebraically largest eigenvalues of H = (1/N) sum_i hess l_i, "
                    "by Lanczos (eigsh); float64"),
    "hess_residual": ("relative eigen-residual",
                      "||H v_i - lambda_i v_i|| / |lambda_1|"),
    # SPEC 3
    "covar": ("SGD noise covariance C_V (Eq. 2)",
              "V^T C V, C = (1/B) [ (1/N) sum_i g_i g_i^T - g g^T ], exact over the "
              "analysis set"),
    "covar_mb": ("minibatch noise covariance (reference estimator)",
                 "V^T C_mb V, C_mb = mean_b g_b g_b^T - g g^T over one seeded shuffled pass "
                 "of full minibatches of size B"),
    "second_moment": ("second moment of stochastic gradients M_V",
                      "V^T M V, M = (1/N) sum_i g_i g_i^T"),
    # SPEC 4
    "c_hh": ("AWD Hessian-weight term C^hh (Eq. 10)",
             "(1/(2B^2)) E_t[s_I s_I^T], s_I = V^T sum_{p in nu} h_p dw_p"),
    "c_hg": ("AWD cross term C^hg (symmetrised)",
             "(1/(2B^2)) E_t[s_I s_II^T + s_II s_I^T]"),
    "c_gg": ("AWD gradient-activity term C^gg",
             "(1/(2B^2)) E_t[s_II s_II^T], s_II = V^T sum_{p in nu} (d dw_p/dw)^T g_p"),
    "c_awd_raw": ("AWD covariance C^hh + C^hg + C^gg (Eq. 58-59)", "c_hh + c_hg + c_gg"),
    "c_hh_sd": ("same-sample part of C^hh (Eq. 64)",
                "(1/(2B^2)) E_t[sum_p (V^T h_p dw_p)(V^T h_p dw_p)^T]"),
    "c_hg_sd": ("same-sample part of C^hg",
                "(1/(2B^2)) E_t[sum_p (V^T I_p)(V^T II_p)^T + (V^T II_p)(V^T I_p)^T]"),
    "c_gg_sd": ("same-sample part of C^gg",
                "(1/(2B^2)) E_t[sum_p (V^T II_p)(V^T II_p)^T]"),
    "c_pair": ("exact matched-batch gradient-difference covariance",
               "(1/2) E_t[e e^T], e = V^T (grad L^mu - grad L^nu)"),
    "h2": ("second moment of per-sample Hessians (C1_h, Eq. 15 with M_p = I)",
           "V^T E_p[h_p^2] V over the analysis set"),
    "h2_diag": ("diagonal of h2 (H_2_d)", "v_i^T E_p[h_p^2] v_i"),
    "c_hh_sd_wd": ("C^hh same-sample with diagonal weight-perturbation covariance",
                   "(1/(2B)) E_{p in P}[sum_m kappa_m^2 sigma2_pm (V^T u_m)(V^T u_m)^T]"),
    "sigma_w2": ("AWD weight-perturbation scale sigma_w^2",
                 "sum_{p,m} kappa_m^2 sigma2_pm / sum_{p,m} kappa_m^2 over the probe set"),
    "c_li": ("Theorem 3.4 prediction of C (Eq. 15)", "(sigma_w2 / (2B)) * h2"),
    "pair_nu": ("matched-batch draw nu (indices into the analysis set)",
                "slot s of nu is matched to slot s of mu"),
    "pair_mu": ("matched-batch draw mu (indices into the analysis set)",
                "within-class minimal-distance one-to-one partner of pair_nu"),
    "probe_idx": ("probe-set samples (indices into the analysis set)", "SPEC section 4"),
    "probe_partner": ("probe partners (indices into the analysis set)",
                      "same-class sample of partner batch mu_r nearest in target-layer input"),
    "kappa": ("per-sample Hessian eigenvalue kappa_m^(p)",
              "||a_p||^2 eig_m(Q_p), Q_p = d^2 l_p/dz^2, descending"),
    "u_proj": ("per-sample Hessian eigenvector projected on V", "v_i . u_m^(p)"),
    # SPEC 6
    "gamma": ("power-law exponent gamma of X_ii ~ lambda_i^gamma",
              "least squares of log10 X_ii on log10 lambda_i over i <= n_fit where both > 0 "
              "(scipy.stats.linregress); estimator covar = gamma_emp, h2 = gamma_AWD, "
              "c_awd_raw = gamma'_AWD"),
    "gamma_stderr": ("standard error of gamma", "linregress stderr of the slope"),
    "gamma_r2": ("r^2 of the log-log fit", "squared Pearson correlation of the fitted points"),
    "gamma_n": ("number of points in the gamma fit", "i <= n_fit with X_ii > 0 and lambda_i > 0"),
    # SPEC 8: training curves and bookkeeping
    "train_loss": ("train loss at the checkpoint", "mean loss over the analysis set (eval mode)"),
    "train_acc": ("train accuracy at the checkpoint", "accuracy over the analysis set"),
    "test_loss": ("test loss at the checkpoint", "mean loss over the test set"),
    "test_acc": ("test accuracy at the checkpoint", "accuracy over the test set"),
    "grad_norm": ("full-batch gradient norm at the checkpoint",
                  "||grad_theta L|| over all parameters, analysis set, eval mode"),
    "ckpt_epoch": ("epoch whose weights were analysed",
                   "equals epoch unless training stopped early (then the last epoch trained)"),
    "curve_train_loss": ("train loss per training epoch", "analysis set, eval mode"),
    "curve_train_acc": ("train accuracy per training epoch", "analysis set, eval mode"),
    "curve_test_loss": ("test loss per training epoch", "test set, eval mode"),
    "curve_test_acc": ("test accuracy per training epoch", "test set, eval mode"),
    "curve_grad_norm": ("full-batch gradient norm per training epoch",
                        "||grad_theta L|| over all parameters, analysis set"),
    "curve_lr": ("learning rate per training epoch", "SGD learning rate used in that epoch"),
    "trained": ("training of the run finished", "true once the run's checkpoints exist"),
    "failed": ("training of the run diverged", "non-finite loss; see attribute failures"),
    "n_hvp": ("Hessian-vector products used", "Lanczos products plus the residual check"),
    "seconds_eigsh": ("eigensolver wall time [s]", "top-k eigenpairs and residuals"),
    "seconds_covariance": ("covariance wall time [s]",
                           "per-sample gradient pass and projected covariances"),
    "seconds_awd": ("AWD wall time [s]", "matched batches, Terms I/II, per-sample spectra"),
    "done": ("analysis finished", "true once every variable of (run, epoch) is written"),
}


def annotate(ds: xr.Dataset) -> xr.Dataset:
    """Attach ``long_name`` and ``description`` to every known variable of ``ds``."""
    for name in ds.data_vars:
        if name in VARIABLES:
            long_name, desc = VARIABLES[name]
            ds[name].attrs.update(long_name=long_name, description=desc)
    return ds
