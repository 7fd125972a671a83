"""Moment-matched approximate-posterior families and the registry keyed by support."""

from .base import Family, Moments, Params
from .bernoulli import Bernoulli, Binomial
from .categorical import Categorical, Multinomial
from .dirichlet import Beta, Dirichlet
from .exponential import Exponential, HalfNormal
from .gamma import Gamma, InverseGamma
from .lognormal import LogNormal
from .mvn import MultivariateNormal
from .normal import Normal
from .poisson import Poisson
from .registry import FAMILIES, compatible_families, default_family, resolve_family
from .support import support_kind, support_matches

__all__ = [
    "FAMILIES",
    "Bernoulli",
    "Beta",
    "Binomial",
    "Categorical",
    "Dirichlet",
    "Exponential",
    "Family",
    "Gamma",
    "HalfNormal",
    "InverseGamma",
    "LogNormal",
    "Moments",
    "Multinomial",
    "MultivariateNormal",
    "Normal",
    "Params",
    "Poisson",
    "compatible_families",
    "default_family",
    "resolve_family",
    "support_kind",
    "support_matches",
]
