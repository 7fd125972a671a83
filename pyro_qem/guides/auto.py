"""AutoQEM: one moment-matched q per latent site, with the family chosen by support."""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import pyro.distributions as dist

from ..families import Family
from ..model import SiteInfo
from .qem_guide import QEMGuide

FamilySpec = Union[str, Family, type]


class AutoQEM(QEMGuide):
    """A mean-field guide fitted by QEM: every latent site gets its own q, with separate
    parameters per plate element, from a family that matches the site's support
    (real -> Normal, positive -> Gamma, unit interval -> Beta, other fixed intervals ->
    ScaledBeta, simplex -> Dirichlet, boolean -> Bernoulli, integer interval ->
    Categorical, nonnegative integer -> Poisson, one-hot -> OneHotCategorical, and any
    other continuous support with a bijection, such as ``LKJCholesky``'s, ->
    Unconstrained: a Normal on the unconstrained space; see
    :func:`pyro_qem.families.default_family`).

    Example::

        def model(y):
            mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
            with pyro.plate("groups", 8):
                theta = pyro.sample("theta", dist.Normal(mu, 2.0))
                pyro.sample("obs", dist.Normal(theta, 1.0), obs=y)

        guide = AutoQEM(model)
        inference = Inference(model, guide, K=30, lr=0.1)
        for step in range(200):
            loss = inference.step(y)
        guide.distributions()  # {"mu": Normal(...), "theta": Normal(batch (8,))}

    :param model: the Pyro model.
    :param families: per-site overrides: a family name (``"LogNormal"``), a
        :class:`~pyro_qem.families.Family` instance or class.
    :param groups: lists of latent site names that share one particle dim, e.g.
        ``[["mu_beta", "sigma_beta"]]``; ``-log K`` then counts once per group.
    :param kwargs: see :class:`~pyro_qem.guides.QEMGuide`.
    """

    def __init__(
        self,
        model: Callable,
        *,
        families: Optional[Mapping[str, FamilySpec]] = None,
        groups: Optional[Sequence[Iterable[str]]] = None,
        max_plate_nesting: Optional[int] = None,
        init_loc_fn: Optional[Callable] = None,
        init_scale=None,
        prefix: Optional[str] = None,
        noncentre: Union[None, str, Sequence[str]] = "auto",
    ) -> None:
        super().__init__(model, groups=groups, max_plate_nesting=max_plate_nesting,
                         init_loc_fn=init_loc_fn, init_scale=init_scale, prefix=prefix,
                         noncentre=noncentre)
        self.family_overrides = dict(families or {})

    def setup(self, *args, **kwargs):
        structure = super().setup(*args, **kwargs)
        unknown = sorted(set(map(self.site_name, self.family_overrides)) - set(structure.sites))
        if unknown:
            raise ValueError(
                f"families: {unknown} are not latent sample sites of the model "
                f"(latent sites: {sorted(structure.sites)})."
            )
        return structure

    def get_family(self, site: SiteInfo, prior: dist.Distribution) -> Family:
        from ..families import registry

        overrides = {self.site_name(k): v for k, v in self.family_overrides.items()}
        override = overrides.get(site.name)
        if override is None:
            return registry.default_family(site.name, site.support, site.event_shape, prior=prior)
        return registry.resolve_family(site.name, override, site.support, site.event_shape,
                                       prior=prior)
