"""A guide's EM state: tensors the guide owns, mirrored in Pyro's param store.

The state is the smoothed mean parameters of every moment-matched site (float64, full
plate sizes), optionally the running average of the iterates in the family's averaging
coordinates (:meth:`~pyro_qem.families.Family.to_average`), and the number of updates
taken. The
guide holds these tensors itself, so ``torch.save(guide)`` / ``torch.load`` and
``guide.state_dict()`` / ``load_state_dict()`` carry a fit, and clearing the param store
does not lose it. Each tensor is also registered in the param store under a predictable
name (like AutoNormal's ``locs.<site>``): ``<prefix>.<stat>.<site>``, e.g.
``AutoQEM.z2.theta`` for E[theta^2], ``<prefix>.avg_<coordinate>.<site>`` (e.g.
``AutoQEM.avg_variance.theta``) and ``<prefix>.avg_count.<site>`` for the running average, and ``<prefix>.num_updates``. So
``pyro.get_param_store().save/load`` (or ``get_state/set_state``) round-trips a fit as
it does for Pyro's guides: a tensor the guide finds in the store that no other live guide
owns (one loaded from a file) is adopted.

Two guides never share state silently. A guide whose default prefix is in use by
another live guide's state takes the next free one (``AutoQEM_2``, ...); an explicit
``prefix=`` that another live guide uses is an error. A tensor left in the store by a
guide that no longer exists is replaced by the new guide's own initial state, not
adopted.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch.distributions import constraints

import pyro

from ..model.selection import Selection, gather, scatter_

# param-store name -> (weak ref to the owning state, weak ref to the tensor it registered)
_OWNERS: Dict[str, Tuple[weakref.ref, weakref.ref]] = {}


def _owner_of(name: str, tensor: torch.Tensor) -> Optional[Tuple[bool, object]]:
    """``(alive, owner)`` if a MomentState of this process registered ``tensor`` under
    ``name``, None if the tensor came from elsewhere (a loaded file, the user)."""
    entry = _OWNERS.get(name)
    if entry is None or entry[1]() is not tensor:
        return None
    owner = entry[0]()
    return owner is not None, owner


class StateCollisionError(ValueError):
    """Two guides would share the same param-store names."""


class MomentState:
    """The EM state of one guide: its own tensors, registered in the param store.

    :param prefix: the prefix of the param-store names; None picks the guide class's
        name, or the next free ``<name>_<n>`` when another live guide's state holds it.
    :param default: the class name used when ``prefix`` is None.
    """

    def __init__(self, prefix: Optional[str], default: str) -> None:
        if prefix is not None and (not isinstance(prefix, str) or not prefix):
            raise ValueError(f"prefix must be a non-empty str or None, got {prefix!r}.")
        self.explicit = prefix is not None
        self.prefix = prefix if prefix is not None else default
        self.tensors: Dict[str, torch.Tensor] = {}  # key "<stat>.<site>" -> tensor

    # ------------------------------------------------------------------ pickling

    def __getstate__(self) -> dict:
        return {"explicit": self.explicit, "prefix": self.prefix,
                "tensors": {k: v.detach().clone() for k, v in self.tensors.items()}}

    def __setstate__(self, state: dict) -> None:
        state["tensors"] = {k: v.requires_grad_(True) for k, v in state["tensors"].items()}
        self.__dict__.update(state)

    # --------------------------------------------------------------------- names

    def name(self, stat: str, site: str) -> str:
        return f"{self.prefix}.{stat}.{site}"

    def _full(self, key: str) -> str:
        return f"{self.prefix}.{key}"

    def claim(self, keys: Sequence[str]) -> None:
        """Settle the prefix before creating state: move off a prefix whose names hold
        another live guide's tensors (default prefix), or refuse (explicit prefix)."""
        store = pyro.get_param_store()
        base = self.prefix
        for n in itertools.count(2):
            clash = self._clash(keys, store)
            if clash is None:
                break
            if self.explicit:
                raise StateCollisionError(
                    f"prefix='{self.prefix}': the param store's '{clash}' belongs to another "
                    "live guide, so this guide would overwrite its fit. Give each guide its "
                    "own prefix= (e.g. prefix='model_b'), or delete the other guide first."
                )
            self.prefix = f"{base}_{n}"
        self._init_counter(store)

    def rejoin(self) -> None:
        """Register a loaded guide's state in the param store (``torch.load`` of a saved
        guide), settling its prefix as :meth:`claim` does, so that guides created later
        see the prefix taken instead of taking it and locking this one out."""
        try:
            self.claim(list(self.tensors))
        except StateCollisionError:
            # An explicit prefix a live guide holds (a copy of that guide): the clash is
            # reported when this one is used, as before.
            return
        for key, tensor in list(self.tensors.items()):
            self._register(key, tensor)

    def _init_counter(self, store) -> None:
        # The update counter exists from set-up on, so that a second guide sees that
        # this prefix is taken even before either has stepped.
        if "num_updates" in self.tensors:
            self._register("num_updates", self.tensors["num_updates"])
            return
        adopted = self._adoptable("num_updates", store)
        self._register("num_updates", adopted if adopted is not None
                       else torch.zeros((), dtype=torch.float64))

    def _clash(self, keys: Sequence[str], store) -> Optional[str]:
        for key in keys:
            name = self._full(key)
            if name in store._params:
                owner = _owner_of(name, store._params[name])
                if owner is not None and owner[0] and owner[1] is not self:
                    return name
        return None

    # -------------------------------------------------------------- creating state

    def initialise(self, site: str, stats: Sequence[str], make: Callable[[], Sequence[torch.Tensor]]) -> None:
        """Give the site's statistics a tensor each: this guide's own (e.g. from
        :meth:`load_state_dict`), else an unowned one in the param store (a restored fit),
        else the fresh initial state ``make()``. Own or restored tensors must have the
        fresh state's shapes."""
        keys = [f"{s}.{site}" for s in stats]
        fresh = [value.detach().double().clone() for value in make()]
        if all(k in self.tensors for k in keys):
            chosen = [self.tensors[k] for k in keys]
        else:
            store = pyro.get_param_store()
            adopted = [self._adoptable(k, store) for k in keys]
            chosen = adopted if all(t is not None for t in adopted) else fresh
            if chosen is adopted:
                # A restored fit: its running average too, or outputs would read the
                # last iterate instead of the averaged q.
                for key in self._stored_average_keys(site, store):
                    tensor = self._adoptable(key, store)
                    if tensor is not None:
                        self._register(key, tensor)
        for key, tensor, new in zip(keys, chosen, fresh):
            self._check_shape(key, site, tensor, new.shape)
            self._register(key, tensor)

    def _stored_average_keys(self, site: str, store) -> List[str]:
        """The keys (without prefix) of the site's running average in the param store."""
        head = f"{self.prefix}.avg_"
        keys = []
        for name in store._params:
            if name.startswith(head):
                key = name[len(self.prefix) + 1:]
                if key.split(".", 1)[1] == site:
                    keys.append(key)
        return keys

    def _adoptable(self, key: str, store) -> Optional[torch.Tensor]:
        name = self._full(key)
        if name not in store._params:
            return None
        tensor = store._params[name]
        owner = _owner_of(name, tensor)
        if owner is None or owner[1] is self:
            return tensor
        return None  # left by a guide that is gone: not this guide's fit

    def _check_shape(self, key: str, site: str, tensor: torch.Tensor, shape: torch.Size) -> None:
        if tuple(tensor.shape) != tuple(shape):
            raise StateCollisionError(
                f"Site '{site}': the state '{self._full(key)}' has shape {tuple(tensor.shape)}, "
                f"but this model's site needs {tuple(shape)}. It belongs to another model's "
                "fit: pass a different prefix= to this guide, or pyro.clear_param_store() "
                "before creating it (or load a state_dict saved from a guide of this model)."
            )

    def _register(self, key: str, tensor: torch.Tensor) -> None:
        if not tensor.requires_grad:
            # A leaf that requires grad, as Pyro's param store keeps them: SVI on the
            # guide (Trace_ELBO) then fits the mean parameters by gradient too.
            tensor = tensor.detach().requires_grad_(True)
        self.tensors[key] = tensor
        name = self._full(key)
        store = pyro.get_param_store()
        if store._params.get(name) is not tensor:
            # The store keeps unconstrained leaves; EM writes into them in place.
            store._params[name] = tensor
            store._param_to_name[tensor] = name
            store._constraints[name] = constraints.real
        _OWNERS[name] = (weakref.ref(self), weakref.ref(tensor))

    # ---------------------------------------------------------------- reading state

    def leaf(self, key: str) -> torch.Tensor:
        """The tensor of ``key``: the param store's if it holds one this guide may use
        (a restored fit is adopted), else the guide's own (re-registered, e.g. after
        ``pyro.clear_param_store()``)."""
        store = pyro.get_param_store()
        name = self._full(key)
        current = store._params.get(name)
        own = self.tensors.get(key)
        if current is not None and current is not own:
            owner = _owner_of(name, current)
            if owner is not None and owner[0] and owner[1] is not self:
                raise StateCollisionError(
                    f"The param store's '{name}' now belongs to another guide with the same "
                    "prefix, created after this one. Give the guides different prefix= "
                    "values, or keep using the newer guide."
                )
            self._register(key, current)
            return current
        if own is None:
            raise KeyError(
                f"This guide has no state '{key}' (prefix '{self.prefix}'): it was never set "
                "up for that site, or its state was lost. Restore it with "
                "guide.load_state_dict(...) or pyro.get_param_store().load(...) of a saved "
                "fit, or create a new guide."
            )
        if current is None:
            self._register(key, own)
        return own

    def has(self, site: str, stats: Sequence[str]) -> bool:
        return all(f"{s}.{site}" in self.tensors for s in stats)

    def moments(self, site: str, stats: Sequence[str]) -> Tuple[torch.Tensor, ...]:
        """The site's current (smoothed) mean parameters."""
        return tuple(self.leaf(f"{s}.{site}").detach() for s in stats)

    def has_average(self, site: str) -> bool:
        """Whether the site has a running average of its iterates."""
        return f"avg_count.{site}" in self.tensors

    def average(self, site: str, names: Sequence[str], selection: Selection = (),
                batch_ndim: int = 0) -> Dict[str, torch.Tensor]:
        """The running average of the site's averaging coordinates (see
        :meth:`~pyro_qem.families.Family.to_average`), on the selected plate elements."""
        out = {}
        for name in names:
            value = self.leaf(f"avg_{name}.{site}").detach()
            out[name] = gather(value, selection, value.dim() - batch_ndim)
        return out

    def average_names(self, site: str) -> List[str]:
        """The names of the site's averaging coordinates, in the order they were made."""
        prefix, suffix = "avg_", f".{site}"
        return [key[len(prefix):-len(suffix)] for key in self.tensors
                if key.startswith(prefix) and key.endswith(suffix) and key != f"avg_count{suffix}"]

    def selected(self, site: str, stats: Sequence[str], selection: Selection, batch_ndim: int
                 ) -> Tuple[torch.Tensor, ...]:
        """The site's mean parameters on the plate elements ``selection`` picks."""
        moments = self.moments(site, stats)
        return tuple(gather(m, selection, m.dim() - batch_ndim) for m in moments)

    # ---------------------------------------------------------------- writing state

    @torch.no_grad()
    def update(self, site: str, stats: Sequence[str], estimates: Sequence[torch.Tensor], lr: float,
               selection: Selection, batch_ndim: int) -> List[torch.Tensor]:
        """``m <- (1 - lr) m + lr m_hat`` on the selected plate elements.

        :param batch_ndim: the number of batch dims of the site; the dims of each
            estimate after them are the statistic's own.
        :returns: the new mean parameters of the selected elements.
        """
        new: List[torch.Tensor] = []
        for stat, estimate in zip(stats, estimates):
            leaf = self.leaf(f"{stat}.{site}")
            trailing = estimate.dim() - batch_ndim
            current = gather(leaf, selection, trailing)
            updated = current + lr * (estimate.to(current) - current)
            scatter_(leaf, selection, updated, trailing)
            new.append(updated)
        return new

    @torch.no_grad()
    def update_average(self, site: str, coordinates: Mapping[str, torch.Tensor], selection: Selection,
                       batch_ndim: int, full: Mapping[str, torch.Tensor],
                       restart: Optional[torch.Tensor] = None) -> None:
        """Fold one iterate's averaging coordinates (of the selected elements) into the
        site's running average.

        :param full: the coordinates of every plate element, used once to start the
            average (elements never selected keep their current value).
        :param restart: a bool per selected element: start its average anew from this
            iterate.
        """
        count_key = f"avg_count.{site}"
        if count_key not in self.tensors:
            first = next(iter(full.values()))
            self._register(count_key, torch.zeros(first.shape[:batch_ndim], dtype=torch.float64,
                                                  device=first.device))
            for name, value in full.items():
                self._register(f"avg_{name}.{site}", value.detach().double().clone())
        count_leaf = self.leaf(count_key)
        count = gather(count_leaf, selection, 0)
        if restart is not None:
            count = torch.where(restart.to(count.device), torch.zeros_like(count), count)
        count = count + 1
        scatter_(count_leaf, selection, count, 0)
        for name, value in coordinates.items():
            leaf = self.leaf(f"avg_{name}.{site}")
            trailing = value.dim() - batch_ndim
            current = gather(leaf, selection, trailing)
            weight = count.reshape(count.shape + (1,) * trailing)
            scatter_(leaf, selection, current + (value.to(current) - current) / weight, trailing)

    def num_updates(self) -> int:
        """The number of QEM updates taken (0 before set-up)."""
        if "num_updates" not in self.tensors:
            return 0
        return int(self.leaf("num_updates").item())

    @torch.no_grad()
    def count_update(self) -> None:
        """Add one to the update counter."""
        self.leaf("num_updates").add_(1)

    @contextlib.contextmanager
    def substituted(self, values: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Within this block the guide reads and writes ``values[key]`` in place of its
        own tensor of each key (in the param store too), then its own tensors are back,
        untouched. A traced step runs on copies this way, so that it can return the new
        state instead of writing it (:mod:`pyro_qem.infer.compiled`)."""
        store = pyro.get_param_store()
        saved = {key: self.tensors[key] for key in values}
        try:
            for key, value in values.items():
                self.tensors[key] = value
                store._params[self._full(key)] = value
            yield
        finally:
            for key, tensor in saved.items():
                self.tensors[key] = tensor
                store._params[self._full(key)] = tensor

    # ------------------------------------------------------------------ state dicts

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Copies of every state tensor, keyed ``<stat>.<site>`` (no prefix)."""
        return {key: self.leaf(key).detach().clone() for key in self.tensors}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace the state by ``state`` (from :meth:`state_dict`); registered in the
        param store under this guide's prefix."""
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"state_dict entry '{key}' must be a tensor, got {type(value).__name__}.")
        self.tensors = {}
        for key, value in state.items():
            self._register(key, value.detach().clone().double())
