"""Fitting a varying-intercept regression written as people write it (``a[..., county]``
over one long table of ragged groups) against its exact Gaussian posterior."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_qem import AutoQEM, Inference, posterior_moments, sample_posterior

C = 10
SIZES = [0, 1, 1, 2, 3, 5, 8, 13, 20, 30]   # ragged, one county without houses
SIGMA, SIGMA_A, PRIOR_MU, PRIOR_B = 0.8, 0.6, 3.0, 2.0


def data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    county = torch.cat([torch.full((n,), c) for c, n in enumerate(SIZES)])
    x = torch.randn(len(county), generator=generator, dtype=torch.float64)
    a = 1.0 + SIGMA_A * torch.randn(C, generator=generator, dtype=torch.float64)
    y = a[county] - 0.7 * x + SIGMA * torch.randn(len(county), generator=generator, dtype=torch.float64)
    perm = torch.randperm(len(county), generator=generator)  # rows in no particular order
    return x[perm], county[perm], y[perm]


def model(x, county, y=None):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), PRIOR_MU))
    with pyro.plate("county", C):
        a = pyro.sample("a", dist.Normal(mu, SIGMA_A))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=torch.float64), PRIOR_B))
    with pyro.plate("house", len(x)):
        pyro.sample("y", dist.Normal(a[..., county] + b * x, SIGMA), obs=y)


def exact_posterior(x, county, y):
    """The joint Gaussian posterior of (mu, a_1..a_C, b): linear regression algebra."""
    n = len(y)
    dim = C + 2
    design = torch.zeros(n, dim, dtype=torch.float64)
    design[torch.arange(n), 1 + county] = 1.0
    design[:, -1] = x
    prior_precision = torch.zeros(dim, dim, dtype=torch.float64)
    prior_precision[0, 0] = PRIOR_MU ** -2 + C / SIGMA_A ** 2
    prior_precision[0, 1:1 + C] = prior_precision[1:1 + C, 0] = -1 / SIGMA_A ** 2
    prior_precision[1:1 + C, 1:1 + C] = torch.eye(C, dtype=torch.float64) / SIGMA_A ** 2
    prior_precision[-1, -1] = PRIOR_B ** -2
    precision = prior_precision + design.T @ design / SIGMA ** 2
    cov = torch.linalg.inv(precision)
    mean = cov @ (design.T @ y) / SIGMA ** 2
    return mean, cov.diagonal().sqrt()


@pytest.mark.slow
def test_indexed_varying_intercepts_match_the_exact_posterior():
    """K=30, lr=0.1, 400 steps averaged over the last 200. Averaging ~200/10 = 20
    independent-ish iterates of ESS ~10-20 leaves ~0.05 sd of Monte Carlo error in q's
    means and ~5% in its sds; the tolerances are about 3 of those. Joint draws (1000)
    have a mean error of sd/sqrt(1000) = 0.03 sd and sd error ~2%, plus the SIR bias."""
    x, county, y = data()
    mean, sd = exact_posterior(x, county, y)
    pyro.set_rng_seed(0)
    guide = AutoQEM(model)
    inference = Inference(model, guide, K=30, lr=0.1, average_from=200)
    for _ in range(400):
        inference.step(x, county, y)
    q = guide.distributions()
    fitted_mean = torch.cat([q["mu"].mean.reshape(1), q["a"].mean.reshape(-1), q["b"].mean.reshape(1)])
    fitted_sd = torch.cat([q["mu"].stddev.reshape(1), q["a"].stddev.reshape(-1), q["b"].stddev.reshape(1)])
    assert ((fitted_mean - mean).abs() / sd).max() < 0.2
    assert ((fitted_sd / sd) - 1).abs().max() < 0.2
    moments = posterior_moments(inference, x, county, y, num_runs=20)
    assert ((moments["a"].reshape(-1) - mean[1:1 + C]).abs() / sd[1:1 + C]).max() < 0.2
    draws = sample_posterior(inference, x, county, y, num_samples=1000)
    joint = torch.cat([draws["mu"].reshape(-1, 1), draws["a"].reshape(-1, C), draws["b"].reshape(-1, 1)], 1)
    assert ((joint.mean(0) - mean).abs() / sd).max() < 0.2
    assert ((joint.std(0) / sd) - 1).abs().max() < 0.15


def test_indexed_models_share_one_particle_dim_among_their_global_latents():
    """Each row's log density spans the dims of every global it reads: separate globals
    would cost K^G per row. Without groups=, AutoQEM groups the globals; with groups=,
    the user's choice stands."""
    x, county, y = data()
    guide = AutoQEM(model)
    structure = guide.setup(x, county, y)
    assert structure.group_of("mu") is structure.group_of("b")
    assert structure.group_of("a") is not structure.group_of("mu")
    chosen = AutoQEM(model, groups=[["a"]]).setup(x, county, y)
    assert chosen.group_of("mu") is not chosen.group_of("b")


def test_the_latents_rows_read_from_one_plate_share_a_particle_dim():
    """A county's intercept and slope, both read by every house of the county: apart
    they would cost K^2 per house."""
    def slopes(x, county, y=None):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        with pyro.plate("county", C):
            a = pyro.sample("a", dist.Normal(mu, 1.0))
            b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        with pyro.plate("house", len(x)):
            pyro.sample("y", dist.Normal(a[..., county] + b[..., county] * x, SIGMA), obs=y)

    x, county, y = data()
    structure = AutoQEM(slopes).setup(x, county, y)
    assert structure.indexed_sites == {"a", "b"}
    assert structure.group_of("a") is structure.group_of("b")
    assert structure.group_of("mu") is not structure.group_of("a")


