"""init_scale and init_loc_fn are checked when the guide is made: a zero scale would
freeze q (every particle equal), a negative one was silently flipped."""

import math

import pytest
import torch

from pyro_qem import AutoQEM, Inference
from tests.helpers.models import normal_mean, normal_mean_posterior


@pytest.mark.parametrize("scale, error", [
    (0.0, ValueError), (-1.0, ValueError), (math.nan, ValueError), (math.inf, ValueError),
    ("wide", TypeError), (None, None),
])
def test_init_scale_must_be_positive_and_finite(scale, error):
    if error is None:
        AutoQEM(normal_mean, init_scale=scale)
        return
    with pytest.raises(error, match="init_scale"):
        AutoQEM(normal_mean, init_scale=scale)


def test_a_bad_per_site_scale_names_the_site():
    with pytest.raises(ValueError, match=r"init_scale\['z'\]"):
        AutoQEM(normal_mean, init_scale={"z": 0.0})


def test_init_loc_fn_must_be_callable():
    with pytest.raises(TypeError, match="init_loc_fn"):
        AutoQEM(normal_mean, init_loc_fn=0.5)


def test_a_small_positive_scale_still_reaches_the_posterior():
    """init_scale=1e-3 starts q 1000x narrower than the prior; the fit must still move
    (the old failure: init_scale=0 left mu at its start for good)."""
    y = torch.tensor([0.9, 1.4, 0.2, 1.1, 0.6, 1.7], dtype=torch.float64)
    guide = AutoQEM(normal_mean, init_scale=1e-3)
    inference = Inference(normal_mean, guide, K=30, lr=0.1, average_from=200)
    for _ in range(400):
        inference.step(y)
    mean, sd = normal_mean_posterior(y)
    assert abs(guide.distributions()["z"].mean.item() - mean) < 0.3 * sd
