"""Check that no plate element reads a latent at another element of its own plate.

``pyro.plate`` declares its elements conditionally independent, and QEM relies on it:
it weighs each element's particles by that element's own factors, and the rows of a
plate that read a group's latent through an index (``a[..., county]``) by that one
group's particles. A model may still be valid Pyro (``Trace_ELBO`` only sums log
densities) while a site at element ``i`` reads a latent at other elements ``k`` of the
same plate: ``a - a.mean(-1, keepdim=True)``, ``eps.cumsum(-1)`` or ``a.roll(1, -1)``
along the plate's dim, a lookup ``a[..., neighbour]`` inside the plate; or a row reads
several groups' latents (``(a - a.mean(-1, keepdim=True))[..., county]``). QEM would
fit such a model without a word, and wrongly (probes: 1-12 posterior sds off), so
set-up refuses it.

How: each continuous latent in a plate is moved (by 0.5 in its unconstrained space) at
a subset ``U`` of the plate's elements, the model is replayed with every other value
kept, and the sites whose log densities changed are compared. ``U`` runs over the
elements whose index has bit ``b`` equal to 1, then 0, for every bit ``b``. A site in
the plate may change only at the elements in ``U``; a site in another plate (rows) may
change, per element, under at most one of each pair of complementary subsets, as it
would reading one element: any two elements differ in some bit, so every read of a
second element is seen, in ``2 * ceil(log2 n)`` replays. Discrete latents are not
moved and not checked.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from ..handlers.rest_density import replayed_trace

# The move of a latent's value, in its unconstrained space.
MOVE = 0.5


def check_plate_independence(model: Callable, args: tuple, kwargs: dict, trace: Trace) -> None:
    """Raise ``ValueError`` naming the sites and the plate if a site's log density at
    one element of a plate depends on a latent's value at another element of it, or
    one element of a site in another plate depends on several elements of it.

    The latents of one plate are moved together (one set of replays per plate); only
    when something reads across elements is each moved alone, to name it. A model
    whose replay is not deterministic (dropout in train mode, data drawn inside the
    model) cannot be checked this way and is left alone.

    :param trace: a trace of ``model(*args, **kwargs)`` (the set-up run).
    """
    base = _log_probs(model, args, kwargs, trace, {})
    if base is None or not _same(base, _log_probs(model, args, kwargs, trace, {})):
        return
    by_plate: Dict[str, List[str]] = {}
    frames = {}
    for name, node in trace.nodes.items():
        if node["type"] != "sample" or node["is_observed"] or site_is_subsample(node):
            continue
        if node["fn"].support.is_discrete or not node["value"].dtype.is_floating_point:
            continue
        event_ndim = len(node["fn"].event_shape)
        for frame in [f for f in node["cond_indep_stack"] if f.vectorized and f.size > 1]:
            value = node["value"]
            position = frame.dim - event_ndim
            if value.dim() >= -position and value.shape[position] == frame.size:
                by_plate.setdefault(frame.name, []).append(name)
                frames[frame.name] = frame
    for plate, names in by_plate.items():
        found = _cross_reads(model, args, kwargs, trace, base, names, frames[plate])
        if found is None:
            continue
        for name in names if len(names) > 1 else ():
            alone = _cross_reads(model, args, kwargs, trace, base, [name], frames[plate])
            if alone is not None:
                found = alone
                break
        _refuse(*found)


def _cross_reads(model, args, kwargs, trace: Trace, base: "_Densities", names: List[str], frame
                 ) -> Optional[Tuple[str, str, str, str, str]]:
    """The arguments of :func:`_refuse` for the first site found reading the latents
    ``names`` (of ``frame``) across elements, or None."""
    latent = ", ".join(names)
    own = {f.name for n in names for f in trace.nodes[n]["cond_indep_stack"] if f.vectorized}
    elements = torch.arange(frame.size)
    for bit in range(max(1, math.ceil(math.log2(frame.size)))):
        changed_pair = []
        for side in (1, 0):
            moved = ((elements >> bit) & 1) == side
            densities = _log_probs(model, args, kwargs, trace, {n: (frame.dim, moved) for n in names})
            if densities is None:
                return None
            changed = {site: (lp != base[site][0]) & ~(lp.isnan() & base[site][0].isnan())
                       for site, (lp, _) in densities.items() if site in base
                       and lp.shape == base[site][0].shape}
            for site, diff in changed.items():
                if any(f.name == frame.name for f in base[site][1]) and diff.dim() >= -frame.dim \
                        and diff.shape[frame.dim] == frame.size:
                    along = diff.movedim(frame.dim, 0).reshape(frame.size, -1).any(1)
                    stray = along & ~moved
                    if bool(stray.any()):
                        return (site, f"at element {int(torch.nonzero(stray)[0])} of "
                                f"pyro.plate('{frame.name}')", latent, frame.name,
                                "at other elements of that plate")
            changed_pair.append(changed)
        for site, diff in changed_pair[0].items():
            site_frames = base[site][1]
            if any(f.name == frame.name for f in site_frames) or site not in changed_pair[1]:
                continue
            if not any(f.name not in own and f.size > 1 for f in site_frames):
                # Not rows of another plate: a site outside the latent's plates that
                # reduces over them gets its own errors (the estimator's).
                continue
            if bool((diff & changed_pair[1][site]).any()):
                return (site, "at one of its elements", latent, frame.name,
                        f"at several elements of pyro.plate('{frame.name}')")
    return None


def _refuse(site: str, where: str, latent: str, plate: str, which: str) -> None:
    raise ValueError(
        f"Site '{site}' {where} depends on latent site '{latent}' {which} (e.g. a "
        "mean, sum, cumsum, roll or flip over the plate's dim, a lookup a[..., index] "
        "inside the same plate, rows reading a centred copy a - a.mean(-1), or a "
        "regression's (X * beta).sum(-1) with beta in a plate of features). A plate "
        "declares its elements conditionally independent, and QEM weighs each element's "
        "particles by that element's own log densities (each row's by the one element "
        "it reads), so it would fit this model wrongly. Make the dependent values one "
        f"site with an event dim outside pyro.plate('{plate}') (coefficients or a "
        "random walk as one vector site: dist.Normal(0., 1.).expand([P]).to_event(1)), "
        "or compute what the rows read per element (e.g. centre with a site outside "
        "the plate)."
    )


_Densities = Dict[str, Tuple[torch.Tensor, tuple]]


def _same(first: _Densities, second: Optional[_Densities]) -> bool:
    """Whether two replays gave the same log densities (NaN equal to NaN)."""
    if second is None or first.keys() != second.keys():
        return False
    return all(a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())
               for (a, _), (b, _) in ((first[k], second[k]) for k in first))


def _log_probs(model: Callable, args: tuple, kwargs: dict, trace: Trace,
               moves: Dict[str, Tuple[int, torch.Tensor]]) -> Optional[_Densities]:
    """Every sample site's elementwise log density (and plate frames) in a replay of
    the trace, with each site in ``moves`` moved at the plate elements
    ``moves[site] = (plate dim, mask)``; None where the replay fails (other checks then
    speak)."""
    data = {}
    for name, (dim, mask) in moves.items():
        node = trace.nodes[name]
        value = node["value"].detach()
        try:
            transform = biject_to(node["fn"].support)
            moved_value = transform(transform.inv(value) + MOVE).to(value.dtype)
        except Exception:  # noqa: BLE001 - a support without a bijection: not checked
            return None
        # The mask on the value's own dims (an unconstrained space may have fewer event
        # dims, e.g. a Cholesky factor's); the other elements keep their exact values.
        position = value.dim() + dim - len(node["fn"].event_shape)
        shape = [1] * value.dim()
        shape[position] = mask.numel()
        data[name] = torch.where(mask.reshape(shape), moved_value, value)
    try:
        with torch.no_grad():
            again = replayed_trace(model, args, kwargs, trace, data)
            again.compute_log_prob()
    except Exception:  # noqa: BLE001 - a model that cannot be replayed is checked elsewhere
        return None
    out = {}
    for site, node in again.nodes.items():
        if node["type"] != "sample" or site_is_subsample(node) or "log_prob" not in node:
            continue
        if node["infer"].get("_deterministic"):
            continue
        out[site] = (node["log_prob"].detach(), tuple(f for f in node["cond_indep_stack"] if f.vectorized))
    return out
