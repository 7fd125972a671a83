"""Move a family's q to a given central value, keeping its spread: how an explicit
``init_loc_fn`` (e.g. ``init_to_value(values=...)``) sets the initial q of each family."""

from __future__ import annotations

import math
from typing import Callable, Dict

import torch

from .base import Family, Params

_EPS = 1e-6


def relocate(family: Family, params: Params, value: torch.Tensor) -> Params:
    """``params`` with the location (for location families) or the mean (for the others)
    moved to ``value``. Families without a natural centre (Categorical) are unchanged."""
    rule = _RULES.get(family.name)
    if rule is None:
        return params
    return rule(dict(params), value.detach().double(), family)


def _loc(params: Params, v: torch.Tensor, family: Family) -> Params:
    params["loc"] = v.expand_as(params["loc"])
    return params


def _log_loc(params: Params, v: torch.Tensor, family: Family) -> Params:
    params["loc"] = v.clamp_min(1e-300).log().expand_as(params["loc"])
    return params


def _gamma_mean(params: Params, v: torch.Tensor, family: Family) -> Params:
    params["rate"] = params["concentration"] / v.clamp_min(1e-300)
    return params


def _inverse_gamma_mode(params: Params, v: torch.Tensor, family: Family) -> Params:
    # The mode b / (a + 1) exists for every shape, unlike the mean.
    params["rate"] = v * (params["concentration"] + 1)
    return params


def _exponential_mean(params: Params, v: torch.Tensor, family: Family) -> Params:
    params["rate"] = (1 / v.clamp_min(1e-300)).expand_as(params["rate"])
    return params


def _half_normal_mean(params: Params, v: torch.Tensor, family: Family) -> Params:
    params["scale"] = (v * math.sqrt(math.pi / 2)).expand_as(params["scale"])
    return params


def _beta_mean(params: Params, v: torch.Tensor, family: Family) -> Params:
    total = params["concentration1"] + params["concentration0"]
    v = v.clamp(_EPS, 1 - _EPS)
    params["concentration1"], params["concentration0"] = total * v, total * (1 - v)
    return params


def _dirichlet_mean(params: Params, v: torch.Tensor, family: Family) -> Params:
    total = params["concentration"].sum(-1, keepdim=True)
    params["concentration"] = total * v.clamp_min(_EPS) / v.clamp_min(_EPS).sum(-1, keepdim=True)
    return params


def _probability_logits(scale_by_total: bool) -> Callable:
    def rule(params: Params, v: torch.Tensor, family: Family) -> Params:
        total = getattr(family, "total_count", 1) if scale_by_total else 1
        p = (v / torch.as_tensor(total, dtype=v.dtype)).clamp(_EPS, 1 - _EPS)
        params["logits"] = (p.log() - (-p).log1p()).expand_as(params["logits"])
        return params

    return rule


def _poisson_mean(params: Params, v: torch.Tensor, family: Family) -> Params:
    params["rate"] = v.clamp_min(_EPS).expand_as(params["rate"])
    return params


_RULES: Dict[str, Callable] = {
    "Normal": _loc,
    "MultivariateNormal": _loc,
    "LogNormal": _log_loc,
    "Gamma": _gamma_mean,
    "InverseGamma": _inverse_gamma_mode,
    "Exponential": _exponential_mean,
    "HalfNormal": _half_normal_mean,
    "Beta": _beta_mean,
    "Dirichlet": _dirichlet_mean,
    "Bernoulli": _probability_logits(False),
    "Binomial": _probability_logits(True),
    "Poisson": _poisson_mean,
}
