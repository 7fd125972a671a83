"""Models with exact posteriors for the output tests, and fits shared within a module.

The autouse fixture in tests/conftest.py clears the param store before every test, so
a shared fit keeps its guide state and tests restore it with :func:`restore`.
"""

import copy
from dataclasses import dataclass
from typing import Callable, Dict

import pyro
import pyro.distributions as dist
import torch

from pyro_qem import AutoQEM, Inference

J, I = 4, 3
SD_MU, SD_THETA, SD_Y = 5.0, 2.0, 1.0


def hierarchy(y):
    """mu -> theta_j (plate groups, dim -2) -> y_ji (plate items, dim -1)."""
    mu = pyro.sample("mu", dist.Normal(0.0, SD_MU))
    with pyro.plate("groups", J, dim=-2):
        theta = pyro.sample("theta", dist.Normal(mu, SD_THETA))
        with pyro.plate("items", I, dim=-1):
            pyro.sample("y", dist.Normal(theta, SD_Y), obs=y)


def hierarchy_data(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    theta = 3.0 + SD_THETA * torch.randn(J, 1, generator=generator)
    return theta + SD_Y * torch.randn(J, I, generator=generator)


def hierarchy_posterior(y: torch.Tensor):
    """Exact Gaussian posterior of (mu, theta_1..theta_J): mean and covariance (float64)."""
    n_lat = 1 + J
    loadings = torch.zeros(n_lat + J * I, n_lat + J * I, dtype=torch.float64)
    loadings[0, 0] = SD_MU
    for j in range(J):
        loadings[1 + j, 0] = SD_MU
        loadings[1 + j, 1 + j] = SD_THETA
        for i in range(I):
            row = n_lat + j * I + i
            loadings[row] = loadings[1 + j]
            loadings[row, row] = SD_Y
    cov = loadings @ loadings.T
    s_ll, s_ly, s_yy = cov[:n_lat, :n_lat], cov[:n_lat, n_lat:], cov[n_lat:, n_lat:]
    gain = s_ly @ torch.linalg.inv(s_yy)
    return gain @ y.double().reshape(-1), s_ll - gain @ s_ly.T


@dataclass
class Fitted:
    model: Callable
    guide: AutoQEM
    inference: Inference
    state: Dict


def fit_model(model, *args, K=30, steps=200, seed=0, **guide_kwargs) -> Fitted:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = AutoQEM(model, **guide_kwargs)
    inference = Inference(model, guide, K=K, lr=0.1, average_from=steps // 2)
    for _ in range(steps):
        inference.step(*args)
    return Fitted(model, guide, inference, copy.deepcopy(pyro.get_param_store().get_state()))


def restore(fitted: Fitted, seed: int = 0) -> Inference:
    # A copy: EM updates write into the param store's tensors in place.
    pyro.get_param_store().set_state(copy.deepcopy(fitted.state))
    pyro.set_rng_seed(seed)
    return fitted.inference
