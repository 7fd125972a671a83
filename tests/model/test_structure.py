"""The model layer: discovery of sites, plates and groups; selections of plate elements."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide.initialization import init_to_median

from pyro_qem.model import discover, gather, prototype_traces, scatter_


def model(y):
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    with pyro.plate("groups", 3, dim=-2):
        c = pyro.sample("c", dist.Normal(a, 1.0))
        with pyro.plate("items", 4, dim=-1):
            pyro.sample("y", dist.Normal(c + b, 1.0), obs=y)


def structure(groups=None):
    prototypes = prototype_traces(model, (torch.zeros(3, 4),), {}, init_to_median)
    return discover(prototypes[0], groups)


def test_sites_plates_and_dims():
    s = structure()
    assert list(s.sites) == ["a", "b", "c"] and s.observed == {"y": torch.Size([3, 4])}
    assert s.max_plate_nesting == 2
    assert [g.dim for g in s.groups] == [-3, -4, -5]
    assert s.sites["c"].plates == ("groups",) and s.sites["c"].batch_shape == (3, 1)
    assert s.group_at_dim(-4).sites == ("b",) and s.group_at_dim(-2) is None
    symbols = s.symbols
    assert len(set(symbols.group.values()) | set(symbols.plate.values())) == 5


def test_a_group_shares_one_dim_in_model_order():
    s = structure(groups=[["b", "a"]])
    assert [g.sites for g in s.groups] == [("a", "b"), ("c",)]
    assert s.group_of("b").dim == s.group_of("a").dim == -3


def test_groups_across_plates_are_refused():
    with pytest.raises(ValueError, match="'a'.*'c'.*different plates"):
        structure(groups=[["a", "c"]])


def test_gather_and_scatter_are_inverse():
    full = torch.arange(24.0).reshape(3, 4, 2)
    selection = [(-2, torch.tensor([0, 2])), (-1, torch.tensor([1, 3]))]
    picked = gather(full, selection, trailing=1)
    assert picked.shape == (2, 2, 2)
    target = torch.zeros_like(full)
    scatter_(target, selection, picked, trailing=1)
    assert torch.equal(gather(target, selection, 1), picked)
    assert target.sum() == picked.sum()
