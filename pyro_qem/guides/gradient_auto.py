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

from ..families import Normal
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

    Only real-valued sites are supported (like AutoNormal without transforms).
    """

    def get_family(self, site: SiteInfo, prior: dist.Distribution) -> None:
        if not isinstance(_base(site.support), type(constraints.real)):
            raise ValueError(
                f"AutoGradientNormal supports real-valued sites only; site '{site.name}' has "
                f"support {site.support}. Use AutoQEM, which picks a family per support."
            )
        return None

    def init_gradient_sites(self, prototypes: Sequence[Prototype]) -> None:
        store = pyro.get_param_store()
        family = Normal()
        for name, site in self.structure.sites.items():
            if self._name("loc", name) in store:
                continue
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
        return dist.Normal(loc, scale).to_event(trailing)

    def distributions(self, averaged: bool = True) -> Dict[str, dist.Distribution]:
        """Site name -> the fitted ``Normal(loc, scale)`` (full plate sizes; there is no
        iterate average for gradient fits, so ``averaged`` is ignored)."""
        if self.structure is None:
            raise RuntimeError("The guide has no distributions before its first step.")
        store = pyro.get_param_store()
        return {
            name: dist.Normal(store[self._name("loc", name)].detach(),
                              store[self._name("scale", name)].detach()).to_event(len(site.event_shape))
            for name, site in self.structure.sites.items()
        }

    def _name(self, key: str, site: str) -> str:
        return f"{self.state.prefix}.{key}.{site}"


def _base(support):
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support