def test_crossed_groupings_are_refused_naming_both_plates_and_what_to_do():
    """a[county] + b[year]: neither grouping nests in the other, so the exact
    contraction would need every combination of county and year particles."""
    county, year = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 0, 1, 1, 0, 1])

    def crossed(county, year, y):
        with pyro.plate("county", 3):
            a = pyro.sample("a", dist.Normal(0.0, 1.0))
        with pyro.plate("year", 2):
            b = pyro.sample("b", dist.Normal(0.0, 1.0))
        with pyro.plate("house", len(county)):
            pyro.sample("y", dist.Normal(a[..., county] + b[..., year], 1.0), obs=y)

    with pytest.raises(ValueError, match=r"Crossed groupings: rows of pyro.plate\('house'\) read "
                                         r"'a' of pyro.plate\('county'\) and 'b' of pyro.plate\('year'\)"
                                         r".*\.to_event\(1\) site.*through an index of their own"):
        AutoQEM(crossed).setup(county, year, torch.zeros(6))


@pytest.mark.parametrize("as_index", [lambda c: c.numpy(), lambda c: c.tolist()],
                         ids=["numpy", "list"])
def test_an_index_given_as_numpy_or_a_list_is_read_like_the_tensor(as_index):
    """torch indexes with numpy integer arrays and lists of ints as with tensors (and
    Pyro runs such models); the same particles give the same estimate."""
    x, county, y = data()
    estimates = []
    for index in (county, as_index(county)):
        pyro.set_rng_seed(3)
        inference = Inference(model, AutoQEM(model), K=5)
        estimates.append(inference.evaluate_loss(x, index, y))
    assert estimates[1] == pytest.approx(estimates[0], rel=1e-12)


STATES, COUNTIES = 3, 7
STATE_OF_COUNTY = torch.tensor([2, 0, 0, 1, 2, 2, 0])          # not sorted
HOUSE_COUNTY = torch.tensor([6, 0, 0, 3, 3, 1, 4, 4, 4, 5, 2, 6, 6, 0, 1, 3, 3])


def state_and_county(county, state, y=None):
    """Rows read a state effect and a county effect through two index columns; the
    counties' latents do not read the states, but the data nest them."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 3.0))
    with pyro.plate("state", STATES):
        s = pyro.sample("s", dist.Normal(mu, 1.0))
    with pyro.plate("county", COUNTIES):
        c = pyro.sample("c", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 0.7))
    with pyro.plate("house", len(county)):
        pyro.sample("y", dist.Normal(s[..., state] + c[..., county], 0.5), obs=y)


def test_rows_reading_a_county_and_its_state_directly_nest_through_the_data():
    """Exact: the joint Gaussian of (mu, s, c) by linear algebra."""
    y = torch.randn(len(HOUSE_COUNTY), generator=torch.Generator().manual_seed(6),
                    dtype=torch.float64) + 1.0
    state = STATE_OF_COUNTY[HOUSE_COUNTY]
    n = 1 + STATES + COUNTIES
    precision = torch.zeros(n, n, dtype=torch.float64)
    shift = torch.zeros(n, dtype=torch.float64)
    precision[0, 0] = 1 / 9
    for s in range(STATES):
        v = torch.zeros(n, dtype=torch.float64)
        v[1 + s], v[0] = 1.0, -1.0
        precision += torch.outer(v, v)
    for c in range(COUNTIES):
        precision[1 + STATES + c, 1 + STATES + c] += 1 / 0.49
    for r in range(len(y)):
        v = torch.zeros(n, dtype=torch.float64)
        v[1 + int(state[r])], v[1 + STATES + int(HOUSE_COUNTY[r])] = 1.0, 1.0
        precision += torch.outer(v, v) / 0.25
        shift += v * y[r] / 0.25
    cov = torch.linalg.inv(precision)
    mean, sd = cov @ shift, cov.diagonal().sqrt()
    guide = AutoQEM(state_and_county)
    structure = guide.setup(HOUSE_COUNTY, state, y)
    assert structure.links == {"house": "county", "county": "state"}
    assert structure.data_links == {"county"}
    pyro.set_rng_seed(0)
    inference = Inference(state_and_county, guide, K=30, lr=0.1, average_from=300)
    for _ in range(600):
        inference.step(HOUSE_COUNTY, state, y)
    draws = sample_posterior(inference, HOUSE_COUNTY, state, y, num_samples=2000)
    got = torch.cat([draws["mu"].reshape(-1, 1), draws["s"], draws["c"]], -1).double()
    # 1600 effective draws: SE 0.025 sd per coordinate; 11 coordinates.
    assert ((got.mean(0) - mean) / sd).abs().max() < 0.15
    assert ((got.std(0) / sd) - 1).abs().max() < 0.12
    # Data in which a county's rows sit in two states do not nest: a clear error.
    broken = state.clone()
    broken[0] = (broken[0] + 1) % STATES
    with pytest.raises(ValueError, match=r"some county element's rows are in two"):
        inference.evaluate_loss(HOUSE_COUNTY, broken, y)
