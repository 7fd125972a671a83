"""Default groups under non-centred proposals: the global parents of a site that reads
a standardised latent share one particle dim."""

import pyro
import pyro.distributions as dist
import torch

from pyro_qem import AutoQEM, Inference
from pyro_qem.guides.grouping import _merge


def vector_hierarchy(x, y):
    """User vectors under a vector mean and a vector log-scale (movielens-shaped)."""
    users, _, genres = x.shape
    mu = pyro.sample("mu", dist.Normal(torch.zeros(genres), 1.0).to_event(1))
    psi = pyro.sample("psi", dist.Normal(torch.zeros(genres), 1.0).to_event(1))
    with pyro.plate("user", users, dim=-2):
        z = pyro.sample("z", dist.Normal(mu, psi.exp()).to_event(1))
        with pyro.plate("film", x.shape[1], dim=-1):
            pyro.sample("r", dist.Bernoulli(logits=(z * x).sum(-1)), obs=y)


def data():
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(20, 3, 4, generator=generator) < 0.3).float()
    return x, torch.bernoulli(torch.full((20, 3), 0.5), generator=generator)


def groups_of(guide):
    return [set(g.sites) for g in guide.structure.groups]


def test_parents_of_a_standardised_latent_share_a_group():
    x, y = data()
    guide = AutoQEM(vector_hierarchy, noncentre=["z"])
    guide.setup(x, y)
    assert groups_of(guide) == [{"mu", "psi"}, {"z_decentered"}]
    # The largest factor (the ratings) spans two particle dims, not three.
    pyro.clear_param_store()
    inference = Inference(vector_hierarchy, guide, K=7)
    inference.step(x, y)
    assert inference._largest_factor <= 7 * 7 * 20 * 3


def test_centred_and_explicit_groups_are_left_alone():
    x, y = data()
    pyro.clear_param_store()
    centred = AutoQEM(vector_hierarchy, noncentre=None)
    centred.setup(x, y)
    assert groups_of(centred) == [{"mu"}, {"psi"}, {"z"}]
    pyro.clear_param_store()
    explicit = AutoQEM(vector_hierarchy, noncentre=["z"], groups=[["mu"], ["psi"]])
    explicit.setup(x, y)
    assert groups_of(explicit) == [{"mu"}, {"psi"}, {"z_decentered"}]


def test_merge_is_transitive_and_keeps_site_order():
    assert _merge([["a"], ["b", "c"], ["d"], ["a", "c"], ["d", "e"]]) == [["a", "b", "c"], ["d", "e"]]
    assert _merge([["a", "b"], ["c", "d"], ["b", "c"]]) == [["a", "b", "c", "d"]]
