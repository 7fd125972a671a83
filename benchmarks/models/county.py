"""Radon county models written the usual way: one long table of houses, and an integer
column ``county`` that looks up each house's county latent (indexed groups).

Used by :mod:`benchmarks.county`; not part of :data:`benchmarks.models.MODELS` (those
share the comparison's 2-D data layout and rescaling experiment).

- :func:`varying_intercepts`: ``y ~ Normal(a[county] + b * floor, sigma)``.
- :func:`varying_slopes`: ``y ~ Normal(a[county] + b[county] * floor, sigma)`` with
  independent Normal priors on ``a`` and ``b``, each with its own mean and scale.
- :func:`correlated_slopes`: ``(a_c, b_c) ~ MultivariateNormal(mu_ab, diag(tau) @ L)``
  with ``L ~ LKJCholesky(2, 2)``.
- :func:`padded_intercepts`: :func:`varying_intercepts` on a dense (85, 116) county x
  slot grid with a mask, for the cost comparison.
- :func:`collapsed_intercepts`: :func:`varying_intercepts` with the intercepts
  integrated out analytically (an exact reference for the large synthetic data).

Each model has a non-centred twin for NUTS (:attr:`CountyModel.nuts_model`): same
posterior, centred values recovered as sites of the same names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch

import pyro
import pyro.distributions as dist
from pyro import poutine
from pyro.infer.reparam import LocScaleReparam
from pyro_qem.datasets import load_radon_mn

NUM_COUNTIES = 85
Args = Tuple[torch.Tensor, ...]


def radon_args(dtype: torch.dtype = torch.float32) -> Args:
    """``(floor, county, log_radon)`` of the 919 Minnesota houses."""
    data = load_radon_mn(dtype)
    return data["floor"], data["county"], data["log_radon"]


def varying_intercepts(floor, county, y=None, num_counties: int = NUM_COUNTIES) -> None:
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    sigma_a = pyro.sample("sigma_a", dist.HalfNormal(1.0))
    with pyro.plate("county", num_counties):
        a = pyro.sample("a", dist.Normal(mu, sigma_a))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("house", len(floor)):
        pyro.sample("y", dist.Normal(a[..., county] + b * floor, sigma), obs=y)


def varying_slopes(floor, county, y=None, num_counties: int = NUM_COUNTIES) -> None:
    mu_a = pyro.sample("mu_a", dist.Normal(0.0, 5.0))
    sigma_a = pyro.sample("sigma_a", dist.HalfNormal(1.0))
    mu_b = pyro.sample("mu_b", dist.Normal(0.0, 1.0))
    sigma_b = pyro.sample("sigma_b", dist.HalfNormal(1.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("county", num_counties):
        a = pyro.sample("a", dist.Normal(mu_a, sigma_a))
        b = pyro.sample("b", dist.Normal(mu_b, sigma_b))
    with pyro.plate("house", len(floor)):
        pyro.sample("y", dist.Normal(a[..., county] + b[..., county] * floor, sigma), obs=y)


def _correlated_globals(like: torch.Tensor):
    loc = like.new_tensor([0.0, 0.0])
    mu_ab = pyro.sample("mu_ab", dist.Normal(loc, like.new_tensor([5.0, 1.0])).to_event(1))
    tau = pyro.sample("tau", dist.HalfNormal(torch.ones_like(loc)).to_event(1))
    L = pyro.sample("L", dist.LKJCholesky(2, like.new_tensor(2.0)))
    sigma = pyro.sample("sigma", dist.HalfNormal(like.new_tensor(1.0)))
    # diag(tau) @ L; batch dims (particles, draws) stay on the left of the event dims.
    return mu_ab, tau.unsqueeze(-1) * L, sigma


def _correlated_likelihood(ab, floor, county, y, sigma) -> None:
    with pyro.plate("house", len(floor)):
        row = ab[..., county, :]
        pyro.sample("y", dist.Normal(row[..., 0] + row[..., 1] * floor, sigma), obs=y)


def correlated_slopes(floor, county, y=None, num_counties: int = NUM_COUNTIES) -> None:
    mu_ab, scale_tril, sigma = _correlated_globals(floor)
    with pyro.plate("county", num_counties):
        ab = pyro.sample("ab", dist.MultivariateNormal(mu_ab, scale_tril=scale_tril))
    _correlated_likelihood(ab, floor, county, y, sigma)


def correlated_slopes_noncentred(floor, county, y=None, num_counties: int = NUM_COUNTIES) -> None:
    """:func:`correlated_slopes` with ``ab = mu_ab + scale_tril @ z`` (for NUTS)."""
    mu_ab, scale_tril, sigma = _correlated_globals(floor)
    with pyro.plate("county", num_counties):
        z = pyro.sample("ab_z", dist.Normal(torch.zeros_like(mu_ab), 1.0).to_event(1))
        # Broadcasting adds the county dim: no unsqueeze on the globals, whose particle
        # dims (under QEM) sit left of a size-1 slot for it.
        value = mu_ab + (scale_tril @ z.unsqueeze(-1)).squeeze(-1)
        ab = pyro.deterministic("ab", value, event_dim=1)
    _correlated_likelihood(ab, floor, county, y, sigma)


def padded_grid(floor, county, y) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The houses laid out on a dense (counties, largest county) grid: ``(floor, y,
    mask)``, each (85, 116) for the radon data; empty slots hold 0 and mask False."""
    counties = int(county.max()) + 1
    sizes = torch.bincount(county, minlength=counties)
    order = torch.argsort(county, stable=True)
    starts = torch.cumsum(sizes, 0) - sizes
    slot = torch.arange(len(county)) - starts[county[order]]
    shape = (counties, int(sizes.max()))
    grid = [torch.zeros(shape, dtype=v.dtype) for v in (floor, y)]
    for g, v in zip(grid, (floor, y)):
        g[county[order], slot] = v[order]
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[county[order], slot] = True
    return grid[0], grid[1], mask


