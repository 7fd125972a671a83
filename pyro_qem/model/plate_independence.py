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
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
import pyro.poutine as poutine
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

# The move of a latent's value, in its unconstrained space.
MOVE = 0.5


def check_plate_independence(model: Callable, args: tuple, kwargs: dict, trace: Trace) -> None:
    """Raise ``ValueError`` naming the sites and the plate if a site's log density at
    one element of a plate depends on a latent's value at another element of it, or
    one element of a site in another plate depends on several elements of it.

    :param trace: a trace of ``model(*args, **kwargs)`` (the set-up run).
    """
    base = _log_probs(model, args, kwargs, trace, None, None)
    if base is None:
        return
    for name, node in trace.nodes.items():
        if node["type"] != "sample" or node["is_observed"] or site_is_subsample(node):
            continue
        if node["fn"].support.is_discrete or not node["value"].dtype.is_floating_point:
            continue
        event_ndim = len(node["fn"].event_shape)
        for frame in [f for f in node["cond_indep_stack"] if f.vectorized and f.size > 1]:
            _check_frame(model, args, kwargs, trace, base, name, frame, event_ndim)


def _check_frame(model, args, kwargs, trace: Trace, base: Dict[str, Tuple[torch.Tensor, tuple]],
                 name: str, frame, event_ndim: int) -> None:
    value = trace.nodes[name]["value"]
    position = frame.dim - event_ndim
    if value.dim() < -position or value.shape[position] != frame.size:
        return
    own = {f.name for f in trace.nodes[name]["cond_indep_stack"] if f.vectorized}
    elements = torch.arange(frame.size)
    for bit in range(max(1, math.ceil(math.log2(frame.size)))):
        changed_pair = []
        for side in (1, 0):
            moved = ((elements >> bit) & 1) == side
            changed = _log_probs(model, args, kwargs, trace, name, (position, moved))
            if changed is None:
                return
            changed = {site: (lp != base[site][0]) & ~(lp.isnan() & base[site][0].isnan())
                       for site, (lp, _) in changed.items() if site in base
                       and lp.shape == base[site][0].shape}
            for site, diff in changed.items():
                frames = base[site][1]
                if any(f.name == frame.name for f in frames) and diff.dim() >= -frame.dim \
                        and diff.shape[frame.dim] == frame.size:
                    along = diff.movedim(frame.dim, 0).reshape(frame.size, -1).any(1)
                    stray = along & ~moved
                    if bool(stray.any()):
                        _refuse(site, f"at element {int(torch.nonzero(stray)[0])} of "
                                f"pyro.plate('{frame.name}')", name, frame.name,
                                "at other elements of that plate")
            changed_pair.append(changed)
        for site, diff in changed_pair[0].items():
            frames = base[site][1]
            if any(f.name == frame.name for f in frames) or site not in changed_pair[1]:
                continue
            if not any(f.name not in own and f.size > 1 for f in frames):
                # Not rows of another plate: a site outside the latent's plates that
                # reduces over them gets its own errors (the estimator's).
                continue
            both = diff & changed_pair[1][site]
            if bool(both.any()):
                _refuse(site, "at one of its elements", name, frame.name,
                        f"at several elements of pyro.plate('{frame.name}')")


def _refuse(site: str, where: str, latent: str, plate: str, which: str) -> None:
    raise ValueError(
        f"Site '{site}' {where} depends on latent site '{latent}' {which} (e.g. a "
        "mean, sum, cumsum, roll or flip over the plate's dim, a lookup a[..., index] "
        "inside the same plate, or rows reading a centred copy a - a.mean(-1)). A plate "
        "declares its elements conditionally independent, and QEM weighs each element's "
        "particles by that element's own log densities (each row's by the one element "
        "it reads), so it would fit this model wrongly. Make the dependent values one "
        "site with an event dim (e.g. a random walk as one vector site, .to_event(1), "
        f"outside pyro.plate('{plate}')), or compute what the rows read per element "
        "(e.g. centre with a site outside the plate)."
    )


def _log_probs(model: Callable, args: tuple, kwargs: dict, trace: Trace, name: Optional[str],
               move) -> Optional[Dict[str, Tuple[torch.Tensor, tuple]]]:
    """Every sample site's elementwise log density (and plate frames) in a replay of
    the trace, with site ``name`` moved at the elements ``move = (dim, mask)``; None
    where the replay fails (other checks then speak)."""
    data = {}
    if name is not None:
        node = trace.nodes[name]
        dim, mask = move
        value = node["value"].detach()
        try:
            transform = biject_to(node["fn"].support)
            unconstrained = transform.inv(value)
            shape = [1] * unconstrained.dim()
            shape[unconstrained.dim() + dim] = mask.numel()
            moved = mask.reshape(shape)
            # Only the moved elements change: a round trip through the transform
            # would shift the others by rounding.
            data[name] = torch.where(moved, transform(unconstrained + MOVE).to(value.dtype), value)
        except Exception:  # noqa: BLE001 - a support without a bijection: not checked
            return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad(), poutine.block():
                replayed = poutine.replay(poutine.condition(model, data=data), trace=trace)
                again = poutine.trace(replayed).get_trace(*args, **kwargs)
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
