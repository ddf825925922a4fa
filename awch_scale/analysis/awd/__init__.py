"""Activity-weight duality (AWD) terms and per-sample Hessian spectra (SPEC section 4).

Entry point :func:`awd_analysis`. Modules, one concept each:

- :mod:`.matching`: class-balanced matched draws (linear assignment) and probe partners
- :mod:`awch_scale.model.target`: the target Linear layer as z = W a feeding the rest
  of the network (building block, shared with the operators)
- :mod:`awch_scale.model.projection`: V^T vec(u b^T) without per-sample D-vectors
- :mod:`.terms`: Term I, Term II and gradients of matched pairs (closed form / autodiff)
- :mod:`.moments`: h2 = V^T E_p[h_p^2] V streamed over the analysis set
- :mod:`.spectra`: per-sample spectra kappa_m, u_m; sigma2_pm; c_hh_sd_wd; sigma_w2
- :mod:`.accumulate`: float64 k x k (or diagonal) accumulators
- :mod:`.analysis`: :func:`awd_analysis`, the dataset
"""

from awch_scale.analysis.awd.analysis import AWD_GAMMA_ESTIMATORS, MATRIX_VARIABLES, awd_analysis
from awch_scale.analysis.awd.matching import match_one_to_one, matched_draws, probe_partners
from awch_scale.model.target import TargetLayer

__all__ = [
    "AWD_GAMMA_ESTIMATORS",
    "MATRIX_VARIABLES",
    "TargetLayer",
    "awd_analysis",
    "match_one_to_one",
    "matched_draws",
    "probe_partners",
]