def padded_intercepts(floor_grid, y_grid, mask) -> None:
    """:func:`varying_intercepts` on a padded grid: ``a`` broadcast along the slots."""
    counties, slots = floor_grid.shape
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    sigma_a = pyro.sample("sigma_a", dist.HalfNormal(1.0))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("county", counties, dim=-2):
        a = pyro.sample("a", dist.Normal(mu, sigma_a))
        with pyro.plate("slot", slots, dim=-1), poutine.mask(mask=mask):
            pyro.sample("y", dist.Normal(a + b * floor_grid, sigma), obs=y_grid)


def group_statistics(x, group, y, num_groups: int) -> Dict[str, torch.Tensor]:
    """Per-group sufficient statistics of :func:`varying_intercepts` (float64)."""
    x, y = x.double(), y.double()

    def total(v):
        return torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group, v)

    return {"n": total(torch.ones_like(x)), "x": total(x), "y": total(y), "xx": total(x * x),
            "xy": total(x * y), "yy": total(y * y)}


def collapsed_intercepts(stats: Dict[str, torch.Tensor]) -> None:
    """:func:`varying_intercepts` with ``a`` integrated out: group g's rows are jointly
    ``Normal(mu + b x, sigma^2 I + sigma_a^2 11^T)``, a closed form in the statistics."""
    one = torch.tensor(1.0, dtype=torch.float64)
    mu = pyro.sample("mu", dist.Normal(0.0 * one, 5.0 * one))
    sigma_a = pyro.sample("sigma_a", dist.HalfNormal(one))
    b = pyro.sample("b", dist.Normal(0.0 * one, one))
    sigma = pyro.sample("sigma", dist.HalfNormal(one))
    n = stats["n"]
    # residual r = y - mu - b x: its sum and sum of squares per group
    r1 = stats["y"] - n * mu - b * stats["x"]
    r2 = (stats["yy"] + n * mu ** 2 + b ** 2 * stats["xx"] - 2 * mu * stats["y"]
          - 2 * b * stats["xy"] + 2 * mu * b * stats["x"])
    s2, t2 = sigma ** 2, sigma_a ** 2
    log_p = -0.5 * (n * math.log(2 * math.pi) + (n - 1) * s2.log() + (s2 + n * t2).log()
                    + (r2 - t2 / (s2 + n * t2) * r1 ** 2) / s2)
    pyro.factor("rows", log_p.sum())


def intercept_moments(stats: Dict[str, torch.Tensor], draws: Dict[str, torch.Tensor]
                      ) -> Dict[str, torch.Tensor]:
    """Posterior mean and sd of every group intercept from draws of the globals of
    :func:`collapsed_intercepts` (Rao-Blackwellised: ``a | globals, y`` is Normal)."""
    mu, sigma_a, b, sigma = (draws[k].reshape(-1, 1) for k in ("mu", "sigma_a", "b", "sigma"))
    precision = 1.0 / sigma_a ** 2 + stats["n"] / sigma ** 2
    mean = (mu / sigma_a ** 2 + (stats["y"] - b * stats["x"]) / sigma ** 2) / precision
    second = mean ** 2 + 1.0 / precision
    m = mean.mean(0)
    return {"mean": m, "sd": (second.mean(0) - m ** 2).clamp_min(0).sqrt()}


@dataclass(frozen=True)
class CountyModel:
    """One county model: the model QEM and SVI fit, and its NUTS twin.

    :param name: short name (reference files are ``reference_county_<name>.*``).
    :param title: the table's heading.
    :param model: ``model(floor, county, y=None)``.
    :param groups: QEM particle groups (the global latents share one particle dim).
    :param nuts_model: the same posterior, non-centred where NUTS needs it.
    """

    name: str
    title: str
    model: Callable
    groups: Sequence[List[str]]
    nuts_model: Callable


def _noncentred(model: Callable, sites: Sequence[str]) -> Callable:
    return poutine.reparam(model, config={s: LocScaleReparam(0.0) for s in sites})


COUNTY_MODELS: Dict[str, CountyModel] = {m.name: m for m in (
    CountyModel("intercepts", "varying intercepts", varying_intercepts,
                [["mu", "sigma_a", "b", "sigma"]], _noncentred(varying_intercepts, ["a"])),
    # a and b of a county share one particle dim: the likelihood of a house depends on
    # both, so separate groups would cost K^2 per house (measured 0.8 s/step vs 25 ms).
    CountyModel("slopes", "varying intercepts and slopes", varying_slopes,
                [["mu_a", "sigma_a", "mu_b", "sigma_b", "sigma"], ["a", "b"]],
                _noncentred(varying_slopes, ["a", "b"])),
    CountyModel("correlated", "correlated intercepts and slopes (LKJ)", correlated_slopes,
                [["mu_ab", "tau", "L", "sigma"]], correlated_slopes_noncentred),
)}
