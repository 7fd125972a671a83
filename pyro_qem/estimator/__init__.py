"""The massively parallel importance-weighted estimator.

:mod:`.factors` turns a recorded particle run into packed log-space factors;
:mod:`.contraction` contracts them to ``log P_hat`` and differentiates through zero
source terms to get every site's posterior particle weights.
"""

from .contraction import (
    PlateScaledLogRing,
    Source,
    log_marginal,
    log_marginal_and_weights,
    make_sources,
)
from .factors import LogFactor, Symbols, log_factors, subsample_scales

__all__ = [
    "LogFactor",
    "PlateScaledLogRing",
    "Source",
    "Symbols",
    "log_factors",
    "log_marginal",
    "log_marginal_and_weights",
    "make_sources",
    "subsample_scales",
]
