"""The suppression experiment (SPEC 7; paper App. B.3, Eq. 23-27, Figs. 3 and 13-15).

The paper traces gamma > 1 to the per-sample Hessians h_p = sum_m kappa_m u_m u_m^T of
the probe set: their spectra are dominated by the first mode, and where the size of
that mode (X_p = kappa_1^2) correlates with its direction (Y_pi = (u_1 . v_i)^2), the
second moment E_p[h_p^2] grows superlinearly with the first, H = E_p[h_p]. The
experiment edits the spectra and refits the slope:

- stiff set S = {p : kappa_1^(p) > theta * max_p kappa_1^(p)};
- ``original``: kappa~ = kappa;
- ``rank1``: kappa~_m = 1e-5 kappa_m for m > 1 (only the first mode left);
- ``rank1_bg``: as ``rank1``, and kappa~_1 = 1e-3 kappa_1 for p outside S;
- ``homogenised``: as ``rank1_bg``, and kappa~_1 of p in S replaced by the mean of
  kappa_1 over S (this removes the X-Y correlation inside the stiff set).

For each variant, supp_h1_i = (1/|P|) sum_p sum_m kappa~_m (u_m . v_i)^2 and supp_h2_i
the same with kappa~_m^2 (V^T E_p[h~_p] V and V^T E_p[h~_p^2] V on the diagonal, as
the u_m are orthonormal), and supp_gamma is the slope of log10 supp_h2 on log10 supp_h1
(:func:`awch_scale.analysis.powerlaw.fit_power_law`, over the first ``n_fit`` directions where
both are positive).

Everything is computed from the probe spectra the AWD stage already has
(:class:`awch_scale.analysis.awd.spectra.ProbeSpectra`: ``kappa`` (n, d_out), descending, and
``u_proj`` (n, d_out, k) = v_i . u_m^(p)); nothing is recomputed. All d_out modes are
needed (the nonzero part of a Linear layer's per-sample spectrum).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from awch_scale.analysis.powerlaw import fit_power_law

VARIANTS = ("original", "rank1", "rank1_bg", "homogenised")
"""The ``variant`` dim, in this order."""

SUPPRESS_MODES = 1e-5
"""Factor on kappa_m, m > 1, in every variant but ``original`` (SPEC 7)."""

SUPPRESS_BACKGROUND = 1e-3
"""Factor on kappa_1 of the probes outside the stiff set (``rank1_bg``, ``homogenised``)."""


def stiff_set(kappa: np.ndarray, theta: float) -> np.ndarray:
    """Boolean mask of S = {p : kappa_1^(p) > theta * max_p kappa_1^(p)}."""
    k1 = np.asarray(kappa, dtype=np.float64)[:, 0]
    return k1 > theta * k1.max()


def suppressed_kappa(kappa: np.ndarray, theta: float) -> dict[str, np.ndarray]:
    """kappa~ (n, d_out) of every variant (see the module docstring)."""
    kappa = np.asarray(kappa, dtype=np.float64)
    stiff = stiff_set(kappa, theta)
    rank1 = kappa.copy()
    rank1[:, 1:] *= SUPPRESS_MODES
    bg = rank1.copy()
    bg[~stiff, 0] *= SUPPRESS_BACKGROUND
    hom = bg.copy()
    hom[stiff, 0] = kappa[stiff, 0].mean()
    return {"original": kappa, "rank1": rank1, "rank1_bg": bg, "homogenised": hom}


def _pearson(x: np.ndarray, Y: np.ndarray) -> np.ndarray:  # noqa: N803
    """Pearson correlation of x (n,) with each column of Y (n, k); NaN where undefined."""
    xc = x - x.mean()
    Yc = Y - Y.mean(0)
    den = np.sqrt((xc**2).sum() * (Yc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, xc @ Yc / np.where(den > 0, den, 1.0), np.nan)


def suppression_variables(kappa, u_proj, *, theta: float = 0.05,
                          n_fit: int | None = None) -> tuple[dict[str, tuple], dict]:
    """The SPEC 7 variables from the probe spectra.

    Args:
        kappa: (n, d_out) per-sample eigenvalues kappa_m^(p), descending in m.
        u_proj: (n, d_out, k) projections v_i . u_m^(p).
        theta: stiff-set threshold (recipe ``analysis.suppression.theta``).
        n_fit: leading directions in the supp_gamma fits (default k: all directions
            where supp_h1 and supp_h2 are positive).

    Returns:
        (data, coords): ``supp_h1``, ``supp_h2`` (variant, eig), ``supp_gamma``
        (variant), ``mode_cumfrac`` (mode, eig; NaN where a direction has no
        curvature), ``xy_corr`` (eig; NaN where X or Y_i is constant over the probes),
        and coords ``variant`` (:data:`VARIANTS`) and ``mode`` (1..d_out).

    Raises:
        ValueError: inconsistent shapes or an empty probe set.
    """
    kappa = np.asarray(kappa, dtype=np.float64)
    u_proj = np.asarray(u_proj, dtype=np.float64)
    if kappa.ndim != 2 or u_proj.ndim != 3 or u_proj.shape[:2] != kappa.shape:
        raise ValueError(f"kappa {kappa.shape} and u_proj {u_proj.shape} must be (n, d_out) "
                         "and (n, d_out, k)")
    n, d_out, k = u_proj.shape
    if n == 0:
        raise ValueError("the probe set is empty")
    n_fit = k if n_fit is None else int(n_fit)
    u2 = u_proj**2  # (n, d_out, k)
    variants = suppressed_kappa(kappa, theta)
    h1 = np.stack([np.einsum("pm,pmi->i", kt, u2) / n for kt in variants.values()])
    h2 = np.stack([np.einsum("pm,pmi->i", kt**2, u2) / n for kt in variants.values()])
    gamma = np.array([fit_power_law(h2[j], h1[j], n_fit).gamma for j in range(len(VARIANTS))])
    per_mode = np.einsum("pm,pmi->mi", kappa**2, u2)  # (d_out, k)
    total = per_mode.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cumfrac = np.where(total > 0, np.cumsum(per_mode, 0) / np.where(total > 0, total, 1.0),
                           np.nan)
    xy = _pearson(kappa[:, 0] ** 2, u2[:, 0, :])
    data = {
        "supp_h1": (("variant", "eig"), h1),
        "supp_h2": (("variant", "eig"), h2),
        "supp_gamma": (("variant",), gamma),
        "mode_cumfrac": (("mode", "eig"), cumfrac),
        "xy_corr": (("eig",), xy),
    }
    return data, {"variant": list(VARIANTS), "mode": np.arange(1, d_out + 1)}


def suppression_dataset(awd: xr.Dataset, *, theta: float = 0.05,
                        n_fit: int | None = None) -> xr.Dataset:
    """The SPEC 7 variables as a Dataset, from the AWD stage's output.

    ``awd`` is what :func:`awch_scale.analysis.awd.awd_analysis` returns with
    ``store_probe_spectra=True`` and ``n_modes=None`` (all d_out modes: the suppression
    sums need every nonzero mode). Its ``kappa`` and ``u_proj`` are used as they are;
    drop them afterwards if the recipe does not store probe spectra.

    Raises:
        ValueError: ``awd`` has no probe spectra.
    """
    if "kappa" not in awd or "u_proj" not in awd:
        raise ValueError("the suppression experiment needs the AWD probe spectra: call "
                         "awd_analysis(..., store_probe_spectra=True, n_modes=None)")
    data, coords = suppression_variables(awd.kappa.values, awd.u_proj.values, theta=theta,
                                         n_fit=n_fit)
    return xr.Dataset(data, coords={**coords, "eig": awd.eig.values})
