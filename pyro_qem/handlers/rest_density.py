"""The log density of the rest of a model as a function of one site's value, and the
replay of a set-up trace with some sites' values changed that it rests on."""

from __future__ import annotations

import warnings
from typing import Callable, Dict

import torch

import pyro.poutine as poutine
from pyro.poutine.trace_struct import Trace


def rest_log_density(model: Callable, args: tuple, kwargs: dict, trace: Trace, name: str,
                     value: torch.Tensor) -> torch.Tensor:
    """The summed (masked, scaled) log density of every site but ``name`` when ``name``
    takes ``value`` and the other latents keep their values in ``trace``: a graph on
    ``value``, so its derivatives say how the rest of the model reads the site (per
    element). Warnings of the replayed run are silenced; its errors propagate.

    :param trace: a trace of ``model(*args, **kwargs)`` (e.g. a set-up run).
    :param value: the site's value (make it ``requires_grad`` to differentiate).
    """
    with torch.enable_grad():
        again = replayed_trace(model, args, kwargs, trace, {name: value})
        return again.log_prob_sum(site_filter=lambda n, site: n != name)


def replayed_trace(model: Callable, args: tuple, kwargs: dict, trace: Trace,
                   data: Dict[str, torch.Tensor]) -> Trace:
    """A trace of ``model`` replayed at ``trace``'s values, the sites in ``data``
    taking those values instead, with no effect on the caller's handlers; warnings of
    the replayed run are silenced, its errors propagate."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with poutine.block():
            conditioned = poutine.condition(model, data=data)
            return poutine.trace(poutine.replay(conditioned, trace=trace)).get_trace(*args, **kwargs)
