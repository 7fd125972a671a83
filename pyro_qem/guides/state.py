"""A guide's EM state, kept in Pyro's param store.

The state is the smoothed mean parameters of every site (float64, full plate sizes),
optionally their running average, and the number of updates taken. Keeping it in the
param store means ``pyro.get_param_store().save/load`` round-trips a fit, and a new
:class:`~pyro_qem.Inference` on the same guide continues where the last one stopped.
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch

import pyro

# (batch dim of a plate, indices of the minibatch): which plate elements a step touched.
Selection = Sequence[Tuple[int, torch.Tensor]]


def gather(tensor: torch.Tensor, selection: Selection, trailing: int) -> torch.Tensor:
    """The elements of ``tensor`` that ``selection`` picks (``trailing`` event dims)."""
    for dim, index in selection:
        tensor = tensor.index_select(dim - trailing, index)
    return tensor


def scatter_(tensor: torch.Tensor, selection: Selection, values: torch.Tensor, trailing: int) -> None:
    """In-place inverse of :func:`gather`."""
    if not selection:
        tensor.copy_(values)
        return
    (dim, index), rest = selection[0], selection[1:]
    sub = tensor.index_select(dim - trailing, index)
    scatter_(sub, rest, values, trailing)
    tensor.index_copy_(dim - trailing, index, sub)


class MomentState:
    """Param-store access for one guide's EM state.

    Names are predictable, like AutoNormal's ``locs.<site>``: ``<prefix>.<stat>.<site>``
    for the smoothed mean parameters (e.g. ``AutoQEM.z2.theta`` for E[z^2]),
    ``<prefix>.avg_<stat>.<site>`` and ``<prefix>.avg_count.<site>`` for their running
    average, and ``<prefix>.num_updates``.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def name(self, stat: str, site: str) -> str:
        return f"{self.prefix}.{stat}.{site}"

    @staticmethod
    def _leaf(name: str) -> torch.Tensor:
        # The param store keeps the unconstrained leaf; EM writes into it in place.
        return pyro.get_param_store()[name].unconstrained()

    def has(self, site: str, stats: Sequence[str]) -> bool:
        store = pyro.get_param_store()
        return all(self.name(s, site) in store for s in stats)

    def initialise(self, site: str, stats: Sequence[str], make: Callable[[], Sequence[torch.Tensor]]) -> None:
        """Create the site's state from ``make()`` unless the param store already has it."""
        if self.has(site, stats):
            return
        store = pyro.get_param_store()
        for stat, value in zip(stats, make()):
            store.setdefault(self.name(stat, site), value.detach().double().clone())

    def moments(self, site: str, stats: Sequence[str], averaged: bool = False) -> Tuple[torch.Tensor, ...]:
        """The site's mean parameters (the running average if ``averaged`` and present)."""
        store = pyro.get_param_store()
        if averaged and self.name("avg_count", site) in store:
            stats = [f"avg_{s}" for s in stats]
        return tuple(self._leaf(self.name(s, site)).detach() for s in stats)

    def selected(self, site: str, stats: Sequence[str], selection: Selection, batch_ndim: int,
                 averaged: bool = False) -> Tuple[torch.Tensor, ...]:
        """The site's mean parameters on the plate elements ``selection`` picks."""
        moments = self.moments(site, stats, averaged)
        return tuple(gather(m, selection, m.dim() - batch_ndim) for m in moments)

    @torch.no_grad()
    def update(
        self,
        site: str,
        stats: Sequence[str],
        estimates: Sequence[torch.Tensor],
        lr: float,
        selection: Selection,
        batch_ndim: int,
        average: bool,
    ) -> None:
        """``m <- (1 - lr) m + lr m_hat`` on the selected plate elements; then, if
        ``average``, fold the new ``m`` into the running average of those elements.

        :param batch_ndim: the number of batch dims of the site; the dims of each
            estimate after them are the statistic's own.
        """
        new: List[torch.Tensor] = []
        for stat, estimate in zip(stats, estimates):
            leaf = self._leaf(self.name(stat, site))
            trailing = estimate.dim() - batch_ndim
            current = gather(leaf, selection, trailing)
            updated = current + lr * (estimate.to(current) - current)
            scatter_(leaf, selection, updated, trailing)
            new.append(updated)
        if average:
            self._update_average(site, stats, new, selection, batch_ndim)

    def _update_average(self, site, stats, new: List[torch.Tensor], selection, batch_ndim) -> None:
        store = pyro.get_param_store()
        count_name = self.name("avg_count", site)
        if count_name not in store:
            batch = self._leaf(self.name(stats[0], site)).shape[:batch_ndim]
            store.setdefault(count_name, torch.zeros(batch, dtype=torch.float64, device=new[0].device))
            for stat in stats:
                store.setdefault(self.name(f"avg_{stat}", site), self._leaf(self.name(stat, site)).detach().clone())
        count_leaf = self._leaf(count_name)
        count = gather(count_leaf, selection, 0) + 1
        scatter_(count_leaf, selection, count, 0)
        for stat, value in zip(stats, new):
            leaf = self._leaf(self.name(f"avg_{stat}", site))
            trailing = value.dim() - batch_ndim
            current = gather(leaf, selection, trailing)
            weight = count.reshape(count.shape + (1,) * trailing)
            scatter_(leaf, selection, current + (value - current) / weight, trailing)

    def num_updates(self) -> int:
        store = pyro.get_param_store()
        name = f"{self.prefix}.num_updates"
        return int(store[name].item()) if name in store else 0

    @torch.no_grad()
    def count_update(self) -> None:
        store = pyro.get_param_store()
        name = f"{self.prefix}.num_updates"
        if name not in store:
            store.setdefault(name, torch.zeros((), dtype=torch.float64))
        self._leaf(name).add_(1)

