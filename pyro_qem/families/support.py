"""Matching supports by constraint type and structure, as ``biject_to`` does.

Constraints are not compared by equality: a ``.to_event(1)`` site reports
``IndependentConstraint(Real(), 1)``, and integer intervals or ``greater_than`` bounds are
built per distribution instance. Instead each constraint is reduced to a *kind* from its
type and bounds, after stripping ``IndependentConstraint`` wrappers.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch.distributions import constraints

from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution

_REAL = type(constraints.real)
_GREATER_THAN = type(constraints.positive)
_GREATER_THAN_EQ = type(constraints.nonnegative)
_INTERVAL = type(constraints.unit_interval)
_HALF_OPEN_INTERVAL = type(constraints.half_open_interval(0.0, 1.0))
_INTEGER_INTERVAL = type(constraints.integer_interval(0, 1))
_INTEGER_GREATER_THAN = type(constraints.nonnegative_integer)
_SIMPLEX = type(constraints.simplex)
_BOOLEAN = type(constraints.boolean)
_MULTINOMIAL = type(constraints.multinomial(1))

#: What each kind of support means, for error messages.
KIND_DESCRIPTIONS = {
    "real": "real numbers",
    "positive": "positive / nonnegative reals",
    "unit_interval": "the unit interval",
    "simplex": "the simplex",
    "boolean": "booleans {0, 1}",
    "integer_interval": "integers {0, ..., n}",
    "nonnegative_integer": "nonnegative integers",
    "multinomial": "count vectors with a fixed total",
}


def unwrap_support(support: constraints.Constraint) -> constraints.Constraint:
    """The constraint inside any ``IndependentConstraint`` wrappers."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def _all_equal(bound: Any, value: float) -> bool:
    return bool(torch.all(torch.as_tensor(bound) == value))


def support_kind(support: constraints.Constraint) -> Optional[str]:
    """The kind of a support (a key of :data:`KIND_DESCRIPTIONS`), or None if unknown.

    Positive (``GreaterThan(0)``) and nonnegative (``GreaterThanEq(0)``) supports share
    the kind ``"positive"``: Pyro's Gamma, HalfCauchy and HalfNormal report
    ``nonnegative`` although their samples are positive.
    """
    base = unwrap_support(support)
    if isinstance(base, _REAL):
        return "real"
    if isinstance(base, (_GREATER_THAN, _GREATER_THAN_EQ)):
        return "positive" if _all_equal(base.lower_bound, 0.0) else None
    if isinstance(base, (_INTERVAL, _HALF_OPEN_INTERVAL)):
        unit = _all_equal(base.lower_bound, 0.0) and _all_equal(base.upper_bound, 1.0)
        return "unit_interval" if unit else None
    if isinstance(base, _INTEGER_GREATER_THAN):
        return "nonnegative_integer" if _all_equal(base.lower_bound, 0) else None
    simple = {
        _SIMPLEX: "simplex",
        _BOOLEAN: "boolean",
        _INTEGER_INTERVAL: "integer_interval",
        _MULTINOMIAL: "multinomial",
    }
    return simple.get(type(base))


def support_matches(
    family_support: constraints.Constraint, site_support: constraints.Constraint
) -> bool:
    """Whether a family with ``family_support`` can model a site with ``site_support``.

    Both are reduced to their kind (see :func:`support_kind`); two constraints of no
    known kind match when they have the same type and the same attributes. Event
    dimensions are not compared here: :meth:`Family.supports_event_shape` checks them.

    :param family_support: the family's ``support``.
    :param site_support: the support of the site's prior distribution.
    :returns: True when they match.

    Example::

        support_matches(constraints.real, constraints.independent(constraints.real, 1))  # True
        support_matches(constraints.positive, constraints.nonnegative)  # True
    """
    family_kind, site_kind = support_kind(family_support), support_kind(site_support)
    if family_kind is not None or site_kind is not None:
        return family_kind == site_kind
    family_base, site_base = unwrap_support(family_support), unwrap_support(site_support)
    return type(family_base) is type(site_base) and _same_attributes(family_base, site_base)


def _same_attributes(first: constraints.Constraint, second: constraints.Constraint) -> bool:
    first_vars, second_vars = vars(first), vars(second)
    if first_vars.keys() != second_vars.keys():
        return False
    for key, value in first_vars.items():
        other = second_vars[key]
        if isinstance(value, torch.Tensor) or isinstance(other, torch.Tensor):
            same = torch.as_tensor(value).shape == torch.as_tensor(other).shape and bool(
                torch.all(torch.as_tensor(value) == torch.as_tensor(other))
            )
        else:
            same = value == other
        if not same:
            return False
    return True


def integer_interval_bounds(support: constraints.Constraint) -> Optional[Tuple[Any, Any]]:
    """``(lower_bound, upper_bound)`` of an integer-interval support, else None."""
    base = unwrap_support(support)
    if isinstance(base, _INTEGER_INTERVAL):
        return base.lower_bound, base.upper_bound
    return None


def unwrap_prior(prior: Optional[torch.distributions.Distribution]) -> Any:
    """The distribution inside ``Independent``, ``expand`` and ``mask`` wrappers."""
    wrappers = (torch.distributions.Independent, ExpandedDistribution, MaskedDistribution)
    while isinstance(prior, wrappers):
        prior = prior.base_dist
    return prior
