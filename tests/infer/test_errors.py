"""Bad input gets a clear error that names the site or argument."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_qem import AutoQEM, Inference


def simple(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("items", 3):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)


Y = torch.tensor([0.1, 0.2, 0.3])


@pytest.mark.parametrize("K", [1, 0, 2.5, True])
def test_bad_K(K):
    with pytest.raises(ValueError, match="K must be an int >= 2"):
        Inference(simple, AutoQEM(simple), K=K)


@pytest.mark.parametrize("lr", [0.0, 1.5, -0.1, "0.1"])
def test_bad_lr(lr):
    with pytest.raises(ValueError, match="lr must be a number in \\(0, 1\\]"):
        Inference(simple, AutoQEM(simple), lr=lr)


def test_guide_must_be_a_qem_guide():
    from pyro.infer.autoguide import AutoNormal

    with pytest.raises(TypeError, match="guide must be a pyro_qem QEM guide"):
        Inference(simple, AutoNormal(simple))


def test_local_parent_of_global():
    def model(y):
        with pyro.plate("items", 3):
            theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
        mu = pyro.sample("mu", dist.Normal(theta.sum(-1), 1.0))
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(ValueError, match="Site .mu.: its log density has a dim of size 3"):
        Inference(model, AutoQEM(model), K=3).step(torch.tensor([0.5]))


def test_max_plate_nesting_too_small():
    def model(y):
        with pyro.plate("a", 2, dim=-2):
            mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
            with pyro.plate("b", 3, dim=-1):
                pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(ValueError, match="max_plate_nesting=1 is too small.*max_plate_nesting=2"):
        AutoQEM(model, max_plate_nesting=1).setup(torch.zeros(2, 3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_observations(bad):
    y = Y.clone()
    y[1] = bad
    with pytest.raises(ValueError, match="Observed site 'obs' has 1 NaN/inf values"):
        AutoQEM(simple).setup(y)


def test_markov_is_refused():
    def model(y):
        x = pyro.sample("x0", dist.Normal(0.0, 1.0))
        for t in pyro.markov(range(2)):
            x = pyro.sample(f"x{t + 1}", dist.Normal(x, 1.0))
        pyro.sample("obs", dist.Normal(x, 1.0), obs=y)

    with pytest.raises(NotImplementedError, match="Site 'x1' is inside pyro.markov"):
        AutoQEM(model).setup(torch.tensor(0.0))


def test_unplated_batch_dims_of_a_latent():
    def model(y):
        beta = pyro.sample("beta", dist.Normal(torch.zeros(3), 1.0))
        pyro.sample("obs", dist.Normal(beta.sum(-1), 1.0), obs=y)

    with pytest.raises(ValueError, match="Latent site 'beta' has batch shape \\(3,\\).*to_event"):
        AutoQEM(model).setup(torch.tensor(0.0))


def test_explicit_subsample_indices_are_refused():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("items", 3, subsample=torch.tensor([0, 2])) as idx:
            pyro.sample("theta", dist.Normal(mu, 1.0))
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=y[idx])

    with pytest.raises(NotImplementedError, match="explicit subsample= indices.*subsample_size="):
        AutoQEM(model).setup(Y)


@pytest.mark.parametrize("groups, message", [
    ([["mu", "nope"]], "site 'nope' is not a latent sample site"),
    ([["mu"], ["mu"]], "site 'mu' appears in more than one group"),
    ([["mu", "theta"]], "sites 'mu' .* and 'theta' .* are in different plates"),
    ([[]], "an empty group"),
])
def test_bad_groups(groups, message):
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("items", 3):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            pyro.sample("obs", dist.Normal(theta, 1.0), obs=y)

    with pytest.raises(ValueError, match=message):
        AutoQEM(model, groups=groups).setup(Y)


def test_unsupported_support_names_site_and_alternatives():
    def model(y):
        # No bijection onto the sphere is registered with torch.
        c = pyro.sample("c", dist.ProjectedNormal(torch.ones(3)))
        pyro.sample("obs", dist.Normal(c.sum(), 1.0), obs=y)

    with pytest.raises(ValueError, match="'c'"):
        AutoQEM(model).setup(torch.tensor(0.0))


@pytest.mark.parametrize("override, message", [
    ("Nope", "Nope"),
    ("Beta", "Beta"),
])
def test_bad_family_override(override, message):
    with pytest.raises(ValueError, match=message):
        AutoQEM(simple, families={"mu": override}).setup(Y)


def test_override_for_unknown_site():
    with pytest.raises(ValueError, match="families: \\['nu'\\] are not latent sample sites"):
        AutoQEM(simple, families={"nu": "Normal"}).setup(Y)


def test_missing_data_in_a_step():
    inference = Inference(simple, AutoQEM(simple), K=3)
    inference.step(Y)
    with pytest.raises(ValueError, match="Site 'obs' was observed when the guide was set up"):
        inference.step(None)


def test_site_outside_a_plate_depending_on_one_inside():
    def model(y):
        with pyro.plate("items", 3):
            theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(theta[..., :1], 1.0), obs=y)

    with pytest.raises(ValueError, match="Site 'obs' depends on \\['theta'\\].*inside plate"):
        Inference(model, AutoQEM(model), K=3).step(torch.tensor([0.5]))
