"""Indexed plates (rows that read a group latent through an integer index) against
brute-force enumeration over every combination of particle indices (float64, K = 3)."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_qem import AutoQEM, Inference
from pyro_qem.estimator import estimate

K = 3
C = 4                                   # county 3 has no houses
COUNTY = torch.tensor([0, 0, 1, 2, 2])  # ragged: 2, 1, 2, 0 houses
Y = torch.tensor([0.7, -1.3, 0.2, 1.5, 0.9], dtype=torch.float64)


def model(y, county, subsample_size=None):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 2.0))
    with pyro.plate("county", C):
        a = pyro.sample("a", dist.Normal(mu, 1.0))
    with pyro.plate("house", len(y), subsample_size=subsample_size) as rows:
        z = pyro.sample("z", dist.Normal(a[..., county[rows]], 0.5))
        pyro.sample("y", dist.Normal(z, 0.3), obs=y[rows])


def run_and_estimate(*args):
    # The estimator as written: no non-centred proposals.
    inference = Inference(model, AutoQEM(model, noncentre=None), K=K)
    run = inference.run_particles(*args)
    result = estimate(run.sites, run.structure, K, links=run.links)
    records = run.latent
    values = {n: records[n].value.detach() for n in records}
    log_q = {n: records[n].draw.log_q.detach() for n in records}
    return run, result, values, log_q


def normal(loc, scale):
    return dist.Normal(torch.as_tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))


def brute_force(values, log_q, rows, scale, sources=None):
    """log P_hat by enumerating (k_mu, k_a[0..C-1]); each house's own particle k_z is
    summed exactly (it touches nothing else). ``sources`` are zero tensors added to
    each site's log weights, whose gradients are the marginal weights."""
    mu, a, z = values["mu"].reshape(K), values["a"].reshape(K, C), values["z"].reshape(K, -1)
    lq_mu, lq_a, lq_z = (log_q[n].reshape(values[n].reshape(K, -1).shape).squeeze(-1)
                         if n == "mu" else log_q[n].reshape(K, -1) for n in ("mu", "a", "z"))
    s = sources or {n: torch.zeros_like(t) for n, t in (("mu", lq_mu), ("a", lq_a), ("z", lq_z))}
    terms = []
    for k_mu, *k_a in itertools.product(range(K), repeat=1 + C):
        lw = normal(0.0, 2.0).log_prob(mu[k_mu]) - lq_mu[k_mu] + s["mu"][k_mu] - math.log(K)
        for c in range(C):
            k = k_a[c]
            lw = lw + normal(mu[k_mu], 1.0).log_prob(a[k, c]) - lq_a[k, c] + s["a"][k, c] - math.log(K)
        for j, n in enumerate(rows.tolist()):
            k = k_a[COUNTY[n]]
            per_z = (normal(a[k, COUNTY[n]], 0.5).log_prob(z[:, j]) - lq_z[:, j] + s["z"][:, j]
                     + normal(z[:, j], 0.3).log_prob(Y[n]) - math.log(K))
            lw = lw + scale * per_z.logsumexp(0)
        terms.append(lw)
    return torch.stack(terms).logsumexp(0)


def brute_force_weights(values, log_q, rows, scale):
    shapes = {"mu": (K,), "a": (K, C), "z": (K, len(rows))}
    sources = {n: torch.zeros(shape, dtype=torch.float64, requires_grad=True) for n, shape in shapes.items()}
    log_p_hat = brute_force(values, log_q, rows, scale, sources)
    grads = torch.autograd.grad(log_p_hat, list(sources.values()))
    return log_p_hat.detach(), {n: g / g.sum(0) for n, g in zip(sources, grads)}


def check(run, result, values, log_q, rows, scale):
    expected, weights = brute_force_weights(values, log_q, rows, scale)
    assert abs(result.log_p_hat.item() - expected.item()) < 1e-10
    got = result.weights()
    structure = run.structure
    for name in ("mu", "a", "z"):
        w = got[structure.group_of(name).index].reshape(weights[name].shape)
        assert torch.allclose(w, weights[name], atol=1e-10, rtol=0), name


def test_ragged_groups_with_an_empty_one_equal_brute_force():
    run, result, values, log_q = run_and_estimate(Y, COUNTY)
    check(run, result, values, log_q, torch.arange(5), 1.0)


def test_subsampled_rows_equal_brute_force_with_the_plate_scale():
    pyro.set_rng_seed(4)
    run, result, values, log_q = run_and_estimate(Y, COUNTY, 3)
    rows = run.subsamples["house"]
    check(run, result, values, log_q, rows, 5 / 3)


