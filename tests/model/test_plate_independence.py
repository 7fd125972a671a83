"""Set-up refuses models whose plate elements read other elements of their own plate
(QEM fitted them 1-12 posterior sds off without a word), and accepts the ordinary
shapes: elementwise reads, nested and crossed plates, rows reading one group's latent
through an index."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_qem import AutoQEM, Inference

C = 4
COUNTY = torch.tensor([0, 0, 1, 2, 2, 3, 3, 3])
Y = torch.linspace(-1.0, 2.0, len(COUNTY))
Y_C = torch.tensor([0.5, -0.2, 1.0, 0.3])


def centred_in_plate(y):
    with pyro.plate("county", C):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(a - a.mean(-1, keepdim=True), 0.5), obs=y)


def random_walk_in_plate(y):
    with pyro.plate("t", C):
        eps = pyro.sample("eps", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(eps.cumsum(-1), 0.5), obs=y)


def shifted_in_plate(y):
    with pyro.plate("t", C):
        eps = pyro.sample("eps", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(eps.roll(1, -1), 0.5), obs=y)


NEIGHBOUR = torch.tensor([1, 2, 3, 0])


def neighbour_latent(y):
    with pyro.plate("county", C):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        c = pyro.sample("c", dist.Normal(a[..., NEIGHBOUR], 0.5))
        pyro.sample("y", dist.Normal(c, 0.5), obs=y)


def rows_read_a_centred_copy(y):
    with pyro.plate("county", C):
        a = pyro.sample("a", dist.Normal(1.0, 1.0))
    centred = a - a.mean(-1, keepdim=True)
    with pyro.plate("rows", len(COUNTY)):
        pyro.sample("y", dist.Normal(centred[..., COUNTY], 0.5), obs=y)


@pytest.mark.parametrize("model, data, reader, latent, plate", [
    (centred_in_plate, Y_C, "y", "a", "county"),
    (random_walk_in_plate, Y_C, "y", "eps", "t"),
    (shifted_in_plate, Y_C, "y", "eps", "t"),
    (neighbour_latent, Y_C, "c", "a", "county"),
], ids=["mean", "cumsum", "roll", "lookup"])
def test_a_site_reading_other_elements_of_its_plate_is_refused(model, data, reader, latent, plate):
    guide = AutoQEM(model)
    message = (rf"Site '{reader}' at element \d+ of pyro.plate\('{plate}'\) depends on latent "
               rf"site '{latent}' at other elements of that plate.*conditionally independent")
    with pytest.raises(ValueError, match=message):
        Inference(model, guide, K=5).step(data)


def test_rows_reading_several_groups_latents_are_refused():
    guide = AutoQEM(rows_read_a_centred_copy)
    with pytest.raises(ValueError, match=r"Site 'y' at one of its elements depends on latent "
                                         r"site 'a' at several elements of pyro.plate\('county'\)"):
        Inference(rows_read_a_centred_copy, guide, K=5).step(Y)


def grid(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("county", C, dim=-2):
        a = pyro.sample("a", dist.Normal(mu, sigma))
        with pyro.plate("month", 3, dim=-1):
            b = pyro.sample("b", dist.Normal(a, 0.3))
            pyro.sample("y", dist.Normal(b.exp().log() * 2.0, 0.5), obs=y)
    # A global read of the whole plate is the model's business outside the plate.
    pyro.deterministic("total", a.sum((-2, -1)), event_dim=0)


def ragged(y, county):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("county", C):
        a = pyro.sample("a", dist.Normal(mu, 1.0))
    with pyro.plate("rows", len(county)):
        z = pyro.sample("z", dist.Normal(a[..., county], 0.3))
        pyro.sample("y", dist.Normal(z, 0.5), obs=y)


@pytest.mark.parametrize("model, args", [
    (grid, (torch.zeros(C, 3),)),
    (ragged, (Y, COUNTY)),
], ids=["nested plates", "indexed rows"])
def test_elementwise_models_are_accepted(model, args):
    pyro.set_rng_seed(0)
    inference = Inference(model, AutoQEM(model), K=5)
    assert np.isfinite(inference.step(*args))


def test_a_small_integer_index_reads_like_a_long_one():
    """pandas category codes are int8 numpy arrays, which torch indexes with: the
    estimator's scatter-adds need int64 (it failed with torch's dtype error)."""
    losses = []
    for index in (COUNTY, COUNTY.numpy().astype(np.int8), COUNTY.numpy().astype(np.int16)):
        pyro.set_rng_seed(0)
        pyro.clear_param_store()
        inference = Inference(ragged, AutoQEM(ragged), K=5)
        losses.append([inference.step(Y, index) for _ in range(3)])
    assert losses[1] == pytest.approx(losses[0], abs=1e-6)
    assert losses[2] == pytest.approx(losses[0], abs=1e-6)


def lkj_per_group(y, roll=False):
    with pyro.plate("g", 3):
        L = pyro.sample("L", dist.LKJCholesky(3, concentration=2.0))
        tril = L.roll(1, 0) if roll else L
        pyro.sample("y", dist.MultivariateNormal(torch.zeros(3), scale_tril=tril), obs=y)


def test_a_latent_whose_unconstrained_space_has_fewer_dims_is_moved_per_element():
    """A Cholesky factor's unconstrained space is a vector: the elements to move are
    picked on the value's own dims (picked on the unconstrained ones, the check moved a
    column of every group's factor: a plate of 3 groups of 3 x 3 factors was refused,
    and a factor rolled over the plate passed)."""
    y = torch.randn(3, 3)
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(False):
        assert np.isfinite(Inference(lkj_per_group, AutoQEM(lkj_per_group), K=5).step(y))
    with pytest.raises(ValueError, match=r"Site 'y' at element \d of pyro.plate\('g'\) depends "
                                         r"on latent site 'L' at other elements"):
        Inference(lambda y: lkj_per_group(y, roll=True), AutoQEM(lambda y: lkj_per_group(y, roll=True)),
                  K=5).step(y)


def test_a_model_that_replays_differently_is_not_blamed_for_cross_element_reads():
    """Dropout in train mode changes every replay: the check cannot tell a moved
    latent's effect from the model's own noise, so it stays quiet (it reported that
    every element read the others)."""
    dropout = torch.nn.Dropout(0.5)

    def noisy(y):
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(dropout(z.unsqueeze(-1)).squeeze(-1), 1.0), obs=y)

    from pyro_qem.model.plate_independence import check_plate_independence
    y = torch.randn(8)
    trace = pyro.poutine.trace(noisy).get_trace(y)
    check_plate_independence(noisy, (y,), {}, trace)


def test_coefficients_in_a_plate_of_features_are_refused_with_the_vector_form():
    """Each row reads every coefficient: it failed with a shape error from deep inside
    (the particle dims of the features plate did not broadcast with the rows)."""
    X = torch.randn(12, 3)

    def regression(y):
        with pyro.plate("features", 3):
            beta = pyro.sample("beta", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 12):
            pyro.sample("y", dist.Normal((X * beta).sum(-1), 1.0), obs=y)

    with pytest.raises(ValueError, match=r"Site 'y' at one of its elements depends on latent site "
                                         r"'beta' at several elements.*expand\(\[P\]\).to_event\(1\)"):
        Inference(regression, AutoQEM(regression), K=5).step(torch.zeros(12))
