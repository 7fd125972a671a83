"""Where a site's K particles go in the tensor: each particle group has its own dim,
left of the model's plate dims (as Pyro's parallel enumeration places its dims)."""

from __future__ import annotations

import torch

import pyro.distributions as dist


def is_observed(msg) -> bool:
    return msg["type"] == "sample" and msg["is_observed"]


def in_dim(draws: torch.Tensor, q: dist.Distribution, dim: int) -> torch.Tensor:
    """Move the leading draw dim of ``draws`` (from ``q.sample((K,))``) to tensor dim
    ``dim`` (counted from the right of the batch part)."""
    batch = tuple(q.batch_shape)
    shape = draws.shape[:1] + (1,) * (-dim - 1 - len(batch)) + batch + tuple(q.event_shape)
    return draws.reshape(shape)


def in_sets_dim(draws: torch.Tensor, q: dist.Distribution, dim: int, sets_dim: int) -> torch.Tensor:
    """Like :func:`in_dim` for draws of shape ``(S, K) + q's shape`` (S independent
    particle sets): the sets go to tensor dim ``sets_dim``, left of ``dim``."""
    particles = in_dim(draws.reshape((-1,) + draws.shape[2:]), q, dim)
    shape = draws.shape[:1] + (1,) * (dim - sets_dim - 1) + draws.shape[1:2] + particles.shape[1:]
    return particles.reshape(shape)


def enumerated_support(prior: dist.Distribution, dim: int) -> torch.Tensor:
    """The prior's support in tensor dim ``dim``: exact enumeration replaces particles."""
    support = prior.enumerate_support(expand=False)
    size, event = support.shape[0], tuple(prior.event_shape)
    return support.reshape((size,) + (1,) * (-dim - 1) + event)
