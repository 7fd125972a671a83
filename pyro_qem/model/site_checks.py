"""Checks of a model's sites at set-up: latent distributions QEM can sample, observed
data of the right shape inside the support, and something to infer. Each error names
the site, says what was expected and what was found, and what to do."""

from __future__ import annotations

from typing import Dict

import torch
from torch.distributions import Independent, constraints

import pyro.distributions as dist
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.poutine.trace_struct import Trace

from ..handlers.record import not_a_tensor_error
from .structure import SiteInfo


def _unwrapped(fn):
    """The distribution inside ``Independent``, ``expand`` and ``mask`` wrappers."""
    while isinstance(fn, (Independent, ExpandedDistribution, MaskedDistribution)):
        fn = fn.base_dist
    return fn


def check_latent_distribution(name: str, fn) -> None:
    """Raise for a latent distribution that q's particles cannot stand in for.

    Called before the set-up run asks ``init_loc_fn`` for a value, so that the error
    names the site instead of coming from deep inside the init strategy.

    :param name: the site's name.
    :param fn: its prior.
    :raises ValueError: for a Delta (a fixed value belongs in ``pyro.deterministic``).
    """
    base = _unwrapped(fn)
    if isinstance(base, dist.Delta):
        raise ValueError(
            f"Latent site '{name}' has a Delta distribution: it is a fixed value, not a "
            "random variable, so no particle drawn from q would hit it exactly (log P_hat "
            f"would be -inf). Record a computed value with pyro.deterministic('{name}', "
            f"value) instead of pyro.sample('{name}', dist.Delta(value))."
        )


def check_something_to_infer(sites: Dict[str, SiteInfo], trace: Trace) -> None:
    # A model with pyro.params but no latent site is still fitted (by gradient on
    # -log P_hat, i.e. maximum likelihood), so only a model with neither is refused.
    if sites or any(node["type"] == "param" for node in trace.nodes.values()):
        return
    raise ValueError(
        "The model has no latent sample sites (every pyro.sample is observed, or there "
        "is none), so there is nothing to infer. To evaluate the likelihood, compute it "
        "directly (poutine.trace(model).get_trace(*args).log_prob_sum()); to simulate "
        "data, use pyro.infer.Predictive(model, num_samples=...)."
    )


def check_observed(node, frames) -> None:
    """Raise where an observed site's data cannot be what its distribution describes:
    not a tensor, NaN/inf, a shape that does not fit the site's plates, or values
    outside the support. Each error names the site and says what to do.

    :param node: the site's node in the set-up trace.
    :param frames: its vectorised plate frames.
    :raises TypeError: when the data is not a tensor.
    :raises ValueError: for NaN/inf, a misfitting shape, or values outside the support.
    """
    name, value = node["name"], node["value"]
    if not isinstance(value, torch.Tensor):
        raise not_a_tensor_error(name, value)
    _check_finite(name, value)
    _check_observed_shape(name, value, node["fn"], frames)
    _check_in_support(node)


def _check_finite(name: str, value: torch.Tensor) -> None:
    if value.is_floating_point():
        bad = ~torch.isfinite(value)
        if bad.any():
            raise ValueError(
                f"Observed site '{name}' has {int(bad.sum())} NaN/inf values. Drop them, or "
                "pass obs_mask= (or wrap the site in poutine.mask) to leave them out."
            )


def _check_observed_shape(name: str, value: torch.Tensor, fn, frames) -> None:
    """The data must broadcast *to* the distribution's batch and event shape: Pyro
    accepts a bigger value, but here any dim left of the plates is a particle dim, so
    a bigger value would silently pair data with particles."""
    expected = fn.batch_shape + fn.event_shape
    shape = value.shape
    for pos in range(-min(len(shape), len(expected)), 0):
        if shape[pos] not in (1, expected[pos]):
            raise ValueError(_mismatch_message(name, shape, fn, frames, pos))
    extra = shape[: max(0, len(shape) - len(expected))]
    if any(size != 1 for size in extra):
        raise ValueError(
            f"Observed site '{name}' has data of shape {tuple(shape)}, but expected shape "
            f"{tuple(expected)} ({_shapes(fn)}): its leading dims {tuple(extra)} belong to "
            "no pyro.plate. pyro_qem puts particle dims left of the plates, so they would "
            "be mixed up with the particles. Put the site inside a pyro.plate for each data "
            f"dim (e.g. pyro.plate('{name}_plate', {extra[-1]}, dim={-len(fn.batch_shape) - 1})"
            "), or give the distribution that event shape (.to_event)."
        )


