"""The paper's figures drawn from a store, each written against the registered variable
names and dims of :mod:`awch_scale.variables`; one module per family:

- :mod:`.base`: :class:`FigureSpec`, :class:`Skip`, :func:`missing` and the shared
  drawing helpers (bands over runs, panel grids, slope guides);
- :mod:`.correlation`: |R_ij| of C beside a Haar-rotated C (Fig. 1, 7-9);
- :mod:`.gamma`: the power law X_ii ~ lambda_i^gamma and gamma over training (Fig. 2, 4a);
- :mod:`.training`: curves over training (Fig. 4b-f);
- :mod:`.suppression`: the suppression experiment (Fig. 3, 13-15);
- :mod:`.spectra`: spectra, principal cosines and the spectral density (SPEC 6);
- :mod:`.sweep`: gamma against each swept value (Fig. 5-6).

:data:`FIGURES` is the catalogue. :func:`missing` says why a figure cannot be drawn from
a store (a variable is absent, or present but never computed); the report then lists it
as skipped instead of drawing anything. A figure appears as soon as its variables are in
the store, with no change here.

Several runs (seeds) are drawn as their mean with a band of +- one standard deviation
over runs (``numpy.nanstd``, ddof = 1); per-analysis figures (power law, correlation,
suppression) use the last epoch with a finished analysis and draw every finished run.
"""

from __future__ import annotations

from awch_scale.report.figures.base import FigureSpec, Skip, missing
from awch_scale.report.figures.correlation import draw_corr
from awch_scale.report.figures.full_spectra import draw_full_spectra
from awch_scale.report.figures.gamma import draw_gamma_epochs, draw_powerlaw
from awch_scale.report.figures.spectra import (
    draw_density,
    draw_hp,
    draw_principal_cos,
    draw_spectra,
)
from awch_scale.report.figures.suppression import draw_mode_cumfrac, draw_suppression
from awch_scale.report.figures.sweep import draw_sweep
from awch_scale.report.figures.training import draw_frob, draw_training, scalar_epochs

__all__ = ["FIGURES", "FigureSpec", "Skip", "draw_sweep", "missing"]

FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("corr", "|R_ij| of C in the Hessian eigenbasis next to a Haar-rotated C with "
               "the same spectrum (rotation seeded, drawn for display)", "Fig. 1, 7-9",
               ("covar", "hess_eigval"), draw_corr),
    FigureSpec("powerlaw", "log-log X_ii against lambda_i per estimator, each run's fitted "
               "slope (solid, labelled with its gamma) with slope-1 and slope-2 guides "
               "(dashed, dotted)", "Fig. 2, 10-12",
               ("hess_eigval", "gamma"), draw_powerlaw, per_analysis=True),
    FigureSpec("gamma_epochs", "gamma per estimator over training, one panel per family "
               "(empirical, AWD, Fisher); grey band: [1, 2]",
               "Fig. 4a", ("gamma",), draw_gamma_epochs),
    FigureSpec("comm_err", "commutation error of C and H with its Haar-rotated and "
               "unrelated-matrix baselines", "Fig. 4b",
               ("comm_err",), scalar_epochs(("comm_err", "comm_err_rand",
                                             "comm_err_unrelated"),
                                            "commutation error over training", "error")),
    FigureSpec("eig_alignment", "eigenbasis alignment sqrt(sum C_ii^2)/||C||_F", "Fig. 4c",
               ("eig_alignment",), scalar_epochs(("eig_alignment",),
                                                 "eigenbasis alignment over training",
                                                 "alignment")),
    FigureSpec("spearman", "Spearman rank correlation of C_ii with lambda_i", "Fig. 4d",
               ("spearman",), scalar_epochs(("spearman",), "rank correlation over training",
                                            "Spearman rho")),
    FigureSpec("training", "train and test loss and accuracy per epoch", "Fig. 4e",
               ("curve_train_loss",), draw_training),
    FigureSpec("frob", "Frobenius norms of the AWD terms", "Fig. 4f", ("frob",), draw_frob),
    FigureSpec("suppression", "suppressed second moment against first moment per variant "
               "(log-log, slope guides)", "Fig. 3, 13-15", ("supp_h1", "supp_h2"),
               draw_suppression),
    FigureSpec("mode_cumfrac", "cumulative fraction of the per-sample Hessian modes in "
               "E_p[h_p^2]_ii", "Fig. 13-15", ("mode_cumfrac",), draw_mode_cumfrac),
    FigureSpec("spectra", "top eigenvalues of H and M (and C, F when stored); curves that "
               "coincide are drawn dashed and the legend says they are equal", "SPEC 6",
               ("hess_eigval", "m_eigval"), draw_spectra),
    FigureSpec("hp_extremes", "largest and smallest eigenvalues of H_p = M - H", "SPEC 6",
               ("hp_eigval_top", "hp_eigval_bottom"), draw_hp),
    FigureSpec("principal_cos", "principal cosines between the top eigenspaces of H and M "
               "(and C)", "SPEC 6", ("principal_cos",), draw_principal_cos),
    FigureSpec("density", "SLQ spectral density of H on a log axis clipped at 1e-6 of its "
               "peak, the top-k eigenvalues marked along the x axis", "SPEC 6", ("density",),
               draw_density),
    FigureSpec("full_spectra", "densities of H, M and H_p at one checkpoint and their "
               "extremes over the epochs", "SGD-Dynamics Fig. 1",
               ("density", "density_m", "density_hp"), draw_full_spectra),
)
"""Every figure of the store report, in report order."""
