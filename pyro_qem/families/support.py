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
_ONE_HOT = type(constraints.one_hot)


class _AnyBijective(constraints.Constraint):
    """The support of a family that models any continuous support ``biject_to`` knows
    (:class:`~pyro_qem.families.Unconstrained`): it matches every such site support."""

    is_discrete = False
    event_dim = 0

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return torch.isfinite(value)

    def __repr__(self) -> str:
        return "AnyBijective()"


#: The class-level support of families that take any support with a bijection.
any_bijective = _AnyBijective()

#: What each kind of support means, for error messages.
KIND_DESCRIPTIONS = {
    "real": "real numbers",
    "positive": "positive / nonnegative reals",
    "unit_interval": "the unit interval",
    "interval": "other intervals (a, b) with fixed bounds",
    "simplex": "the simplex",
    "boolean": "booleans {0, 1}",
    "integer_interval": "integers {0, ..., n}",
    "nonnegative_integer": "nonnegative integers",
    "multinomial": "count vectors with a fixed total",
    "one_hot": "one-hot vectors",
    "bijective": "any other continuous support with a biject_to bijection",
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
    ``nonnegative`` although their samples are positive. Closed and half-open intervals
    share ``"unit_interval"`` or ``"interval"``, as the endpoints have probability 0.
    A continuous support of none of the named kinds is ``"bijective"`` when
    ``torch.distributions.biject_to`` has a bijection onto it.
    """
    base = unwrap_support(support)
    if isinstance(base, _AnyBijective):
        return "bijective"
    if isinstance(base, _REAL):
        return "real"
    if isinstance(base, (_GREATER_THAN, _GREATER_THAN_EQ)) and _all_equal(base.lower_bound, 0.0):
        return "positive"
    if isinstance(base, (_INTERVAL, _HALF_OPEN_INTERVAL)):
        unit = _all_equal(base.lower_bound, 0.0) and _all_equal(base.upper_bound, 1.0)
        return "unit_interval" if unit else "interval"
    if isinstance(base, _INTEGER_GREATER_THAN):
        return "nonnegative_integer" if _all_equal(base.lower_bound, 0) else None
    simple = {
        _SIMPLEX: "simplex",
        _BOOLEAN: "boolean",
        _INTEGER_INTERVAL: "integer_interval",
        _MULTINOMIAL: "multinomial",
        _ONE_HOT: "one_hot",
    }
    kind = simple.get(type(base))
    if kind is None and has_bijection(support):
        return "bijective"
    return kind


def has_bijection(support: constraints.Constraint) -> bool:
    """Whether ``support`` is continuous and ``biject_to`` maps the reals onto it."""
    try:
        if support.is_discrete:
            return False
        torch.distributions.biject_to(support)
    except NotImplementedError:  # dependent supports, and those biject_to lacks
        return False
    return True


def support_matches(
    family_support: constraints.Constraint, site_support: constraints.Constraint
) -> bool:
    """Whether a family with ``family_support`` can model a site with ``site_support``.

    Both are reduced to their kind (see :func:`support_kind`); two constraints of no
    known kind, or of the catch-all kind ``"bijective"``, match when they have the same
    type and the same attributes. A family of kind ``"interval"`` also takes the unit
    interval, and a family whose support is :data:`any_bijective` takes every support
    that :func:`has_bijection`. Event dimensions are not compared here:
    :meth:`Family.supports_event_shape` checks them.

    :param family_support: the family's ``support``.
    :param site_support: the support of the site's prior distribution.
    :returns: True when they match.

    Example::

        support_matches(constraints.real, constraints.independent(constraints.real, 1))  # True
        support_matches(constraints.positive, constraints.nonnegative)  # True
    """
    family_base, site_base = unwrap_support(family_support), unwrap_support(site_support)
    if isinstance(family_base, _AnyBijective):
        return has_bijection(site_support)
    family_kind, site_kind = support_kind(family_support), support_kind(site_support)
    # A scaled Beta on (0, 1) is a Beta.
    if family_kind == "interval" and site_kind == "unit_interval":
        return True
    if family_kind != site_kind:
        return False
    if family_kind is not None and family_kind != "bijective":
        return True
    # "bijective" gathers unrelated supports (corr_cholesky, ordered vectors, ...).
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


def interval_bounds(support: constraints.Constraint) -> Optional[Tuple[Any, Any]]:
    """``(lower_bound, upper_bound)`` of a (closed or half-open) interval support, else None."""
    base = unwrap_support(support)
    if isinstance(base, (_INTERVAL, _HALF_OPEN_INTERVAL)):
        return base.lower_bound, base.upper_bound
    return None


def same_bounds(first: constraints.Constraint, second: constraints.Constraint) -> bool:
    """Whether two supports of one kind give one set: for intervals the bounds must be
    equal, for the catch-all kind ``"bijective"`` the type and attributes; the other
    kinds name one set each (bounds aside, which the families check themselves)."""
    kind = support_kind(first)
    if kind != support_kind(second):
        return False
    if kind in ("interval", "unit_interval"):
        return all(
            _broadcast_equal(a, b) for a, b in zip(interval_bounds(first), interval_bounds(second))
        )
    if kind == "bijective":
        first, second = unwrap_support(first), unwrap_support(second)
        return type(first) is type(second) and _same_attributes(first, second)
    return True


def _broadcast_equal(first: Any, second: Any) -> bool:
    try:
        return bool(torch.all(torch.as_tensor(first) == torch.as_tensor(second)))
    except RuntimeError:  # shapes that do not broadcast
        return False


def unwrap_prior(prior: Optional[torch.distributions.Distribution]) -> Any:
    """The distribution inside ``Independent``, ``expand`` and ``mask`` wrappers."""
    wrappers = (torch.distributions.Independent, ExpandedDistribution, MaskedDistribution)
    while isinstance(prior, wrappers):
        prior = prior.base_dist
    return prior


def check_same_support(family, site_name: str, support: constraints.Constraint, noun: str) -> None:
    """Raise ``ValueError`` when a family instance that carries its own support (an
    interval's bounds, a bijection's set) is given for a site whose support is another
    set; ``noun`` says what differs ("bounds", "support")."""
    if not same_bounds(family.support, support):
        raise ValueError(
            f"Site '{site_name}' has support {support!r} but the family given for it is "
            f"{family!r}; pass families={{'{site_name}': '{family.name}'}} to take the "
            f"site's own {noun}."
        )
