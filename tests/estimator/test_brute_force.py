"""The plated contraction and its source-term marginals against brute-force enumeration
over every combination of particle indices (K = 3, tiny models)."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_qem import AutoQEM, Inference
from pyro_qem.estimator import estimate as contract

K = 3
Y = torch.tensor([0.7, -1.3], dtype=torch.float64)


def hierarchy(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 2.0))
    with pyro.plate("items", 2):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.sample("obs", dist.Normal(theta, 0.5), obs=y)


def estimate(model, guide, *args):
    inference = Inference(model, guide, K=K)
    run = inference.run_particles(*args)
    result = contract(run.sites, run.structure, K)
    weights = result.weights()
    values = {r.name: r.value for r in run.sites if not r.is_observed}
    log_q = {r.name: r.draw.log_q for r in run.sites if not r.is_observed}
    return result.log_p_hat.detach(), weights, values, log_q


def brute_force_hierarchy(values, log_q, y):
    """Sum over all K^(1 + 2) index combinations (k_mu, k_theta1, k_theta2)."""
    mu, theta = values["mu"].reshape(K), values["theta"].reshape(K, 2)
    lq_mu, lq_theta = log_q["mu"].reshape(K), log_q["theta"].reshape(K, 2)
    terms, index = [], []
    for a, b1, b2 in itertools.product(range(K), repeat=3):
        lw = dist.Normal(0.0, 2.0).log_prob(mu[a]) - lq_mu[a]
        for i, b in enumerate((b1, b2)):
            lw = lw + dist.Normal(mu[a], 1.0).log_prob(theta[b, i]) - lq_theta[b, i]
            lw = lw + dist.Normal(theta[b, i], 0.5).log_prob(y[i])
        terms.append(lw - 3 * math.log(K))
        index.append((a, b1, b2))
    terms = torch.stack(terms)
    post = (terms - terms.logsumexp(0)).exp()
    w_mu = torch.zeros(K, dtype=post.dtype)
    w_theta = torch.zeros(K, 2, dtype=post.dtype)
    for p, (a, b1, b2) in zip(post, index):
        w_mu[a] += p
        w_theta[b1, 0] += p
        w_theta[b2, 1] += p
    return terms.logsumexp(0), w_mu, w_theta


def test_log_p_hat_and_marginals_match_brute_force():
    guide = AutoQEM(hierarchy)
    log_p_hat, weights, values, log_q = estimate(hierarchy, guide, Y)
    exact, w_mu, w_theta = brute_force_hierarchy(values, log_q, Y)
    assert torch.allclose(log_p_hat, exact, atol=1e-12)
    structure = guide.structure
    mu_w = weights[structure.group_of("mu").index].reshape(K)
    theta_w = weights[structure.group_of("theta").index].reshape(K, 2)
    assert torch.allclose(mu_w, w_mu, atol=1e-12)
    assert torch.allclose(theta_w, w_theta, atol=1e-12)


def test_reducing_the_plate_before_the_particles_is_wrong_and_we_do_not():
    """Summing over the plate first (theta's particle index shared by all elements)
    gives a different number; the plated contraction gives the brute-force one."""
    guide = AutoQEM(hierarchy)
    log_p_hat, _, values, log_q = estimate(hierarchy, guide, Y)
    mu, theta = values["mu"].reshape(K, 1, 1), values["theta"].reshape(1, K, 2)
    lq_mu, lq_theta = log_q["mu"].reshape(K, 1), log_q["theta"].reshape(1, K, 2)
    per_element = (dist.Normal(mu, 1.0).log_prob(theta) - lq_theta
                   + dist.Normal(theta, 0.5).log_prob(Y) - math.log(K))
    wrong = (dist.Normal(0.0, 2.0).log_prob(mu.reshape(K, 1)) - lq_mu - math.log(K)
             + per_element.sum(-1)).logsumexp((0, 1))
    exact, _, _ = brute_force_hierarchy(values, log_q, Y)
    assert abs(wrong - exact) > 1e-3
    assert torch.allclose(log_p_hat, exact, atol=1e-12)


def grouped(y):
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    b = pyro.sample("b", dist.Normal(a, 1.0))
    pyro.sample("obs", dist.Normal(a + b, 1.0), obs=y)


def brute_force_grouped(values, log_q, y, shared):
    a, b = values["a"].reshape(K), values["b"].reshape(K)
    la, lb = log_q["a"].reshape(K), log_q["b"].reshape(K)
    pairs = [(k, k) for k in range(K)] if shared else list(itertools.product(range(K), repeat=2))
    terms = torch.stack([
        dist.Normal(0.0, 1.0).log_prob(a[i]) - la[i] + dist.Normal(a[i], 1.0).log_prob(b[j]) - lb[j]
        + dist.Normal(a[i] + b[j], 1.0).log_prob(y) for i, j in pairs
    ])
    return terms.logsumexp(0) - math.log(len(pairs))


@pytest.mark.parametrize("shared", [False, True])
def test_groups_match_brute_force(shared):
    y = torch.tensor(1.5, dtype=torch.float64)
    guide = AutoQEM(grouped, groups=[["a", "b"]] if shared else None)
    log_p_hat, weights, values, log_q = estimate(grouped, guide, y)
    assert torch.allclose(log_p_hat, brute_force_grouped(values, log_q, y, shared), atol=1e-12)
    for w in weights.values():
        assert torch.allclose(w.sum(0), torch.ones((), dtype=w.dtype))


@pytest.mark.parametrize("shared", [False, True])
def test_groups_keep_p_hat_unbiased(shared):
    """E[P_hat] = p(y) with or without groups. Exact p(y): y ~ N(0, 1 + 4 + 1)... here
    a ~ N(0,1), b | a ~ N(a, 1), y | a, b ~ N(a + b, 1), so a + b = 2a + e has var 5 and
    y has var 6. Tolerance: 4 standard errors of the mean of the ratios."""
    y = torch.tensor(1.5, dtype=torch.float64)
    exact = dist.Normal(0.0, math.sqrt(6.0)).log_prob(y)
    guide = AutoQEM(grouped, groups=[["a", "b"]] if shared else None)
    inference = Inference(grouped, guide, K=K)
    ratios = torch.tensor([math.exp(-inference.evaluate_loss(y) - exact) for _ in range(3000)])
    assert abs(ratios.mean() - 1) < 4 * ratios.std() / math.sqrt(len(ratios))
