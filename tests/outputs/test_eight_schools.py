"""Non-centred eight schools: joint draws of theta = mu + tau * z have the exact
(centred-model) posterior spread; independent draws of the mean-field q are too wide."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_qem import AutoQEM, Inference
from pyro_qem.outputs import sample_guide, sample_posterior

Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def non_centred(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", 8):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu + tau * z, SIGMA), obs=y)


def exact_theta_moments():
    """Posterior mean and sd of theta by quadrature over tau: given tau the model is
    linear-Gaussian (theta_j ~ N(mu, tau), mu ~ N(0, 5))."""
    y, s = Y.double(), SIGMA.double()
    tau = torch.linspace(1e-4, 100.0, 50001, dtype=torch.float64)[:, None]
    var = s ** 2 + tau ** 2
    marginal = dist.MultivariateNormal(torch.zeros(8, dtype=torch.float64),
                                       torch.diag_embed(var) + 25.0)
    prior = dist.HalfCauchy(torch.tensor(5.0, dtype=torch.float64))
    log_w = marginal.log_prob(y) + prior.log_prob(tau[:, 0])
    w = torch.softmax(log_w, 0)[:, None]
    v_mu = 1 / (1 / 25.0 + (1 / var).sum(-1, keepdim=True))
    m_mu = v_mu * (y / var).sum(-1, keepdim=True)
    v_j = 1 / (1 / s ** 2 + 1 / tau ** 2)
    m_j = v_j * (y / s ** 2 + m_mu / tau ** 2)
    var_j = v_j + (v_j / tau ** 2) ** 2 * v_mu
    mean = (w * m_j).sum(0)
    return mean, ((w * (var_j + m_j ** 2)).sum(0) - mean ** 2).sqrt()


@pytest.mark.slow
def test_joint_draws_respect_coupling_mean_field_draws_do_not():
    pyro.set_rng_seed(0)
    guide = AutoQEM(non_centred, groups=[["mu", "tau"]])
    inference = Inference(non_centred, guide, K=30, lr=0.1, average_from=100)
    for _ in range(200):
        inference.step(Y)
    mean, sd = exact_theta_moments()
    # ~30 draws per particle set, worth ~450-530 independent ones (seeds 0-2): the
    # tolerances below are those of 400 independent draws.
    joint = sample_posterior(inference, Y, num_samples=1000)
    assert joint.effective_draws >= 400
    independent = sample_guide(guide, 20000)
    ratio = {}
    for name, d in (("joint", joint), ("mean-field", independent)):
        theta = (d["mu"][:, None] + d["tau"][:, None] * d["z"]).double()
        ratio[name] = (theta.std(0) / sd).mean().item()
        if name == "joint":
            # Mean error in posterior sds: SE 1/sqrt(400) = 0.05 per school, 4 SEs.
            assert ((theta.mean(0) - mean) / sd).abs().max() < 0.2
    # The sd ratio averaged over schools: SE of each ~ 1/sqrt(2 * 400) = 0.035 (the 8
    # are correlated, so the average is barely better). Measured over seeds 0-2: joint
    # 0.97-1.04, mean-field 1.13-1.15 (method.md measured 1.25 with another fit).
    assert abs(ratio["joint"] - 1) < 0.07, ratio
    assert ratio["mean-field"] > 1.1, ratio