def test_the_empty_county_keeps_uniform_weights_and_its_prior():
    run, result, values, log_q = run_and_estimate(Y, COUNTY)
    w = result.weights()[run.structure.group_of("a").index].reshape(K, C)
    _, exact = brute_force_weights(values, log_q, torch.arange(5), 1.0)
    assert torch.allclose(w[:, 3], exact["a"][:, 3], atol=1e-12)


def combo_table(values, log_q):
    """Every (k_mu, k_a[0..C-1]) combination's log weight, and for each the
    conditional distribution of house 0's own particle k_z (all houses observed)."""
    mu, a, z = values["mu"].reshape(K), values["a"].reshape(K, C), values["z"].reshape(K, -1)
    lq_mu, lq_a, lq_z = log_q["mu"].reshape(K), log_q["a"].reshape(K, C), log_q["z"].reshape(K, -1)
    combos, logs, z0 = [], [], []
    for k_mu, *k_a in itertools.product(range(K), repeat=1 + C):
        lw = normal(0.0, 2.0).log_prob(mu[k_mu]) - lq_mu[k_mu]
        for c in range(C):
            lw = lw + normal(mu[k_mu], 1.0).log_prob(a[k_a[c], c]) - lq_a[k_a[c], c]
        for n in range(len(Y)):
            k = k_a[COUNTY[n]]
            per_z = (normal(a[k, COUNTY[n]], 0.5).log_prob(z[:, n]) - lq_z[:, n]
                     + normal(z[:, n], 0.3).log_prob(Y[n]))
            lw = lw + per_z.logsumexp(0)
            if n == 0:
                z0.append(per_z.softmax(0))
        combos.append((k_mu, *k_a))
        logs.append(lw)
    return combos, torch.stack(logs).softmax(0), torch.stack(z0)


@pytest.mark.slow
def test_joint_resampling_of_one_run_follows_the_exact_joint_weights():
    """20000 joint draws of one particle run: the frequencies of (k_mu, k_a of county
    0) and of (k_a of county 0, k_z of house 0) against their exact probabilities; each
    frequency's sd is at most sqrt(0.25 / 20000) = 0.0035, the tolerance is 5 of those."""
    from pyro_qem.infer import weigh
    from pyro_qem.outputs.draws import resample_run

    inference = Inference(model, AutoQEM(model), K=K)
    run = inference.run_particles(Y, COUNTY)
    weighted = weigh(run)
    draws = resample_run(weighted, 20000)
    values = {n: r.value.detach() for n, r in run.latent.items()}
    log_q = {n: r.draw.log_q.detach() for n, r in run.latent.items()}
    combos, probs, z0 = combo_table(values, log_q)
    index = {name: (draws[name].unsqueeze(-2) == values[name].reshape(K, -1).unsqueeze(0)).double().argmax(-2)
             if values[name].reshape(K, -1).shape[1] > 1 else
             (draws[name].reshape(-1, 1) == values[name].reshape(1, K)).double().argmax(-1)
             for name in ("mu", "a", "z")}
    for i, j in itertools.product(range(K), repeat=2):
        exact_mu_a = sum(p for (k_mu, *k_a), p in zip(combos, probs) if k_mu == i and k_a[0] == j)
        freq = ((index["mu"] == i) & (index["a"][:, 0] == j)).double().mean()
        assert abs(freq - exact_mu_a) < 0.018
        exact_a_z = sum(p * z0[c, j] for c, ((k_mu, *k_a), p) in enumerate(zip(combos, probs)) if k_a[0] == i)
        freq = ((index["a"][:, 0] == i) & (index["z"][:, 0] == j)).double().mean()
        assert abs(freq - exact_a_z) < 0.018


def test_a_plate_around_indexed_rows_that_crosses_the_groups_is_refused_by_name():
    """Time periods around houses that read counties: folded into the county plate, the
    rows' factors span the time and county plates, which do not nest (Pyro's
    NotImplementedError about tree-structured plates surfaced, naming symbols)."""
    county = torch.tensor([0, 0, 1, 2, 2])

    def periods(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("county", 3, dim=-1):
            a = pyro.sample("a", dist.Normal(mu, 1.0))
        with pyro.plate("time", 2, dim=-2):
            tau = pyro.sample("tau", dist.Normal(0.0, 1.0))
            with pyro.plate("rows", 5, dim=-1):
                pyro.sample("y", dist.Normal(a[..., county] + tau, 0.5), obs=y)

    with pytest.raises(ValueError, match=r"plates that do not nest in one another "
                                         r"\(\['county', 'time'\]|\['time', 'county'\]"):
        Inference(periods, AutoQEM(periods), K=4).step(torch.zeros(2, 5))
