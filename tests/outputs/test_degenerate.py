"""Outputs warn when the weights behind them are degenerate
(pyro_qem.outputs.degenerate)."""

import warnings

import pyro
import pytest
import torch

from pyro_qem import AutoQEM, Inference, QEMDiagnosticWarning, posterior_moments, sample_posterior
from tests.helpers.models import normal_mean


def fitted(y, K, steps, lr=0.1, seed=0):
    pyro.set_rng_seed(seed)
    guide = AutoQEM(normal_mean)
    inference = Inference(normal_mean, guide, K=K, lr=lr)
    for _ in range(steps):
        inference.step(y)
    return inference


@pytest.mark.parametrize("output", [sample_posterior, posterior_moments])
def test_an_unconverged_fit_warns_that_one_particle_carries_the_weight(output):
    """After one step, q of the mean of 1e5 Normal rows is still about as wide as its
    start (sd ~1 against the posterior's 0.003): the likelihood picks one of the K = 10
    particles (the second best is ~(0.1 / 0.003)^2 / 2 ~ 500 nats behind, on
    average), so the ESS is 1 to many digits and the draws or moments are q's."""
    y = 2.0 + torch.randn(100_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    inference = fitted(y, K=10, steps=1)
    with pytest.warns(QEMDiagnosticWarning, match=r"\['z'\] have an effective sample size of 1\.00 of K = 10"):
        output(inference, y)


@pytest.mark.parametrize("K", [2, 10])
def test_a_converged_fit_is_quiet(K):
    """20 rows, 300 steps at lr = 0.1: q is the conjugate posterior, whose own particles
    weigh about equally (ESS near K; at K = 2 above 1 + 1/4, the floor for two)."""
    y = 0.5 + torch.randn(20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    inference = fitted(y, K=K, steps=300)
    with warnings.catch_warnings():
        warnings.simplefilter("error", QEMDiagnosticWarning)
        sample_posterior(inference, y, num_samples=200)
        posterior_moments(inference, y)

