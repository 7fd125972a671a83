"""Rows that read a value computed elementwise from a group latent (the non-centred
``a = mu + sigma * a_raw``, written by hand or by Pyro's ``LocScaleReparam``) are folded
into the group like rows reading the latent itself: log P_hat against brute-force
enumeration over every combination of particle indices (float64, K = 3)."""

import functools
import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.reparam import LocScaleReparam

from pyro_qem import AutoQEM, Inference
from pyro_qem.estimator import estimate
from pyro_qem.handlers.index_probe import IndexedValue, IndexProbe

K, C = 3, 3
COUNTY = torch.tensor([0, 0, 1, 2, 1])
Y = torch.tensor([0.7, -1.3, 0.2, 1.5, 0.9], dtype=torch.float64)
ONE = torch.tensor(1.0, dtype=torch.float64)


def by_hand(y, county):
    mu = pyro.sample("mu", dist.Normal(0.0 * ONE, 2.0))
    with pyro.plate("county", C):
        a_raw = pyro.sample("a_raw", dist.Normal(0.0 * ONE, 1.0))
    a = mu + 1.0 * a_raw
    with pyro.plate("house", len(y)):
        pyro.sample("y", dist.Normal(a[..., county], 0.5), obs=y)


def centred(y, county):
    mu = pyro.sample("mu", dist.Normal(0.0 * ONE, 2.0))
    with pyro.plate("county", C):
        a = pyro.sample("a_raw", dist.Normal(mu, ONE))
    with pyro.plate("house", len(y)):
        pyro.sample("y", dist.Normal(a[..., county], 0.5), obs=y)


reparameterised = pyro.poutine.reparam(centred, config={"a_raw": LocScaleReparam(0.0)})


@pytest.mark.parametrize("model, latent", [(by_hand, "a_raw"), (reparameterised, "a_raw_decentered")])
def test_non_centred_rows_fold_into_their_group_exactly(model, latent):
    pyro.set_rng_seed(0)
    inference = Inference(model, AutoQEM(model), K=K)
    run = inference.run_particles(Y, COUNTY)
    assert run.structure.links == {"house": "county"}
    assert run.structure.indexed_sites == {latent}
    result = estimate(run.sites, run.structure, K, links=run.links)
    records = run.latent
    mu = records["mu"].value.detach().reshape(K)
    raw = records[latent].value.detach().reshape(K, C)
    lq_mu = records["mu"].draw.log_q.detach().reshape(K)
    lq_raw = records[latent].draw.log_q.detach().reshape(K, C)
    terms = []
    for k_mu, *k in itertools.product(range(K), repeat=1 + C):
        lw = dist.Normal(0.0 * ONE, 2.0).log_prob(mu[k_mu]) - lq_mu[k_mu] - math.log(K)
        for c in range(C):
            lw = lw + dist.Normal(0.0 * ONE, 1.0).log_prob(raw[k[c], c]) - lq_raw[k[c], c] - math.log(K)
        for n, c in enumerate(COUNTY.tolist()):
            lw = lw + dist.Normal(mu[k_mu] + raw[k[c], c], 0.5).log_prob(Y[n])
        terms.append(lw)
    assert result.log_p_hat.item() == pytest.approx(torch.stack(terms).logsumexp(0).item(), abs=1e-10)


def wrapped(value):
    out = value.as_subclass(IndexedValue)
    out._qem_site, out._qem_plates, out._qem_event_ndim, out._qem_uses = "a", {-1: "c"}, 0, []
    return out


