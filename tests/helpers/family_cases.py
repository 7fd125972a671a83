"""Seeded parameter draws for every family, shared by the family tests.

Each case gives a family, an event shape and float64 parameters with a leading batch
of shape (2, N): random draws plus the extreme values the M-steps must handle.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch
from torch.distributions import constraints

from pyro_qem.families import (
    Bernoulli,
    Beta,
    Binomial,
    Categorical,
    Dirichlet,
    Exponential,
    Family,
    Gamma,
    HalfNormal,
    InverseGamma,
    LogNormal,
    Multinomial,
    MultivariateNormal,
    Normal,
    OneHotCategorical,
    Poisson,
    ScaledBeta,
    Unconstrained,
    VonMises,
)
from pyro_qem.families._special import probs_to_logits

N = 200
Case = Tuple[Family, torch.Size, Dict[str, torch.Tensor]]


def float64(*values: float) -> torch.Tensor:
    """A float64 tensor of ``values``: the dtype every family's M-step works in."""
    return torch.tensor(values, dtype=torch.float64)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def _log_uniform(gen: torch.Generator, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return 10.0 ** torch.empty(*shape, dtype=torch.float64).uniform_(lo, hi, generator=gen)


def _with_extremes(values: torch.Tensor, extremes: List[float]) -> torch.Tensor:
    """Overwrite the first entries with the extremes, then batch as (2, N/2)."""
    values = values.clone()
    values[: len(extremes)] = torch.tensor(extremes, dtype=torch.float64)
    return values.reshape(2, -1, *values.shape[1:])


def _shapes(gen: torch.Generator) -> torch.Tensor:
    return _with_extremes(_log_uniform(gen, -3, 4, N), [1e-3, 1e4, 1e-3, 1.0, 1e4])


def _normal(gen: torch.Generator) -> Case:
    scale = _log_uniform(gen, -3, 3, N)
    # (z, z^2) mean parameters lose digits as |loc| / scale grows; 1e3 keeps 1e-4.
    loc = (
        scale
        * _log_uniform(gen, -3, 3, N)
        * torch.randn(N, generator=gen, dtype=torch.float64).sign()
    )
    return Normal(), torch.Size(), {"loc": loc.reshape(2, -1), "scale": scale.reshape(2, -1)}


def _mvn(gen: torch.Generator) -> Case:
    d = 3
    scale = _log_uniform(gen, -3, 3, N, d)
    raw = torch.randn(N, d, d, generator=gen, dtype=torch.float64).tril(-1)
    tril = raw + torch.diag_embed(0.5 + torch.rand(N, d, generator=gen, dtype=torch.float64))
    tril = tril * scale.unsqueeze(-1)
    loc = scale * torch.randn(N, d, generator=gen, dtype=torch.float64) * 10
    params = {"loc": loc.reshape(2, -1, d), "scale_tril": tril.reshape(2, -1, d, d)}
    return MultivariateNormal(), torch.Size([d]), params


def _lognormal(gen: torch.Generator) -> Case:
    scale = _log_uniform(gen, -3, 1, N).reshape(2, -1)
    loc = torch.randn(2, N // 2, generator=gen, dtype=torch.float64) * 5
    return LogNormal(), torch.Size(), {"loc": loc, "scale": scale}


def _gamma_like(family: Family) -> Callable[[torch.Generator], Case]:
    def make(gen: torch.Generator) -> Case:
        rate = _log_uniform(gen, -3, 3, N).reshape(2, -1)
        return family, torch.Size(), {"concentration": _shapes(gen), "rate": rate}

    return make


def _exponential(gen: torch.Generator) -> Case:
    return Exponential(), torch.Size(), {"rate": _log_uniform(gen, -6, 6, N).reshape(2, -1)}


def _half_normal(gen: torch.Generator) -> Case:
    return HalfNormal(), torch.Size(), {"scale": _log_uniform(gen, -6, 6, N).reshape(2, -1)}


def _beta(gen: torch.Generator) -> Case:
    a, b = _shapes(gen), _shapes(gen).flip(-1)
    return Beta(), torch.Size(), {"concentration1": a, "concentration0": b}


def _scaled_beta(gen: torch.Generator) -> Case:
    # Bounds per batch element, as a Uniform(lo, hi) prior in a plate gives them.
    low = torch.randn(2, N // 2, generator=gen, dtype=torch.float64) * 10
    high = low + _log_uniform(gen, -2, 3, N).reshape(2, -1)
    a, b = _shapes(gen), _shapes(gen).flip(-1)
    return ScaledBeta(low, high), torch.Size(), {"concentration1": a, "concentration0": b}


def _unconstrained(gen: torch.Generator) -> Case:
    # A scalar support, so that quantiles can be checked (a shifted LogNormal).
    scale = _log_uniform(gen, -3, 1, N).reshape(2, -1)
    loc = torch.randn(2, N // 2, generator=gen, dtype=torch.float64) * 3
    family = Unconstrained(constraints.greater_than(2.0))
    return family, torch.Size(), {"loc": loc, "scale": scale}


def _dirichlet(gen: torch.Generator) -> Case:
    k = 4
    a = _log_uniform(gen, -3, 4, N, k)
    a[:4] = torch.tensor([[1e-3] * k, [1e4] * k, [1e-3, 1e4, 1.0, 1e-3], [1e4, 1e4, 1e-3, 5.0]])
    return Dirichlet(), torch.Size([k]), {"concentration": a.reshape(2, -1, k)}


def _probs(gen: torch.Generator) -> torch.Tensor:
    probs = torch.rand(N, generator=gen, dtype=torch.float64)
    return _with_extremes(probs, [1e-6, 1 - 1e-6, 0.5, 1e-3, 1 - 1e-3])


def _bernoulli(gen: torch.Generator) -> Case:
    return Bernoulli(), torch.Size(), {"logits": probs_to_logits(_probs(gen))}


def _binomial(gen: torch.Generator) -> Case:
    total = torch.randint(1, 50, (2, N // 2), generator=gen).double()
    return Binomial(total), torch.Size(), {"logits": probs_to_logits(_probs(gen))}


def _category_logits(gen: torch.Generator, k: int) -> torch.Tensor:
    probs = torch.distributions.Dirichlet(torch.ones(k, dtype=torch.float64)).sample((N,))
    probs[:2] = torch.tensor(
        [[1e-6] * (k - 1) + [1.0], [0.5 - 1e-6, 1e-6] + [0.5 / (k - 2)] * (k - 2)]
    )
    probs = probs / probs.sum(-1, keepdim=True)
    return probs.log().reshape(2, -1, k)


def _categorical(gen: torch.Generator) -> Case:
    return Categorical(5), torch.Size(), {"logits": _category_logits(gen, 5)}


def _one_hot(gen: torch.Generator) -> Case:
    return OneHotCategorical(), torch.Size([4]), {"logits": _category_logits(gen, 4)}


def _multinomial(gen: torch.Generator) -> Case:
    return Multinomial(7), torch.Size([4]), {"logits": _category_logits(gen, 4)}


def _vonmises(gen: torch.Generator) -> Case:
    loc = (torch.rand(N, generator=gen, dtype=torch.float64) * 2 - 1) * 3.1
    return VonMises(), torch.Size(), {"loc": loc.reshape(2, -1),
                                      "concentration": _log_uniform(gen, -3, 4, N).reshape(2, -1)}


def _poisson(gen: torch.Generator) -> Case:
    return Poisson(), torch.Size(), {"rate": _log_uniform(gen, -6, 6, N).reshape(2, -1)}


CASES: Dict[str, Callable[[torch.Generator], Case]] = {
    "Normal": _normal,
    "MultivariateNormal": _mvn,
    "LogNormal": _lognormal,
    "Gamma": _gamma_like(Gamma()),
    "InverseGamma": _gamma_like(InverseGamma()),
    "Exponential": _exponential,
    "HalfNormal": _half_normal,
    "Beta": _beta,
    "ScaledBeta": _scaled_beta,
    "Dirichlet": _dirichlet,
    "Bernoulli": _bernoulli,
    "Categorical": _categorical,
    "OneHotCategorical": _one_hot,
    "Binomial": _binomial,
    "Multinomial": _multinomial,
    "Poisson": _poisson,
    "Unconstrained": _unconstrained,
    "VonMises": _vonmises,
}


def make_case(name: str) -> Case:
    """The seeded case for the family called ``name``."""
    return CASES[name](_gen())
