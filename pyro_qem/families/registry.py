"""The registry: which family models a site, chosen from its support or by the user."""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Type, Union

import torch
from torch.distributions import constraints

from .base import REQUIRED_CLASS_ATTRIBUTES, Family
from .bernoulli import Bernoulli, Binomial
from .categorical import Categorical, Multinomial, OneHotCategorical
from .dirichlet import Beta, Dirichlet
from .exponential import Exponential, HalfNormal
from .gamma import Gamma, InverseGamma
from .lognormal import LogNormal
from .mvn import MultivariateNormal
from .normal import Normal
from .poisson import Poisson
from .scaled_beta import ScaledBeta
from .support import KIND_DESCRIPTIONS, support_kind, support_matches
from .transformed import Unconstrained
from .vonmises import VonMises

#: Every built-in family by the name users pass in ``families={"site": name}``.
FAMILIES: Dict[str, Type[Family]] = {
    cls.name: cls
    for cls in (
        Normal,
        MultivariateNormal,
        Gamma,
        LogNormal,
        InverseGamma,
        Exponential,
        HalfNormal,
        Beta,
        ScaledBeta,
        Dirichlet,
        Bernoulli,
        Categorical,
        OneHotCategorical,
        Binomial,
        Multinomial,
        Poisson,
        VonMises,
        Unconstrained,
    )
}


def _defaults_by_kind(families: Iterable[Type[Family]]) -> Dict[str, Type[Family]]:
    """Each support kind's default family, from the families' ``default_for``.

    :raises RuntimeError: when two families claim one kind, a family claims a kind its
        support is not, or a kind has no default; at import, so no site meets it later.
    """
    defaults: Dict[str, Type[Family]] = {}
    for cls in families:
        for kind in cls.default_for:
            if kind in defaults:
                raise RuntimeError(
                    f"Both {defaults[kind].__name__} and {cls.__name__} set default_for "
                    f"{kind!r}; remove it from one of them."
                )
            if kind != support_kind(cls.support):
                raise RuntimeError(
                    f"{cls.__name__}.default_for names {kind!r}, but its support "
                    f"{cls.support!r} is of kind {support_kind(cls.support)!r}."
                )
            defaults[kind] = cls
    missing = [kind for kind in KIND_DESCRIPTIONS if kind not in defaults]
    if missing:
        raise RuntimeError(f"No family sets default_for for the support kinds {missing}.")
    # In KIND_DESCRIPTIONS' order, which error messages list the kinds in.
    return {kind: defaults[kind] for kind in KIND_DESCRIPTIONS}


# The family chosen for each kind of support when the user does not choose one.
_DEFAULTS: Dict[str, Type[Family]] = _defaults_by_kind(FAMILIES.values())

FamilySpec = Union[None, str, Family, Type[Family]]


def compatible_families(support: constraints.Constraint, event_shape: torch.Size) -> List[str]:
    """Names of the built-in families that can model a site with this support and shape.

    :param support: the support of the site's prior.
    :param event_shape: the site's event shape.
    :returns: family names, in the order of :data:`FAMILIES`.
    """
    return [
        name
        for name, cls in FAMILIES.items()
        if support_matches(cls.support, support) and len(event_shape) in cls.event_dims
    ]


def default_family(
    site_name: str,
    support: constraints.Constraint,
    event_shape: torch.Size,
    *,
    prior: Optional[torch.distributions.Distribution] = None,
) -> Family:
    """The family a site gets when the user does not choose one, from its support.

    real -> Normal (per coordinate for vectors and matrices), or MultivariateNormal for
    a MultivariateNormal prior, or VonMises for a VonMises prior (angles); positive or nonnegative ->
    Gamma; unit interval -> Beta; another interval with fixed bounds -> ScaledBeta;
    simplex -> Dirichlet; boolean -> Bernoulli; ``integer_interval(0, C - 1)`` ->
    Categorical, or Binomial when the prior is one; nonnegative integer -> Poisson;
    multinomial -> Multinomial; one-hot -> OneHotCategorical; any other continuous
    support that ``biject_to`` reaches (``corr_cholesky``, ``greater_than(c)``,
    ``ordered_vector``, ...) -> Unconstrained.

    :param site_name: the site's name, for error messages.
    :param support: the support of the site's prior.
    :param event_shape: the site's event shape.
    :param prior: the site's prior; gives Binomial/Multinomial total counts and lets
        ScaledBeta check that its bounds are fixed.
    :returns: a family instance.
    :raises ValueError: when no family handles the support or the event shape.

    Example::

        default_family("tau", dist.HalfCauchy(1.0).support, torch.Size())  # Gamma()
    """
    kind = support_kind(support)
    if kind is None:
        raise ValueError(_unsupported_message(site_name, support, event_shape))
    family = _build(_default_class(kind, prior), site_name, support, prior)
    _check_event_shape(site_name, family, support, event_shape)
    return family


def _default_class(
    kind: str, prior: Optional[torch.distributions.Distribution]
) -> Type[Family]:
    """The first family of this kind that prefers the prior, else the kind's default."""
    for cls in FAMILIES.values():
        if support_kind(cls.support) == kind and cls.preferred_for(prior):
            return cls
    return _DEFAULTS[kind]


