"""See where a model indexes a plated latent with an integer tensor: ``a[..., county]``.

The standard hierarchical regression keeps its data as one long table and looks up each
row's group effect by an index column::

    with pyro.plate("county", C):
        a = pyro.sample("a", dist.Normal(mu, sigma_a))
    with pyro.plate("house", N):
        pyro.sample("y", dist.Normal(a[..., county] + b * x, sigma), obs=y)

:class:`IndexProbe` hands the model each chosen latent's value as an
:class:`IndexedValue`, a tensor subclass that records every integer-tensor index
applied to one of the site's plate dims (``value[..., index]``,
``value.index_select(dim, index)``) with the plates active at that moment. Elementwise
arithmetic keeps the record (:data:`ELEMENTWISE`: ``mu + sigma * a_raw``, the
non-centred form, and the deterministic site of Pyro's ``LocScaleReparam``, are still
one county's value per element), and so do ``unsqueeze``/``squeeze`` right of the plate
dims and batched matrix products that keep them in the batch part (the non-centred
multivariate form ``mu + (L @ z.unsqueeze(-1)).squeeze(-1)``); every other operation
returns a plain tensor, so nothing downstream changes. The estimator then knows that each house depends on one
county's particles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.util import site_is_subsample

# A plate active when an index was applied: (name, dim, size).
ActivePlate = Tuple[str, int, int]


@dataclass(frozen=True)
class IndexUse:
    """One integer-tensor index applied to a plate dim of a latent site's value.

    :ivar site: the latent site whose value was indexed.
    :ivar plate: the plate whose dim the index addresses (the indexed plate).
    :ivar index: the index, flattened to 1-D (one entry per element of the result).
    :ivar batch_dim: where the indexed entries sit in the result, as a batch dim of the
        consuming site (negative, the plate dims' convention).
    :ivar active: the vectorised plates active when the index was applied.
    """

    site: str
    plate: str
    index: torch.Tensor
    batch_dim: int
    active: Tuple[ActivePlate, ...]


# Operations whose output element i depends only on input element i (after
# right-aligned broadcasting): a value derived by them from one latent is still that
# latent's value per plate element. Anything else (reductions, reshapes, flips, matrix
# products) returns a plain tensor, so an index applied afterwards is not recorded.
ELEMENTWISE = frozenset(
    getattr(owner, name)
    for owner in (torch, torch.Tensor)
    for name in ("add", "sub", "mul", "div", "true_divide", "neg", "exp", "log", "log1p",
                 "expm1", "sigmoid", "tanh", "pow", "sqrt", "square", "abs", "clamp",
                 "where", "softplus", "to", "double", "float", "clone", "contiguous",
                 "expand", "expand_as", "__add__", "__radd__", "__sub__", "__rsub__",
                 "__mul__", "__rmul__", "__truediv__", "__rtruediv__", "__neg__", "__pow__",
                 "__rpow__")
    if hasattr(owner, name)
) | {torch.nn.functional.softplus}


class IndexedValue(torch.Tensor):
    """A latent's value that records integer-tensor indexing of its plate dims."""

    _qem_site: Union[str, Tuple[str, ...]]  # several: stacked latents of one plate
    _qem_plates: Dict[int, str]  # value dim (negative, event dims included) -> plate
    _qem_event_ndim: int
    _qem_uses: List[IndexUse]
    _qem_plain: torch.Tensor

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.__getitem__ and isinstance(args[0], IndexedValue):
            _record_getitem(args[0], args[1])
        elif func in (torch.index_select, torch.Tensor.index_select) and isinstance(args[0], IndexedValue):
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            index = kwargs.get("index", args[2] if len(args) > 2 else None)
            _record(args[0], dim - args[0].dim() if dim >= 0 else dim, index)
        with torch._C.DisableTorchFunctionSubclass():
            # The wrapped plain tensors below torch_function: dispatch-level tracers (the compiled
            # step's make_fx) do not know this subclass.
            result = func(*_unwrapped(args), **{k: _unwrapped(v) for k, v in kwargs.items()})
        if func in ELEMENTWISE:
            return _derived(result, args, kwargs)
        if func in _EVENT_RESHAPES and isinstance(args[0], IndexedValue):
            return _event_reshaped(func, result, args, kwargs)
        if func in _UNBIND and isinstance(args[0], IndexedValue):
            return _event_unbound(result, args, kwargs)
        if func in _JOIN:
            return _joined(func, result, args, kwargs)
        if func in _MATMUL:
            return _matmul(result, args)
        return result


# Operations that add or drop one dim right of every plate dim (the event part of a
# vector latent, e.g. z.unsqueeze(-1) before a matrix product): plate dims keep their
# elements and move by one.
_EVENT_RESHAPES = frozenset({torch.unsqueeze, torch.Tensor.unsqueeze, torch.squeeze,
                             torch.Tensor.squeeze})
_UNBIND = frozenset({torch.unbind, torch.Tensor.unbind})
_JOIN = frozenset({torch.stack, torch.cat, torch.concat})
_MATMUL = frozenset({torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__,
                     torch.Tensor.__rmatmul__})


def _indexed(value: torch.Tensor, site: str, plates: Dict[int, str], event_ndim: int,
             uses: List[IndexUse]) -> IndexedValue:
    wrapped = value.as_subclass(IndexedValue)
    # The tensor it wraps, itself: ops run on it, so that a dispatch-level tracer (the
    # compiled step's make_fx), which does not see through as_subclass, records them
    # on the tensor it tracks instead of baking in this step's values.
    wrapped._qem_plain = value
    wrapped._qem_site, wrapped._qem_plates = site, plates
    wrapped._qem_event_ndim, wrapped._qem_uses = event_ndim, uses
    return wrapped


def _rewrapped(result: torch.Tensor, source: IndexedValue, shift: int,
               event_shift: Optional[int] = None) -> IndexedValue:
    """``result``, computed from ``source`` with every plate dim moved by ``shift``
    and the event dims grown by ``event_shift`` (default ``-shift``: the dims added or
    removed right of the plates were event dims)."""
    plates = {dim + shift: plate for dim, plate in source._qem_plates.items()}
    event_shift = -shift if event_shift is None else event_shift
    return _indexed(result, source._qem_site, plates, source._qem_event_ndim + event_shift,
                    source._qem_uses)


def _event_reshaped(func, result, args, kwargs):
    """``unsqueeze(dim)`` / ``squeeze(dim)`` right of every plate dim of the source:
    the plate dims shift by one; anything else gives a plain tensor."""
    source = args[0]
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if not isinstance(result, torch.Tensor) or not isinstance(dim, int) or not source._qem_plates:
        return result
    rightmost = max(source._qem_plates)
    if func in (torch.unsqueeze, torch.Tensor.unsqueeze):
        new_dim = dim if dim < 0 else dim - result.dim()
        return _rewrapped(result, source, -1) if new_dim > rightmost - 1 else result
    old_dim = dim if dim < 0 else dim - source.dim()
    if result.dim() == source.dim() - 1 and old_dim > rightmost:
        # A size-1 batch dim between the plates and the event dims (a plate declared
        # at dim=-2 over a value of shape (C, 1)) leaves the event dims as they were.
        is_event = old_dim >= -source._qem_event_ndim
        return _rewrapped(result, source, 1, -1 if is_event else 0)
    return result


def _event_unbound(result, args, kwargs):
    """``ab.unbind(dim)`` over an event dim (``a, b = ab.unbind(-1)`` for a vector
    latent): each part keeps the plate dims, moved by one; anything else gives plain
    tensors."""
    source = args[0]
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
    if not isinstance(dim, int) or not isinstance(result, tuple):
        return result
    dim = dim if dim < 0 else dim - source.dim()
    if dim < -source._qem_event_ndim:
        return result
    return tuple(_rewrapped(part, source, 1) for part in result)


def _joined(func, result, args, kwargs):
    """``torch.stack([a, b], -1)`` (or ``torch.cat`` along an event dim) of latents of
    one plate, e.g. a county's intercept and slope: each element of the result is still
    one county's, so an index applied afterwards is recorded for every latent joined
    (they then share a particle dim, which the join needs)."""
    tensors = args[0] if args else kwargs.get("tensors", ())
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
    sources = [t for t in tensors if isinstance(t, IndexedValue)]
    if not sources or not isinstance(result, torch.Tensor) or not isinstance(dim, int):
        return result
    first = sources[0]
    if any(s._qem_plates != first._qem_plates or s._qem_event_ndim != first._qem_event_ndim
           or s._qem_uses is not first._qem_uses for s in sources[1:]) or not first._qem_plates:
        return result
    dim = dim if dim < 0 else dim - result.dim()
    stacked = func is torch.stack
    if dim < -(first._qem_event_ndim + (1 if stacked else 0)):
        return result  # along a plate dim: the elements are mixed
    sites: List[str] = []
    for source in sources:
        for site in (source._qem_site if isinstance(source._qem_site, tuple) else (source._qem_site,)):
            if site not in sites:
                sites.append(site)
    joined = _rewrapped(result, first, -1 if stacked else 0, 1 if stacked else 0)
    joined._qem_site = sites[0] if len(sites) == 1 else tuple(sites)
    return joined


def _matmul(result, args):
    """A batched matrix product whose one latent operand keeps its plate dims in the
    batch part (left of its last two dims): they stay where they are."""
    sources = [a for a in args[:2] if isinstance(a, IndexedValue)]
    if len(sources) != 1 or not isinstance(result, torch.Tensor) or not sources[0]._qem_plates:
        return result
    source = sources[0]
    if source.dim() < 3 or max(source._qem_plates) > -3 or result.dim() < source.dim():
        return result
    return _rewrapped(result, source, 0)


def _derived(result, args, kwargs):
    """``result`` as an :class:`IndexedValue` of the one latent it was computed from
    elementwise, when its plate dims are still in place; else ``result`` itself."""
    sources = [a for a in list(args) + list(kwargs.values()) if isinstance(a, IndexedValue)]
    if not isinstance(result, torch.Tensor) or isinstance(result, IndexedValue) or not sources:
        return result
    first = sources[0]
    if any(s._qem_site != first._qem_site or s._qem_uses is not first._qem_uses
           or s._qem_plates != first._qem_plates for s in sources[1:]):
        return result
    for dim in first._qem_plates:
        if result.dim() < -dim or result.shape[dim] != first.shape[dim]:
            return result
    return _rewrapped(result, first, 0)


def _record_getitem(value: IndexedValue, key) -> None:
    """Record ``value[key]`` when the key is Ellipsis / full slices and one integer
    tensor, the layout ``a[..., index]`` that keeps every other dim in place; after an
    Ellipsis, integers right of the index may pick event components
    (``ab[..., index, 0]``) or drop size-1 dims."""
    key = tuple(_as_index(k) for k in (key if isinstance(key, tuple) else (key,)))
    tensors = [i for i, k in enumerate(key) if isinstance(k, torch.Tensor) and not k.dtype.is_floating_point
               and k.dtype != torch.bool]
    if len(tensors) != 1:
        return
    position = tensors[0]
    ellipsis = [i for i, k in enumerate(key) if k is Ellipsis]
    anchored_right = bool(ellipsis) and ellipsis[0] < position
    if any(k is None for k in key) or any(isinstance(k, int) for k in key[:position]):
        return
    after = key[position + 1:]
    if any(isinstance(k, int) for k in after) and not anchored_right:
        return
    if anchored_right:
        dim = -(len(key) - position)  # counted from the right, after the Ellipsis
    elif not ellipsis or ellipsis[0] > position:
        dim = position - value.dim()
    else:
        return
    # The indexed entries sit right of the index's dim, less the dims integers took;
    # the event dims still there are the consuming site's, not batch dims.
    kept = sum(1 for k in after if not isinstance(k, int))
    kept_event = sum(1 for k in after[max(0, len(after) - value._qem_event_ndim):]
                     if not isinstance(k, int))
    _record(value, dim, key[position], batch_dim=-(1 + kept) + kept_event if anchored_right else None)


def _as_index(key):
    """A numpy integer array or a list of ints in an index key as the tensor torch
    reads it as (``a[..., county]`` with ``county`` a numpy array runs in Pyro)."""
    if isinstance(key, np.ndarray) and key.dtype.kind in "iu":
        return torch.as_tensor(key)
    if isinstance(key, list) and key and all(isinstance(k, int) and not isinstance(k, bool) for k in key):
        return torch.tensor(key)
    return key


def _record(value: IndexedValue, dim: int, index, batch_dim: Optional[int] = None) -> None:
    plate = value._qem_plates.get(dim)
    if plate is None or not isinstance(index, torch.Tensor):
        return
    nontrivial = [n for n in index.shape if n != 1]
    if len(nontrivial) > 1:
        return
    if batch_dim is None:
        batch_dim = dim + value._qem_event_ndim
    sites = value._qem_site if isinstance(value._qem_site, tuple) else (value._qem_site,)
    active = _active_plates()
    for site in sites:
        # int64 whatever the model's dtype (pandas category codes are int8): the
        # estimator's scatter-adds take no other.
        value._qem_uses.append(IndexUse(site, plate, index.reshape(-1).long(), batch_dim, active))


def _active_plates() -> Tuple[ActivePlate, ...]:
    frames = []
    for messenger in _PYRO_STACK:
        frame = getattr(messenger, "_vectorized", None) and getattr(messenger, "name", None)
        if frame and getattr(messenger, "dim", None) is not None:
            frames.append((messenger.name, messenger.dim,
                           getattr(messenger, "subsample_size", None) or messenger.size))
    return tuple(frames)


class IndexProbe(Messenger):
    """Gives the model each chosen latent's value as an :class:`IndexedValue` and
    collects the :class:`IndexUse` s in :attr:`uses`.

    :param sites: the latent sites to watch; None for every latent site in a plate.
    """

    def __init__(self, sites: Optional[Collection[str]] = None) -> None:
        super().__init__()
        self.sites = None if sites is None else frozenset(sites)
        self.uses: List[IndexUse] = []

    def __enter__(self) -> "IndexProbe":
        self.uses = []
        return super().__enter__()

    def _pyro_post_sample(self, msg) -> None:
        if msg["is_observed"] or msg["type"] != "sample" or site_is_subsample(msg):
            return
        if self.sites is not None and msg["name"] not in self.sites:
            return
        event_ndim = len(msg["fn"].event_shape)
        plates = {f.dim - event_ndim: f.name for f in msg["cond_indep_stack"] if f.vectorized}
        value = msg["value"]
        if not plates or not isinstance(value, torch.Tensor) or isinstance(value, IndexedValue):
            return
        msg["value"] = _indexed(value, msg["name"], plates, event_ndim, self.uses)


def _unwrapped(value):
    """``value`` with every :class:`IndexedValue` in it (at any depth of tuples, lists
    and dicts) replaced by its plain tensor. Torch's ``tree_map`` does the same at
    several times the cost, and this runs for every op on a probed value (a third of a
    radon model run went to it)."""
    kind = type(value)
    if kind is tuple or kind is list:
        return kind(_unwrapped(item) for item in value)
    if kind is dict:
        return {key: _unwrapped(item) for key, item in value.items()}
    return plain(value) if isinstance(value, IndexedValue) else value


def plain(value: torch.Tensor) -> torch.Tensor:
    """``value`` as a plain tensor: the one an :class:`IndexedValue` wraps (no copy)."""
    if not isinstance(value, IndexedValue):
        return value
    wrapped = getattr(value, "_qem_plain", None)  # None: made by as_subclass elsewhere
    return wrapped if wrapped is not None else value.as_subclass(torch.Tensor)
