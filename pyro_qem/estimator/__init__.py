"""The massively parallel importance-weighted estimator.

:mod:`.factors` turns a recorded particle run into packed log-space factors;
:mod:`.contraction` contracts them to ``log P_hat`` and differentiates through zero
source terms to get every site's posterior particle weights; :mod:`.estimate` does both
for one run. The estimator reads :mod:`pyro_qem.model` and :mod:`pyro_qem.handlers`
only.
"""

from .contraction import (
    PlateScaledLogRing,
    Source,
    log_marginal,
    log_marginal_and_weights,
    make_sources,
)
from .estimate import Estimate, estimate
from .factors import LogFactor, log_factors, subsample_scales

__all__ = [
    "Estimate",
    "estimate",
    "LogFactor",
    "PlateScaledLogRing",
    "Source",
    "log_factors",
    "log_marginal",
    "log_marginal_and_weights",
    "make_sources",
    "subsample_scales",
]
