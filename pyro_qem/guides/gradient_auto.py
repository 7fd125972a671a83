"""AutoGradientNormal: a mean-field Normal guide fitted by gradient on the estimator.

The gradient baselines of the QEM paper: MP-VI (``Inference(..., optim=..., objective="vi")``,
or :class:`~pyro_qem.infer.MPVI`) and MP-RWS (``objective="rws"``) on the same massively
parallel estimator that QEM uses, with q parameterised as Pyro's AutoNormal does (a
location and a positive scale per plate element).
"""

from __future__ import annotations

from typing import Dict, Sequence

from pyro.distributions import constraints

import pyro
import pyro.distributions as dist

from ..families import Normal, Unconstrained
from ..model import Prototype, SiteInfo, gather
from .initialisation import initial_state
from .qem_guide import QEMGuide


class AutoGradientNormal(QEMGuide):
    """q = Normal(loc, scale) per plate element for every latent site, with ``loc`` and
    ``scale`` as ``pyro.param`` s named ``<prefix>.loc.<site>`` and ``<prefix>.scale.<site>``,
    initialised like :class:`~pyro_qem.guides.AutoQEM` (moment-matched to prior draws).

    Example::

        guide = AutoGradientNormal(model)
        mpvi = Inference(model, guide, K=10, optim=pyro.optim.Adam({"lr": 0.01}))
        loss = mpvi.step(data)

    A site with a constrained support (a positive scale, an interval) gets its Normal on
    the unconstrained space, pushed through ``biject_to(support)`` as Pyro's AutoNormal
    does (``loc`` and ``scale`` are then unconstrained); supports whose bijection changes
    the shape (simplex, correlation Cholesky factors) are refused with an error.
    """

    def get_family(self, site: SiteInfo, prior: dist.Distribution) -> None:
        family = _family(site)
        if isinstance(family, Unconstrained) and \
                family.unconstrained_shape(site.event_shape) != site.event_shape:
            raise ValueError(
                f"AutoGradientNormal: site '{site.name}' has support {site.support}, whose "
                "bijection from the reals changes its shape; use AutoQEM, which picks a "
                "family per support."
            )
        return None

    def init_gradient_sites(self, prototypes: Sequence[Prototype]) -> None:
        store = pyro.get_param_store()
        for name, site in self.structure.sites.items():
            if self._name("loc", name) in store:
                continue
            family = _family(site)
            moments = initial_state(site, family, prototypes, self.init)
            params = family.params_from_moments(moments, site.event_shape)
            for key, constraint in (("loc", constraints.real), ("scale", constraints.softplus_positive)):
                value = params[key].to(dtype=site.dtype, device=site.device)
                store.setdefault(self._name(key, name), value, constraint)

    def get_posterior(self, name: str, prior: dist.Distribution) -> dist.Distribution:
        site = self.structure.sites[name]
        loc, scale = (pyro.param(self._name(k, name)) for k in ("loc", "scale"))
        trailing = len(site.event_shape)
        loc, scale = gather(loc, self.selection, trailing), gather(scale, self.selection, trailing)
        return _family(site).distribution({"loc": loc, "scale": scale}, site.event_shape)

    def distributions(self, averaged: bool = True) -> Dict[str, dist.Distribution]:
        """Site name -> the fitted ``Normal(loc, scale)`` (full plate sizes; there is no
        iterate average for gradient fits, so ``averaged`` is ignored)."""
        if self.structure is None:
            raise RuntimeError("The guide has no distributions before its first step.")
        store = pyro.get_param_store()
        return {
            name: _family(site).distribution(
                {key: store[self._name(key, name)].detach() for key in ("loc", "scale")},
                site.event_shape)
            for name, site in self.structure.sites.items()
        }

    def _name(self, key: str, site: str) -> str:
        return f"{self.state.prefix}.{key}.{site}"


def _family(site: SiteInfo):
    """Normal for a real site, else a Normal on the unconstrained space."""
    base = site.support
    while isinstance(base, constraints.independent):
        base = base.base_constraint
    return Normal() if isinstance(base, type(constraints.real)) else Unconstrained(site.support)
