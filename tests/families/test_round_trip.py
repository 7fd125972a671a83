"""Round trip parameters -> mean parameters -> parameters for every family."""

import pytest
import torch

from tests.helpers.family_cases import CASES, make_case
from pyro_qem.families import FAMILIES


def test_every_family_has_a_case():
    assert set(CASES) == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip(name):
    family, event_shape, params = make_case(name)
    moments = family.moments_from_params(params, event_shape)
    recovered = family.params_from_moments(moments, event_shape)
    assert set(recovered) == set(params)
    for key, expected in params.items():
        # Logits near 0 have no relative scale; everything else is compared relatively.
        torch.testing.assert_close(recovered[key], expected, rtol=1e-4, atol=1e-9, msg=key)


@pytest.mark.parametrize("name", sorted(CASES))
def test_moments_round_trip(name):
    """The M-step's output reproduces the moments it was given."""
    family, event_shape, params = make_case(name)
    moments = family.moments_from_params(params, event_shape)
    again = family.moments_from_params(
        family.params_from_moments(moments, event_shape), event_shape
    )
    for expected, actual in zip(moments, again):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("name", sorted(CASES))
def test_shapes_and_dtypes(name):
    family, event_shape, params = make_case(name)
    q = family.distribution(params, event_shape)
    assert q.batch_shape == (2, 100)
    assert q.event_shape == event_shape
    value = q.sample()
    stats = family.statistics(value, event_shape)
    assert len(stats) == len(family.stat_names)
    moments = family.moments_from_params(params, event_shape)
    for stat, moment in zip(stats, moments):
        assert stat.shape == moment.shape
    for key, value in family.params_from_moments(moments, event_shape).items():
        assert value.dtype == torch.float64, key
