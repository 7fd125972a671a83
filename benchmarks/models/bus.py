"""bus_breakdown: delays of NYC school buses, years x boroughs x bus IDs (split 0)."""

from __future__ import annotations

from typing import Tuple

import pyro
import pyro.distributions as dist

from .base import BenchmarkModel, Data, as_tensors, bundled, linear, std_normal

SPLIT = 0


def model(data: Data, c: float = 1.0) -> None:
    """Hierarchical logistic regression; ``alpha`` is divided by ``c`` (and multiplied
    back in the likelihood) in the rescaled variant."""
    run_type, company, delay = data["run_type"], data["company"], data["delay"]
    years, boroughs, ids, width_r = run_type.shape
    psi = pyro.sample("psi", std_normal(delay, (width_r,)).to_event(1))
    phi = pyro.sample("phi", std_normal(delay, (company.shape[-1],)).to_event(1))
    sigma_beta = pyro.sample("sigma_beta", std_normal(delay))
    mu_beta = pyro.sample("mu_beta", std_normal(delay))
    with pyro.plate("year", years, dim=-3):
        beta = pyro.sample("beta", dist.Normal(mu_beta, sigma_beta.exp()))
        sigma_alpha = pyro.sample("sigma_alpha", std_normal(delay))
        with pyro.plate("borough", boroughs, dim=-2):
            alpha = pyro.sample("alpha", dist.Normal(beta / c, sigma_alpha.exp() / c))
            with pyro.plate("id", ids, dim=-1):
                logits = c * alpha + linear(company, phi) + linear(run_type, psi)
                pyro.sample("delay", dist.Bernoulli(logits=logits), obs=delay)


def load(device: str = "cpu") -> Tuple[Data, Data]:
    """Train and test data of split 0: (2, 3, 150) delays and their one-hot covariates."""
    arrays = bundled("bus_breakdown")

    def part(kind: str) -> Data:
        return as_tensors({
            "delay": arrays[f"delay_{kind}_{SPLIT}"],
            "run_type": arrays[f"run_type_{kind}_{SPLIT}"],
            "company": arrays[f"bus_company_name_{kind}_{SPLIT}"],
        }, device)

    return part("train"), part("test")


BUS = BenchmarkModel(
    name="bus",
    model=model,
    load=load,
    groups=[["psi", "phi", "sigma_beta", "mu_beta"], ["beta", "sigma_alpha"]],
    rescaled_site="alpha",
    rescale=1000.0,
    max_plate_nesting=3,
)