def _mismatch_message(name: str, shape: torch.Size, fn, frames, pos: int) -> str:
    expected = fn.batch_shape + fn.event_shape
    batch_dim = pos + len(fn.event_shape)
    plate = next((f.name for f in frames if f.dim == batch_dim), None) if batch_dim < 0 else None
    found = (f"Observed site '{name}' has data of shape {tuple(shape)}, but expected shape "
             f"{tuple(expected)} ({_shapes(fn)}): at dim {pos}")
    if plate is not None:
        advice = (f"pyro.plate('{plate}') has size {expected[pos]} but the data has size "
                  f"{shape[pos]}. Pass data with {expected[pos]} entries along that dim, or "
                  f"size the plate from the data (pyro.plate('{plate}', len(data))).")
    elif batch_dim >= 0:
        advice = (f"the event shape needs size {expected[pos]} but the data has size "
                  f"{shape[pos]}. Reshape the data, or change the distribution's event "
                  "shape (.to_event).")
    else:
        advice = (f"the distribution's parameters have size {expected[pos]} (no plate) but "
                  f"the data has size {shape[pos]}. Reshape the data or the parameters.")
    if len(shape) > len(expected):
        advice += (" If each observation is a vector, give the distribution that event "
                   "shape (e.g. dist.Normal(loc, 1.).expand([2]).to_event(1)) so that its "
                   "last dim is not read as the plate's.")
    return f"{found} {advice}"


def _shapes(fn) -> str:
    return f"batch shape {tuple(fn.batch_shape)}, event shape {tuple(fn.event_shape)}"


def _check_in_support(node) -> None:
    """Observed values outside the support give log densities of -inf or NaN (or,
    without validation, finite nonsense for e.g. a non-integer Poisson count)."""
    support, mask = node["fn"].support, _observed_mask(node)
    if mask is None or mask is False or not _has_fixed_bounds(support):
        return
    value = node["value"]
    try:
        bad = ~support.check(value)
    except NotImplementedError:  # a user's constraint without check(): nothing to say
        return
    if isinstance(mask, torch.Tensor):
        bad = _any_to_shape(bad & mask, bad.shape)
    if not bad.any():
        return
    base = _unwrapped(node["fn"])
    examples = value.reshape(bad.shape + value.shape[bad.dim():])[bad][:3].tolist()
    raise ValueError(
        f"Observed site '{node['name']}' has {int(bad.sum())} value(s) outside the support "
        f"of its {type(base).__name__} distribution ({support!r}: "
        f"{_describe(support)}), e.g. {examples}. Correct or drop them (or leave them out "
        "with obs_mask= / poutine.mask), or choose a likelihood whose support contains them."
    )


def _observed_mask(node):
    """True, False or a bool tensor over the value's batch dims: where the site counts.
    None when a mask sits inside ``.to_event`` (its dims would not line up)."""
    mask = True if node["mask"] is None else node["mask"]
    fn, inside_event = node["fn"], False
    while isinstance(fn, (Independent, ExpandedDistribution, MaskedDistribution)):
        if isinstance(fn, Independent):
            inside_event = True
        elif isinstance(fn, MaskedDistribution):
            if inside_event:
                return None
            mask = fn._mask if mask is True else mask & fn._mask
        fn = fn.base_dist
    return mask


def _has_fixed_bounds(support) -> bool:
    # A support with tensor bounds (Uniform(0, b), Binomial(n, p)) may depend on a
    # latent site through the set-up value of its parent: only constant bounds are
    # checked, or a correct model could be refused.
    if constraints.is_dependent(support):
        return False
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return all(isinstance(v, (bool, int, float)) for v in vars(support).values())


def _any_to_shape(bad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``bad`` reduced by ``any`` over the dims that broadcasting a mask added."""
    while bad.dim() > len(shape):
        bad = bad.any(0)
    for dim, size in enumerate(shape):
        if size == 1 and bad.shape[dim] != 1:
            bad = bad.any(dim, keepdim=True)
    return bad


_SUPPORT_WORDS = {
    constraints.boolean.__class__: "0 or 1",
    constraints.nonnegative_integer.__class__: "integers >= {lower_bound}",
    constraints.positive.__class__: "values > {lower_bound}",
    constraints.nonnegative.__class__: "values >= {lower_bound}",
    constraints.unit_interval.__class__: "values in [{lower_bound}, {upper_bound}]",
    constraints.integer_interval(0, 1).__class__:
        "integers in {{{lower_bound}, ..., {upper_bound}}}",
    constraints.simplex.__class__: "nonnegative vectors summing to 1",
}


def _describe(support) -> str:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    words = _SUPPORT_WORDS.get(type(support))
    return words.format(**vars(support)) if words else "see its support"