def test_only_elementwise_operations_keep_the_record():
    a = wrapped(torch.arange(4.0))
    assert isinstance(2.0 * a.exp() + 1.0, IndexedValue)
    assert isinstance(torch.where(a > 1, a, -a), IndexedValue)
    # Anything that moves or mixes elements is a plain tensor: an index applied to it
    # says nothing about which element of the plate a row reads.
    for derived in (a.flip(-1), a.cumsum(-1), a.sum(-1, keepdim=True), a.unsqueeze(0), a.roll(1)):
        assert type(derived) is torch.Tensor
    # A dim added or dropped right of the plate dim moves it by one; a batched matrix
    # product keeps it in place.
    z = wrapped(torch.ones(4, 2))  # a vector latent: plate dim -2, one event dim
    z._qem_plates, z._qem_event_ndim = {-2: "c"}, 1
    column = z.unsqueeze(-1)
    assert isinstance(column, IndexedValue) and column._qem_plates == {-3: "c"}
    product = torch.eye(2) @ column
    assert isinstance(product, IndexedValue) and product._qem_plates == {-3: "c"}
    back = product.squeeze(-1)
    assert isinstance(back, IndexedValue) and back._qem_plates == {-2: "c"}
    assert back._qem_event_ndim == 1
    # The plate dim as a matrix dim: the product mixes plate elements.
    assert type(torch.ones(3, 4) @ z) is torch.Tensor
    # Squeezing a size-1 batch dim right of the plate (a plate declared at dim=-2)
    # moves the plate dim and leaves the event dims alone.
    column = wrapped(torch.ones(4, 1))
    column._qem_plates = {-2: "c"}
    flat = column.squeeze(-1)
    assert isinstance(flat, IndexedValue) and flat._qem_plates == {-1: "c"}
    assert flat._qem_event_ndim == 0
    # unbind over the event dim: each component keeps the plate, now at dim -1.
    first, _ = z.unbind(-1)
    assert isinstance(first, IndexedValue) and first._qem_plates == {-1: "c"}
    assert first._qem_event_ndim == 0
    assert type(z.unbind(-2)[0]) is torch.Tensor  # over the plate: the elements part
    # An integer for an event component after the index: the rows sit at dim -1.
    z[..., torch.tensor([1, 2]), 0]
    assert z._qem_uses[-1].batch_dim == -1 and z._qem_uses[-1].index.tolist() == [1, 2]
    index = torch.tensor([0, 0, 3])
    (a * 2.0)[..., index]
    a.flip(-1)[..., index]
    assert len(a._qem_uses) == 1 and a._qem_uses[0].index.tolist() == [0, 0, 3]


def test_two_latents_mixed_elementwise_are_not_attributed_to_either():
    with IndexProbe() as probe:
        with pyro.plate("c", 3):
            x = pyro.sample("x", dist.Normal(torch.zeros(3), 1.0))
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0))
        (x + z)[..., torch.tensor([0, 2])]
    assert probe.uses == []


L_FIXED = torch.tensor([[1.0, 0.0], [0.5, 0.8]], dtype=torch.float64)
HOUSE_COUNTY = torch.tensor([0, 1, 1])
HOUSE_X = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
HOUSE_Y = torch.tensor([0.3, -0.2, 1.1], dtype=torch.float64)


def multivariate(y, unsqueeze=False, components=False):
    zero = torch.zeros(2, dtype=torch.float64)
    mu = pyro.sample("mu", dist.Normal(zero, 1.0).to_event(1))
    with pyro.plate("county", 2):
        z = pyro.sample("z", dist.Normal(zero, 1.0).to_event(1))
        ab = (mu.unsqueeze(-2) if unsqueeze else mu) + (L_FIXED @ z.unsqueeze(-1)).squeeze(-1)
    with pyro.plate("house", 3):
        if components:  # each component looked up with an integer for the event dim
            loc = ab[..., HOUSE_COUNTY, 0] + ab[..., HOUSE_COUNTY, 1] * HOUSE_X
        else:
            row = ab[..., HOUSE_COUNTY, :]
            loc = row[..., 0] + row[..., 1] * HOUSE_X
        pyro.sample("y", dist.Normal(loc, 1.0), obs=y)


