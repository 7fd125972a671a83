"""radon: log radon of 4 states x 300 zip codes (first 150 zips train, last 150 test)."""

from __future__ import annotations

from typing import Tuple

import pyro
import pyro.distributions as dist

from .base import BenchmarkModel, Data, as_tensors, bundled, std_normal

NUM_TRAIN = 150


def model(data: Data, c: float = 1.0) -> None:
    """Per-state regression on basement and log uranium; ``state_mean`` is divided by
    ``c`` (and multiplied back in the likelihood) in the rescaled variant."""
    basement, log_uranium, log_radon = data["basement"], data["log_uranium"], data["log_radon"]
    states, zips = log_radon.shape
    global_mean = pyro.sample("global_mean", std_normal(log_radon))
    global_log_sigma = pyro.sample("global_log_sigma", std_normal(log_radon))
    with pyro.plate("state", states, dim=-2):
        state_mean = pyro.sample(
            "state_mean", dist.Normal(global_mean / c, global_log_sigma.exp() / c))
        state_log_sigma = pyro.sample("state_log_sigma", std_normal(log_radon))
        beta_u = pyro.sample("beta_u", std_normal(log_radon))
        beta_basement = pyro.sample("beta_basement", std_normal(log_radon))
        with pyro.plate("zip", zips, dim=-1):
            loc = c * state_mean + basement * beta_basement + log_uranium * beta_u
            pyro.sample("log_radon", dist.Normal(loc, state_log_sigma.exp()), obs=log_radon)


def load(device: str = "cpu") -> Tuple[Data, Data]:
    """Train (first 150 zips) and test (last 150 zips) data, each (4, 150)."""
    data = as_tensors(bundled("radon"), device)
    train = {k: v[:, :NUM_TRAIN] for k, v in data.items()}
    test = {k: v[:, NUM_TRAIN:] for k, v in data.items()}
    return train, test


RADON = BenchmarkModel(
    name="radon",
    model=model,
    load=load,
    groups=[["global_mean", "global_log_sigma"],
            ["state_mean", "state_log_sigma", "beta_u", "beta_basement"]],
    rescaled_site="state_mean",
    rescale=1000.0,
    max_plate_nesting=2,
)
