"""Small models with exact answers, shared by the test folders (and importable by a
fresh Python process, e.g. to load a pickled guide)."""

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex


def radon_like(x, y, c=1.0):
    """Radon-style rescaling: the latent is divided by c in the prior and multiplied
    back in the likelihood."""
    gm = pyro.sample("global_mean", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
    with pyro.plate("states", 4, dim=-2):
        state_mean = pyro.sample("state_mean", dist.Normal(gm / c, 2.0 / c))
        beta = pyro.sample("beta", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
        with pyro.plate("zips", 10, dim=-1):
            pyro.sample("obs", dist.Normal(c * state_mean + beta * x, 0.7), obs=y)


def radon_data(dtype):
    torch.manual_seed(1)
    x = torch.randn(4, 10, dtype=dtype)
    y = 1.0 + torch.randn(4, 1, dtype=dtype) + 0.5 * x + 0.7 * torch.randn(4, 10, dtype=dtype)
    return x, y


def normal_mean(y, prior_scale=1.0, noise=1.0):
    """z ~ Normal(0, prior_scale), y_i ~ Normal(z, noise): see :func:`normal_mean_posterior`."""
    z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=y.dtype), prior_scale))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(z, noise), obs=y)


def normal_mean_posterior(y, prior_scale=1.0, noise=1.0):
    """The exact posterior mean and sd of z in :func:`normal_mean`."""
    precision = 1 / prior_scale ** 2 + y.shape[0] / noise ** 2
    return (y.sum() / noise ** 2 / precision).item(), precision ** -0.5


def logistic_laplace(X, y):
    """Posterior mean and sds of ``beta ~ Normal(0, I)``, ``y ~ Bernoulli(logits = X
    beta)`` by its Laplace approximation (the scale benchmark's reference: Newton's
    method, exact to ~1% of an sd at thousands of rows per coefficient)."""
    from benchmarks.scale_accuracy import laplace

    return laplace(X, y)


def mixture(y):
    """Two Normal components with an exactly enumerated label per point. Priors centred
    at -2 and 2 break the label symmetry; as with Pyro's enumeration, Vindex lets the
    particle and enumeration dims broadcast."""
    locs = pyro.sample("locs", dist.Normal(torch.tensor([-2.0, 2.0]), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        c = pyro.sample("c", dist.Categorical(torch.tensor([0.5, 0.5])),
                        infer={"enumerate": "parallel"})
        pyro.sample("obs", dist.Normal(Vindex(locs)[..., c], 1.0), obs=y)
