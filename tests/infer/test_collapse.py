"""The collapse warning: K = 2 with lr = 1 shrinks a moment-matched q to a point; a
sound fit is quiet; update="auto" refits such a group by regression instead."""

import warnings

import pyro
import pytest
import torch

from pyro_qem import AutoQEM, Inference, QEMCollapseWarning
from tests.helpers.models import normal_mean, normal_mean_posterior


@pytest.mark.parametrize("seed", range(3))
def test_two_particles_at_lr_one_warn_that_q_collapses(seed):
    pyro.set_rng_seed(seed)
    y = 0.8 + torch.randn(20, dtype=torch.float64)
    guide = AutoQEM(normal_mean)
    inference = Inference(normal_mean, guide, K=2, lr=1.0, update="moments")
    # z's q is a Normal, which update="auto" could refit: the warning says so.
    with pytest.warns(QEMCollapseWarning, match=r"Sites \['z'\].*K = 2.*update='auto'"):
        for _ in range(150):
            inference.step(y)
    # The warning is right: q ended far narrower than the exact posterior.
    _, sd = normal_mean_posterior(y)
    assert guide.distributions(averaged=False)["z"].stddev.item() < 0.5 * sd


@pytest.mark.parametrize("seed", range(3))
def test_update_auto_refits_the_degenerate_group_by_regression_instead(seed):
    """Same fit with ``update="auto"``: two particles' weights have an ESS near 1, so
    the group is refitted by the score step (infer.update_choice), which needs no ESS.
    Its log joint is quadratic in z, where Stein's identity is exact from any K, so q
    lands on the exact posterior (1e-4 sd: the smoothed steps' remainder), quietly."""
    pyro.set_rng_seed(seed)
    y = 0.8 + torch.randn(20, dtype=torch.float64)
    guide = AutoQEM(normal_mean)
    inference = Inference(normal_mean, guide, K=2, lr=1.0, update="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error", QEMCollapseWarning)
        for _ in range(150):
            inference.step(y)
    mean, sd = normal_mean_posterior(y)
    q = guide.distributions(averaged=False)["z"]
    assert abs(q.mean.item() - mean) < 1e-4 * sd
    assert abs(q.stddev.item() / sd - 1) < 1e-4


def test_a_sound_fit_does_not_warn():
    y = 0.8 + torch.randn(20, dtype=torch.float64)
    inference = Inference(normal_mean, AutoQEM(normal_mean), K=30, lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", QEMCollapseWarning)
        for _ in range(200):
            inference.step(y)


def test_a_wide_start_shrinking_onto_a_narrow_posterior_does_not_warn():
    """ESS near 1 while q shrinks by a factor ~100 (prior sd 100, 2000 points): the loss
    falls all the while, so this is not a collapse."""
    y = 0.8 + torch.randn(2000, dtype=torch.float64)

    def wide(y):
        normal_mean(y, prior_scale=100.0)

    inference = Inference(wide, AutoQEM(wide), K=10, lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", QEMCollapseWarning)
        for _ in range(150):
            inference.step(y)


def test_minibatch_steps_of_sites_outside_the_subsampled_plate_do_not_warn():
    """Weights sharpened by N / B and a loss that changes with every minibatch are not a
    collapse: those sites' spread comes out too wide (SubsampleWarning says so)."""
    pyro.set_rng_seed(0)
    x = torch.randn(5000, 4, dtype=torch.float64)
    y = torch.bernoulli(torch.sigmoid(x @ torch.tensor([1.0, -0.5, 0.3, 0.0], dtype=torch.float64)))

    def logistic(x, y):
        beta = pyro.sample("beta", pyro.distributions.Normal(
            torch.zeros(4, dtype=torch.float64), 1.0).to_event(1))
        with pyro.plate("data", len(y), subsample_size=50) as rows:
            pyro.sample("y", pyro.distributions.Bernoulli(logits=(x[rows] * beta).sum(-1)),
                        obs=y[rows])

    inference = Inference(logistic, AutoQEM(logistic), K=10, lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SubsampleWarning
        warnings.simplefilter("error", QEMCollapseWarning)
        for _ in range(200):
            inference.step(x, y)
