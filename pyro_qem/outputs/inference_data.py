"""ArviZ data from a QEM fit: posterior draws, predictions, pointwise log-likelihood.

Like arviz-base's ``io_numpyro``: one small builder per group, each returning None
when its data is missing, and a thin public :func:`to_inference_data`. Dims are named
after the model's plates; batch dims of size 1 outside any plate (broadcasting
artefacts) are dropped. Draws are independent, so one chain is the default; ArviZ's
r_hat then means nothing.

ArviZ 0.x gets :class:`arviz.InferenceData`; ArviZ 1.x (decided by
``arviz.__version__``) an :class:`xarray.DataTree` from ``arviz_base.from_dict``.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .diagnostics import weight_ess
from .draws import sample_guide, sample_posterior
from .predictive import (conditioned_trace, log_likelihood, model_trace, observed_sites, per_draw,
                         plate_sizes, posterior_predictive)

from ..infer.fit import FitHistory
from ..infer.inference import Inference

Arrays = Dict[str, np.ndarray]
HISTORY_DIM = "qem_step"


def to_inference_data(
    inference: Inference,
    *args,
    num_samples: int = 500,
    draws: Optional[Mapping[str, torch.Tensor]] = None,
    method: str = "joint",
    num_chains: int = 1,
    history: Optional[FitHistory] = None,
    coords: Optional[Mapping[str, Sequence]] = None,
    **kwargs,
):
    """ArviZ data of a fitted model: groups posterior, posterior_predictive,
    log_likelihood (pointwise, for ``az.loo``), observed_data and sample_stats (the fit
    history on its own dim ``qem_step``, and each site's weight ESS per plate element).

    Example::

        history = fit(inference, y, num_steps=500)
        idata = to_inference_data(inference, y, history=history)
        az.summary(idata); az.loo(idata); az.plot_trace(idata)

    :param inference: the :class:`~pyro_qem.infer.Inference` that fitted the guide.
    :param args: the model's arguments (all plate elements).
    :param num_samples: draws to take when ``draws`` is None.
    :param draws: precomputed ``{site: (num_samples,) + batch + event}`` draws.
    :param method: ``"joint"`` (:func:`sample_posterior`) or ``"guide"``
        (:func:`sample_guide`), when ``draws`` is None.
    :param num_chains: split the draws into this many pseudo-chains.
    :param history: a :class:`~pyro_qem.infer.fit.FitHistory` for sample_stats.
    :param coords: labels per plate name, e.g. ``{"school": ["A", ..., "H"]}``.
    :param kwargs: the model's keyword arguments.
    """
    if draws is None:
        draws = _draw(inference, args, kwargs, num_samples, method)
    draws = {name: torch.as_tensor(value).detach() for name, value in draws.items()}
    _check_chains(num_chains, next(iter(draws.values())).shape[0])
    # The model as the guide sees it: non-centred sites' standardised latents included.
    trace = model_trace(inference.guide.model_run, args, kwargs)
    _check_coords(coords or {}, trace)
    layout = _Layout(trace, num_chains)
    model = inference.model
    groups = {
        "posterior": layout.sampled(draws),
        "posterior_predictive": layout.sampled(posterior_predictive(model, draws, *args, **kwargs)),
        "log_likelihood": layout.sampled(log_likelihood(model, draws, *args, **kwargs),
                                         event=False),
        "observed_data": layout.observed(),
    }
    stats = _stats_dataset(layout, weight_ess(inference, *args, **kwargs), history)
    attrs = {"inference_library": "pyro_qem", "K": inference.K, "method": method,
             "num_updates": inference.guide.state.num_updates()}
    return _build(groups, stats, layout.dims, dict(coords or {}), attrs)


def _check_chains(num_chains: int, total: int) -> None:
    if isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 1 \
            or total % num_chains:
        raise ValueError(f"num_chains must be a positive int dividing the {total} draws, "
                         f"got {num_chains!r}.")


def _draw(inference, args, kwargs, num_samples: int, method: str):
    if method == "joint":
        return sample_posterior(inference, *args, num_samples=num_samples, **kwargs)
    if method == "guide":
        return _guide_draws(inference, args, kwargs, num_samples)
    raise ValueError(f"method must be 'joint' or 'guide', got {method!r}.")


def _guide_draws(inference, args, kwargs, num_samples: int):
    """Independent draws of q, with every non-centred site and every
    ``pyro.deterministic`` site given an ``event_dim`` computed from them
    (``theta = loc + scale * theta_decentered`` at the drawn ``mu``, ``tau``, ...)."""
    guide = inference.guide
    guide.setup(*args, **kwargs)
    enumerated = [name for name, site in guide.structure.sites.items() if site.enumerated]
    if enumerated:
        raise ValueError(
            f"to_inference_data(method='guide'): the enumerated site(s) {enumerated} are "
            "summed out exactly and have no q to draw from; use method='joint' (the "
            "default), whose draws include them."
        )
    draws = sample_guide(guide, num_samples)
    trace, prototype, nesting = conditioned_trace(guide.model_run, draws, args, kwargs)
    for name in guide.noncentred:
        draws[name] = per_draw(trace.nodes[name]["value"], num_samples,
                               prototype.nodes[name], nesting, event=True)
    # pyro.deterministic sites, as the joint draws have them (those given an event_dim:
    # with Pyro's default every dim is an event dim, and the draws' dim cannot be told
    # from the site's own).
    for name, node in prototype.nodes.items():
        if node["type"] != "sample" or not node["infer"].get("_deterministic") or name in draws:
            continue
        if node["value"].dim() > 0 and len(node["fn"].event_shape) >= node["value"].dim():
            continue
        draws[name] = per_draw(trace.nodes[name]["value"], num_samples, node, nesting, event=True)
    return draws


class _Layout:
    """Numpy arrays in ArviZ's (chain, draw, ...) layout, and their dim names."""

    def __init__(self, trace, num_chains: int) -> None:
        self.trace = trace
        self.num_chains = num_chains
        self.dims: Dict[str, List[str]] = {}

    def _named(self, name: str, value: torch.Tensor, leading: int, event: bool) -> np.ndarray:
        site = self.trace.nodes[name]
        batch = len(site["fn"].batch_shape)
        plates = {f.dim: f.name for f in site["cond_indep_stack"] if f.vectorized}
        shape, dims = list(value.shape[:leading]), []
        for i, size in enumerate(value.shape[leading:leading + batch]):
            plate = plates.get(i - batch)
            if plate is None and size == 1:
                continue
            shape.append(size)
            dims.append(plate or f"{name}_dim_{i}")
        if event:
            for j, size in enumerate(value.shape[leading + batch:]):
                shape.append(size)
                dims.append(f"{name}_event_{j}")
        self.dims.setdefault(name, dims)
        return value.reshape(shape).cpu().numpy()

    def sampled(self, values: Mapping[str, torch.Tensor], event: bool = True) -> Arrays:
        out = {}
        for name, value in values.items():
            array = self._named(name, value, 1, event)
            out[name] = array.reshape((self.num_chains, -1) + array.shape[1:])
        return out

    def observed(self) -> Arrays:
        return {name: self._named(name, site["value"].detach(), 0, True)
                for name, site in observed_sites(self.trace, data_only=True).items()}


def _stats_dataset(layout: _Layout, ess: Dict[str, torch.Tensor], history):
    """sample_stats without (chain, draw): the fit history on ``qem_step`` and the
    weight ESS per plate element."""
    import xarray as xr

    variables: Dict[str, Tuple[List[str], np.ndarray]] = {}
    if history is not None and len(history):
        variables["loss"] = ([HISTORY_DIM], np.asarray(history.losses))
        variables["smoothed_loss"] = ([HISTORY_DIM], np.asarray(history.smoothed))
        variables["wall_time"] = ([HISTORY_DIM], np.asarray(history.seconds))
    for name, value in ess.items():
        array = layout._named(name, value, 0, event=False)
        variables[f"ess_{name}"] = (list(layout.dims[name][:array.ndim]), array)
    stats = xr.Dataset({k: xr.Variable(dims, array) for k, (dims, array) in variables.items()})
    return stats


def _check_coords(coords: Mapping[str, Sequence], trace) -> None:
    """Refuse labels for a plate the model does not have, or of another length than
    its plate (xarray's own error does not say that ``coords=`` is at fault)."""
    sizes = plate_sizes(trace)
    for name, labels in coords.items():
        if name not in sizes:
            raise ValueError(
                f"coords['{name}']: the model has no pyro.plate('{name}') with these "
                f"arguments; coords are labels per plate (its plates: {sorted(sizes)})."
            )
        if len(labels) != sizes[name]:
            raise ValueError(
                f"coords['{name}'] has {len(labels)} labels, but pyro.plate('{name}') has "
                f"{sizes[name]} elements with these arguments: give one label per element."
            )


def _build(groups: Dict[str, Arrays], stats, dims, coords, attrs):
    import arviz

    # The plate dims of the ESS share the posterior's coordinates.
    stats = stats.assign_coords({dim: coords.get(dim, np.arange(size))
                                 for dim, size in stats.sizes.items() if dim != HISTORY_DIM})
    if int(arviz.__version__.split(".")[0]) >= 1:
        from arviz_base import from_dict

        tree = from_dict(groups, dims=dims, coords=coords, attrs={"/": attrs})
        tree["sample_stats"] = stats
        return tree
    idata = arviz.from_dict(**groups, dims=dims, coords=coords, attrs=attrs)
    idata.add_groups(sample_stats=stats.assign_attrs(attrs))
    return idata
