"""Models with discrete latents: a two-component mixture (assignments enumerated) and
an occupancy model (presence enumerated or sampled), against grid posteriors."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_qem import AutoQEM, Inference
from tests.helpers.models import mixture

N_MIX = 40




def grid_moments(log_density, axes):
    """Posterior means and sds of each axis from a log density on a product grid."""
    w = (log_density - log_density.logsumexp(tuple(range(log_density.dim())))).exp()
    out = []
    for i, axis in enumerate(axes):
        marginal = w.sum(tuple(j for j in range(w.dim()) if j != i))
        mean = (marginal * axis).sum()
        out.append((mean, ((marginal * (axis - mean) ** 2).sum()).sqrt()))
    return out


def mixture_exact(y):
    grid = torch.linspace(-5, 5, 801, dtype=torch.float64)
    a, b = grid[:, None, None], grid[None, :, None]
    yy = y.double()
    log_lik = torch.logaddexp(dist.Normal(a, 1.0).log_prob(yy), dist.Normal(b, 1.0).log_prob(yy))
    log_post = (dist.Normal(-2.0, 1.0).log_prob(grid)[:, None] + dist.Normal(2.0, 1.0).log_prob(grid)
                + log_lik.sum(-1))
    return grid_moments(log_post, [grid, grid])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_mixture_with_enumerated_assignments(seed):
    torch.manual_seed(seed)
    c = torch.randint(0, 2, (N_MIX,))
    y = torch.where(c == 0, -1.5, 1.0) + torch.randn(N_MIX)
    pyro.set_rng_seed(seed)
    guide = AutoQEM(mixture)
    inference = Inference(mixture, guide, K=30, lr=0.1, average_from=150)
    for _ in range(300):
        inference.step(y)
    q = guide.distributions()["locs"]
    for i, (mean, sd) in enumerate(mixture_exact(y)):
        # Averaged over 150 steps the Monte Carlo error is ~0.02 sd / ~2%.
        assert abs(q.mean[i] - mean) < 0.05 * sd, (i, q.mean[i], mean, sd)
        assert abs(q.stddev[i] / sd - 1) < 0.05, (i, q.stddev[i], sd)


SITES, VISITS = 30, 4


def occupancy(detections, enumerate_presence):
    psi = pyro.sample("psi", dist.Beta(1.0, 1.0))
    p = pyro.sample("p", dist.Beta(1.0, 1.0))
    infer = {"enumerate": "parallel"} if enumerate_presence else {}
    with pyro.plate("sites", SITES, dim=-2):
        z = pyro.sample("z", dist.Bernoulli(psi), infer=infer)
        with pyro.plate("visits", VISITS, dim=-1):
            pyro.sample("y", dist.Bernoulli(z * p), obs=detections)


def occupancy_exact(detections):
    grid = torch.linspace(0.0005, 0.9995, 1000, dtype=torch.float64)
    psi, p = grid[:, None, None], grid[None, :, None]
    d = detections.sum(-1).double().reshape(-1)
    site_lik = psi * p ** d * (1 - p) ** (VISITS - d) + (1 - psi) * (d == 0)
    return grid_moments(site_lik.log().sum(-1), [grid, grid])


@pytest.mark.slow
@pytest.mark.parametrize("enumerate_presence", [True, False])
def test_occupancy_model(enumerate_presence):
    torch.manual_seed(3)
    z = (torch.rand(SITES, 1) < 0.6).float()
    detections = ((torch.rand(SITES, VISITS) < 0.5) * z).float()
    pyro.set_rng_seed(3)
    guide = AutoQEM(occupancy)
    inference = Inference(occupancy, guide, K=30, lr=0.1, average_from=200)
    for _ in range(400):
        inference.step(detections, enumerate_presence)
    q = guide.distributions()
    for name, (mean, sd) in zip(("psi", "p"), occupancy_exact(detections)):
        assert abs(q[name].mean - mean) < 0.05 * sd, (name, q[name].mean, mean, sd)
        assert abs(q[name].stddev / sd - 1) < 0.05, (name, q[name].stddev, sd)
    if not enumerate_presence:
        # Sites with a detection are occupied: their q puts (almost) all mass on 1.
        detected = detections.sum(-1) > 0
        assert (q["z"].probs.reshape(-1)[detected] > 0.99).all()
