"""Exact enumeration of discrete sites (infer={"enumerate": "parallel"})."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_qem import AutoQEM, Inference
from pyro_qem.estimator import estimate

K = 4
Y = torch.tensor(1.3, dtype=torch.float64)


def model(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    z = pyro.sample("z", dist.Bernoulli(torch.tensor(0.3, dtype=torch.float64)),
                    infer={"enumerate": "parallel"})
    pyro.sample("obs", dist.Normal(mu + 2 * z, 1.0), obs=y)


def test_enumerated_site_equals_brute_force():
    guide = AutoQEM(model)
    inference = Inference(model, guide, K=K)
    run = inference.run_particles(Y)
    result = estimate(run.sites, run.structure, K)
    log_p_hat, weights = result.log_p_hat.detach(), result.weights()
    site = {r.name: r for r in run.sites}
    mu, log_q = site["mu"].value.reshape(K), site["mu"].draw.log_q.reshape(K)
    terms = torch.stack([
        dist.Normal(0.0, 1.0).log_prob(mu[k]) - log_q[k] - math.log(K)
        + torch.stack([math.log(p) + dist.Normal(mu[k] + 2 * z, 1.0).log_prob(Y)
                       for z, p in ((0, 0.7), (1, 0.3))]).logsumexp(0)
        for k in range(K)
    ])
    assert torch.allclose(log_p_hat, terms.logsumexp(0), atol=1e-12)
    # P(z = 1 | particles), by brute force over (k, z).
    joint = torch.stack([
        torch.stack([dist.Normal(0.0, 1.0).log_prob(mu[k]) - log_q[k] + math.log(p)
                     + dist.Normal(mu[k] + 2 * z, 1.0).log_prob(Y) for z, p in ((0, 0.7), (1, 0.3))])
        for k in range(K)
    ])
    post_z = (joint - joint.logsumexp((0, 1))).exp().sum(0)
    w_z = weights[guide.structure.group_of("z").index].reshape(2)
    assert torch.allclose(w_z, post_z, atol=1e-12)
    assert "z" not in guide.distributions()


def test_enumerated_site_cannot_be_grouped():
    guide = AutoQEM(model, groups=[["mu", "z"]])
    with pytest.raises(ValueError, match="site 'z' is enumerated exactly"):
        guide.setup(Y)


def test_enumeration_needs_finite_support():
    def bad(y):
        lam = pyro.sample("lam", dist.Poisson(3.0), infer={"enumerate": "parallel"})
        pyro.sample("obs", dist.Normal(lam, 1.0), obs=y)

    with pytest.raises(ValueError, match="Site 'lam' asks for enumeration"):
        AutoQEM(bad).setup(Y)


def test_sequential_enumeration_is_refused():
    def bad(y):
        z = pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "sequential"})
        pyro.sample("obs", dist.Normal(z, 1.0), obs=y)

    with pytest.raises(NotImplementedError, match="enumerates only in parallel"):
        AutoQEM(bad).setup(Y)