def resolve_family(
    site_name: str,
    override: FamilySpec,
    support: constraints.Constraint,
    event_shape: torch.Size,
    *,
    prior: Optional[torch.distributions.Distribution] = None,
) -> Family:
    """The family for a site given the user's choice (or :func:`default_family` if None).

    :param site_name: the site's name, for error messages.
    :param override: a family name (case-insensitive, a key of :data:`FAMILIES`), a
        :class:`Family` instance, a :class:`Family` subclass, or None.
    :param support: the support of the site's prior.
    :param event_shape: the site's event shape.
    :param prior: the site's prior; gives Binomial/Multinomial total counts.
    :returns: a family instance whose support and event shape fit the site.
    :raises ValueError: for an unknown name, a family whose support does not match the
        site's, or one that cannot handle the site's event shape.
    :raises TypeError: when ``override`` is none of the accepted kinds, or a family that
        lacks a required class attribute or abstract method.

    Example::

        resolve_family("tau", "LogNormal", constraints.nonnegative, torch.Size())
    """
    if override is None:
        return default_family(site_name, support, event_shape, prior=prior)
    if isinstance(override, str):
        override = _lookup(site_name, override)
    if isinstance(override, type) and issubclass(override, Family):
        _check_declared(site_name, override)
        _check_support(site_name, override, support, event_shape)
        family = _build(override, site_name, support, prior)
    elif isinstance(override, Family):
        family = override
        _check_declared(site_name, type(family))
        _check_support(site_name, family, support, event_shape)
    else:
        raise TypeError(
            f"Site '{site_name}': a family override must be a family name, a Family "
            f"instance or a Family subclass, got {override!r} of type {type(override).__name__}."
        )
    _check_event_shape(site_name, family, support, event_shape)
    check_site = getattr(family, "check_site", None)
    if check_site is not None:
        check_site(site_name, support)
    return family


def _lookup(site_name: str, name: str) -> Type[Family]:
    by_lower = {key.lower(): cls for key, cls in FAMILIES.items()}
    cls = by_lower.get(name.lower())
    if cls is None:
        raise ValueError(
            f"Site '{site_name}': unknown family name '{name}'. Valid names: "
            f"{', '.join(FAMILIES)}; or pass a Family instance or subclass."
        )
    return cls


def _check_declared(site_name: str, cls: Type[Family]) -> None:
    """Raise ``TypeError`` if a (user's) family class lacks a required class attribute.

    Checked on the class even for an instance: the registry reads ``name`` and
    ``support`` from classes before it builds one (instances may only refine
    ``support``, as Binomial's does).
    """
    missing = [attr for attr in REQUIRED_CLASS_ATTRIBUTES if not hasattr(cls, attr)]
    if missing:
        raise TypeError(
            f"Site '{site_name}': family class {cls.__name__} does not set the class "
            f"attribute(s) {', '.join(missing)}. Set them in the class body, e.g. "
            f"name = '{cls.__name__}' (the name shown in messages), support = "
            f"constraints.real (the support of q) and stat_names = ('z', 'z2') (one short "
            f"name per sufficient statistic)."
        )


def _check_abstract(site_name: str, cls: Type[Family]) -> None:
    """Raise ``TypeError`` naming the abstract methods ``cls`` leaves unimplemented."""
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise TypeError(
            f"Site '{site_name}': family {cls.__name__} does not implement the abstract "
            f"method(s) {', '.join(missing)} of Family; implement them in "
            f"{cls.__name__} (see Family's docstrings for what each returns)."
        )


def _build(
    cls: Type[Family],
    site_name: str,
    support: constraints.Constraint,
    prior: Optional[torch.distributions.Distribution],
) -> Family:
    """An instance of ``cls``: via its ``from_site`` hook if it has one, else ``cls()``."""
    # Checked first: Python's own error would be reworded below as a missing argument.
    _check_abstract(site_name, cls)
    from_site = getattr(cls, "from_site", None)
    if from_site is not None:
        return from_site(site_name, support, prior)
    try:
        return cls()
    except TypeError as error:
        raise ValueError(
            f"Site '{site_name}': cannot construct {cls.__name__}() without arguments "
            f"({error}); pass an instance, e.g. families={{'{site_name}': "
            f"{cls.__name__}(...)}}."
        ) from error


def _check_support(
    site_name: str,
    family: Union[Family, Type[Family]],
    support: constraints.Constraint,
    event_shape: torch.Size,
) -> None:
    if support_matches(family.support, support):
        return
    name = family.name
    compatible = compatible_families(support, event_shape)
    suggestion = ", ".join(compatible) if compatible else "none of the built-in families"
    raise ValueError(
        f"Site '{site_name}' has support {support!r}, but family '{name}' has support "
        f"{family.support!r}, which does not match. Families compatible with this site: "
        f"{suggestion}."
    )


def _check_event_shape(
    site_name: str, family: Family, support: constraints.Constraint, event_shape: torch.Size
) -> None:
    if family.supports_event_shape(event_shape):
        return
    compatible = compatible_families(support, event_shape)
    suggestion = ", ".join(compatible) if compatible else "none of the built-in families"
    raise ValueError(
        f"Site '{site_name}' has event shape {tuple(event_shape)}, but family "
        f"'{family.name}' handles event dims {family.event_dims} only. Families for this "
        f"support and event shape: {suggestion}. Change the site's .to_event(...) or "
        f"choose another family."
    )


def _unsupported_message(
    site_name: str, support: constraints.Constraint, event_shape: torch.Size
) -> str:
    by_kind = "; ".join(
        f"{KIND_DESCRIPTIONS[kind]}: "
        + ", ".join(n for n, c in FAMILIES.items() if support_kind(c.support) == kind)
        for kind in _DEFAULTS
    )
    return (
        f"Site '{site_name}' has support {support!r} (event shape {tuple(event_shape)}), "
        f"which no QEM family handles. Families by support: {by_kind}. Reparameterise the "
        f"site onto one of these supports (e.g. sample an unconstrained latent and "
        f"transform it with pyro.deterministic), or pass a Family instance whose support "
        f"matches via families={{'{site_name}': ...}}."
    )