@pytest.mark.parametrize("components", [False, True])
def test_non_centred_multivariate_rows_fold_exactly(components):
    """ab = mu + L @ z per county (the non-centred form of correlated effects), read
    as whole rows or component by component (ab[..., county, 0])."""
    pyro.set_rng_seed(1)
    K2 = 2
    model = lambda y: multivariate(y, components=components)  # noqa: E731
    inference = Inference(model, AutoQEM(model), K=K2)
    run = inference.run_particles(HOUSE_Y)
    assert run.structure.links == {"house": "county"}
    result = estimate(run.sites, run.structure, K2, links=run.links)
    records = run.latent
    mu, z = records["mu"].value.reshape(K2, 2), records["z"].value.reshape(K2, 2, 2)
    lq_mu, lq_z = records["mu"].draw.log_q.reshape(K2), records["z"].draw.log_q.reshape(K2, 2)
    prior = dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1)
    terms = []
    for k_mu, *k in itertools.product(range(K2), repeat=3):
        lw = prior.log_prob(mu[k_mu]) - lq_mu[k_mu] - math.log(K2)
        for c in range(2):
            lw = lw + prior.log_prob(z[k[c], c]) - lq_z[k[c], c] - math.log(K2)
        for n, c in enumerate(HOUSE_COUNTY.tolist()):
            ab = mu[k_mu] + L_FIXED @ z[k[c], c]
            lw = lw + dist.Normal(ab[0] + ab[1] * HOUSE_X[n], 1.0).log_prob(HOUSE_Y[n])
        terms.append(lw)
    assert result.log_p_hat.item() == pytest.approx(torch.stack(terms).logsumexp(0).item(), abs=1e-10)


def test_a_latent_whose_particles_were_moved_into_another_dim_is_refused():
    """mu.unsqueeze(-2) moves mu's particles into z's dim under QEM's layout (mu
    already has its plate slot): the log density of y then lacks mu's particle dim."""
    model = lambda y: multivariate(y, unsqueeze=True)  # noqa: E731
    inference = Inference(model, AutoQEM(model), K=3)
    with pytest.raises(ValueError, match=r"Site 'y' depends on \['mu'\].*no particle dim.*unsqueeze"):
        inference.step(HOUSE_Y)


def reduced(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros(3, dtype=torch.float64), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu.mean(), 1.0), obs=y)


def test_a_reduction_over_the_particle_dims_is_refused():
    inference = Inference(reduced, AutoQEM(reduced), K=3)
    with pytest.raises(ValueError, match=r"Site 'y' depends on \['mu'\].*z.mean\(\)"):
        inference.step(Y)


def _intercepts_and_slopes(y, stacked):
    with pyro.plate("county", 2):
        a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    with pyro.plate("house", 3):
        if stacked:  # one county table of (a, b), looked up by row
            row = torch.stack([a, b], -1)[..., HOUSE_COUNTY, :]
            loc = row[..., 0] + row[..., 1] * HOUSE_X
        else:
            loc = a[..., HOUSE_COUNTY] + b[..., HOUSE_COUNTY] * HOUSE_X
        pyro.sample("y", dist.Normal(loc, 1.0), obs=y)


def test_stacked_group_latents_are_read_through_the_index_exactly():
    """torch.stack([a, b], -1)[..., county, :]: the rows read both latents of their
    county; the estimate equals the one of the same model written a[..., county] +
    b[..., county] * x (whose folding is checked against brute force above)."""
    results = []
    for stacked in (False, True):
        pyro.set_rng_seed(3)
        pyro.clear_param_store()
        model = functools.partial(_intercepts_and_slopes, stacked=stacked)
        inference = Inference(model, AutoQEM(model), K=3)
        run = inference.run_particles(HOUSE_Y)
        assert run.structure.links == {"house": "county"}
        assert run.structure.group_of("a") == run.structure.group_of("b")
        results.append(estimate(run.sites, run.structure, 3, links=run.links).log_p_hat.item())
    assert results[1] == pytest.approx(results[0], abs=1e-12)
