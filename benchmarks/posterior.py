"""Each method's current approximate posterior as ``{site: distribution}``, and what
the metrics need from it: independent draws, and a Pyro guide that samples it.

Every fitted guide here is mean-field, so its q's fully describe it. Drawing is one
small function (:func:`draw`): once QEM guides are ordinary Pyro guides it can call the
guide instead.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch

import pyro
import pyro.distributions as dist
from pyro.infer.autoguide import AutoNormal

Posterior = Dict[str, dist.Distribution]


def draw(posterior: Posterior, num: int) -> Dict[str, torch.Tensor]:
    """``num`` joint draws, each site sampled independently from its q: site ->
    tensor of shape ``(num,) + batch_shape + event_shape``."""
    with torch.no_grad():
        return {name: q.sample((num,)) for name, q in posterior.items()}


def as_guide(posterior: Posterior) -> Callable:
    """A Pyro guide that samples every site from its q (for ``Trace_ELBO``)."""

    def guide(*args, **kwargs) -> None:
        for name, q in posterior.items():
            pyro.sample(name, q)

    return guide


def autonormal_posterior(guide: AutoNormal) -> Posterior:
    """The q's of a fitted :class:`~pyro.infer.autoguide.AutoNormal` (real sites)."""
    posterior: Posterior = {}
    with torch.no_grad():
        for name, site in guide.prototype_trace.iter_stochastic_nodes():
            loc, scale = guide._get_loc_and_scale(name)
            q = dist.Normal(loc.detach().clone(), scale.detach().clone())
            posterior[name] = q.to_event(site["fn"].event_dim)
    return posterior


def gradient_normal_posterior(guide) -> Posterior:
    """The q's of a fitted :class:`pyro_qem.AutoGradientNormal` (MP-VI / MP-RWS): Normals
    on each site's unconstrained space, pushed onto its support."""
    return guide.distributions()


def moments(posterior: Posterior) -> Dict[str, Dict[str, torch.Tensor]]:
    """Posterior mean and sd of every site."""
    return {name: {"mean": q.mean, "sd": q.stddev} for name, q in posterior.items()}
