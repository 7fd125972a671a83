"""Moment-matched approximate-posterior families and the registry keyed by support."""

from .base import ANY_EVENT_DIMS, AnyEventDims, Family, Moments, Params
from .bernoulli import Bernoulli, Binomial
from .categorical import Categorical, Multinomial, OneHotCategorical
from .dirichlet import Beta, Dirichlet
from .exponential import Exponential, HalfNormal
from .gamma import Gamma, InverseGamma
from .lognormal import LogNormal
from .mvn import MultivariateNormal
from .normal import Normal
from .poisson import Poisson
from .scaled_beta import ScaledBeta, ScaledBetaDistribution
from .transformed import Unconstrained
from .vonmises import VonMises
from .registry import FAMILIES, compatible_families, default_family, resolve_family
from .support import any_bijective, has_bijection, support_kind, support_matches

__all__ = [
    "ANY_EVENT_DIMS",
    "AnyEventDims",
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
    "OneHotCategorical",
    "Params",
    "Poisson",
    "ScaledBeta",
    "ScaledBetaDistribution",
    "Unconstrained",
    "VonMises",
    "any_bijective",
    "compatible_families",
    "default_family",
    "has_bijection",
    "resolve_family",
    "support_kind",
    "support_matches",
]
