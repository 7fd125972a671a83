"""Every output on a model with indexed groups (rows reading ``a[..., county]``)."""

import math
import warnings

import pytest
import torch

from pyro_qem import (AutoQEM, Inference, diagnose, posterior_moments, predictive_log_likelihood,
                      sample_posterior, to_inference_data)
from tests.infer.test_indexed_fit import C, data, exact_posterior, model


@pytest.fixture(scope="module")
def fitted():
    x, county, y = data()
    train = county != 3                    # county 3's houses are held out entirely
    guide = AutoQEM(model)
    inference = Inference(model, guide, K=30, lr=0.1, average_from=150)
    for _ in range(300):
        inference.step(x[train], county[train], y[train])
    return inference, (x, county, y), train


def test_held_out_rows_of_an_unseen_county_score_like_the_exact_posterior(fitted):
    """Held-out log pointwise predictive density of county 3's houses: from 2000 joint
    draws against the same score from 4000 draws of the exact Gaussian posterior (the
    Monte Carlo error of either is ~0.05 nats here)."""
    inference, (x, county, y), train = fitted
    test = ~train
    draws = sample_posterior(inference, x[train], county[train], y[train], num_samples=1000)
    score = predictive_log_likelihood(model, draws, x[test], county[test], y[test], pointwise=True)
    mean, sd = exact_posterior(x[train], county[train], y[train])
    cov = torch.diag(sd ** 2)  # marginals suffice: each held-out row reads one a_c and b
    exact = torch.distributions.MultivariateNormal(mean, cov).sample((4000,))
    exact_draws = {"mu": exact[:, 0], "a": exact[:, 1:1 + C], "b": exact[:, -1]}
    reference = predictive_log_likelihood(model, exact_draws, x[test], county[test], y[test],
                                          pointwise=True)
    assert math.isfinite(score) and abs(score - reference) < 0.5


def test_moments_inference_data_and_diagnostics(fitted):
    inference, (x, county, y), train = fitted
    args = (x[train], county[train], y[train])
    moments = posterior_moments(inference, *args, num_runs=5)
    assert moments["a"].shape == (C,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = to_inference_data(inference, *args, num_samples=100,
                                  coords={"county": [f"c{i}" for i in range(C)]})
        report = diagnose(inference, *args)
    assert idata.posterior["a"].dims == ("chain", "draw", "county")
    assert list(idata.posterior["a"].coords["county"].values) == [f"c{i}" for i in range(C)]
    assert "y" in idata.log_likelihood
    assert report.ess["a"].shape == (C,) and (report.ess["a"] >= 1).all()
