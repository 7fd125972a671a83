"""Likelihoods and predictions of the model given posterior draws, in one vectorised run.

All draws are evaluated at once: the model runs inside a ``pyro.plate`` of the draws,
just left of its own plate dims, with the drawn latent values substituted
(:func:`pyro.poutine.condition`). Latent sites without a draw (new plate elements of
held-out data) are sampled from the model given the others.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
from pyro.poutine.trace_struct import Trace
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

from ..estimator.factors import observed_log_prob
from ..families.support import unwrap_prior
from ..guides.initialisation import init_to_sample_or_feasible
from ..handlers import UnconditionData
from ..handlers.noncentring import SUFFIX
from ..model import prior_dependencies
from .sites import check_full_frames

Draws = Dict[str, torch.Tensor]


def model_trace(model: Callable, args: tuple, kwargs: dict) -> Trace:
    """One run of ``model``, hidden from outer handlers, for its sites' shapes: latents
    from the prior (a flat prior such as ``ImproperUniform``, which cannot be sampled,
    at a feasible point)."""
    with torch.no_grad(), poutine.block(), InitMessenger(init_to_sample_or_feasible):
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    return prune_subsample_sites(trace)


def plate_nesting(trace: Trace) -> int:
    """The number of plate dims the model uses."""
    dims = [-f.dim for site in trace.nodes.values() if site["type"] == "sample"
            for f in site["cond_indep_stack"] if f.vectorized]
    return max(dims, default=0)


def observed_sites(trace: Trace, data_only: bool = False) -> Dict[str, dict]:
    """The observed sites of ``trace`` (not deterministic ones); with ``data_only``,
    without ``pyro.factor`` terms too (they score the model but hold no data to
    predict or show)."""
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and site["is_observed"]
            and not site["infer"].get("_deterministic")
            and not (data_only and _is_factor(site["fn"]))}


def _is_factor(fn) -> bool:
    return isinstance(unwrap_prior(fn), dist.Unit)


def conditioned_trace(model: Callable, draws: Draws, args: tuple, kwargs: dict, *,
                      new_plates: Sequence[str] = (), predict: bool = False
                      ) -> Tuple[Trace, Trace, int]:
    """One vectorised run of ``model`` with ``draws`` substituted.

    :param new_plates: plates whose elements are new (held-out groups): the draws of
        sites inside them are dropped, so those sites are drawn from the model.
    :param predict: sample the observed sites too (posterior predictive).
    :returns: the vectorised trace, an ordinary trace of the model (its sites' shapes
        without the draws) and the model's number of plate dims.
    """
    prototype = model_trace(model, args, kwargs)
    # A subsampled call would score (or replicate) a random minibatch of rows.
    check_full_frames((f for node in prototype.nodes.values() if node["type"] == "sample"
                       for f in node["cond_indep_stack"]), "predictive outputs")
    nesting = plate_nesting(prototype)
    num = _num_draws(draws)
    draws = {name: torch.as_tensor(value) for name, value in draws.items()}  # arrays too
    new_plates = _checked_new_plates(new_plates, prototype)
    values = _batched(draws, prototype, nesting, new_plates)
    _check_every_latent_drawn(draws, prototype, new_plates, lambda: prior_dependencies(model, args, kwargs))
    if predict:
        model = UnconditionData()(model)
    with torch.no_grad(), poutine.block(), pyro.plate("_qem_draws", num, dim=-nesting - 1):
        trace = poutine.trace(poutine.condition(model, values)).get_trace(*args, **kwargs)
    return prune_subsample_sites(trace), prototype, nesting


def plate_sizes(trace: Trace) -> Dict[str, int]:
    """The size of every vectorised plate of a trace's sample sites."""
    return {f.name: f.size for node in trace.nodes.values() if node["type"] == "sample"
            for f in node["cond_indep_stack"] if f.vectorized}


def _checked_new_plates(new_plates, prototype: Trace) -> set:
    """``new_plates`` as a set of the model's plate names (a misspelt name would
    silently reuse the training elements' draws for new ones)."""
    if isinstance(new_plates, str):
        raise TypeError(
            f"new_plates must be a list of plate names, got the string {new_plates!r}: "
            f"write new_plates=[{new_plates!r}]."
        )
    names = set(new_plates)
    plates = set(plate_sizes(prototype))
    unknown = sorted(names - plates)
    if unknown:
        raise ValueError(
            f"new_plates names {unknown}, which the model has no pyro.plate of when called "
            f"with these arguments (its plates: {sorted(plates)})."
        )
    return names


def _undrawn(draws: Draws, prototype: Trace, new_plates: set) -> list:
    """The model's latent sites outside ``new_plates`` that ``draws`` has no values of."""
    missing = []
    for name, node in prototype.nodes.items():
        if node["type"] != "sample" or node["is_observed"] or site_is_subsample(node):
            continue
        if node["infer"].get("_deterministic") or name in draws:
            continue
        if new_plates & {f.name for f in node["cond_indep_stack"]}:
            continue
        missing.append(name)
    return missing


def _check_every_latent_drawn(draws: Draws, prototype: Trace, new_plates: set,
                              dependencies: Callable[[], Optional[Dict[str, frozenset]]]) -> None:
    """Refuse draws that lack a latent site outside the new plates: the run would draw
    it from its prior, silently (a prior draw of a group's effect, scored as if it were
    the posterior). A missing site that no other site reads is a prediction, as with
    ``y=None`` (Pyro's usual call to predict): the model draws it.

    :param dependencies: ``() -> {site: the latent sites its density reads}`` (by
        provenance), or None where the model cannot be traced that way.
    """
    missing = _undrawn(draws, prototype, new_plates)
    if missing:
        parents = dependencies()
        if parents is not None:
            read = {p for site, found in parents.items() for p in found if p != site}
            missing = [name for name in missing if name in read]
    if missing:
        standardised = [n for n in missing if n + SUFFIX in draws]
        hint = (f" draws has {[n + SUFFIX for n in standardised]}, the guide's standardised q "
                f"of {standardised} (sample_guide's draws of non-centred sites): "
                "sample_posterior's joint draws carry the sites themselves, or use "
                "Predictive(model, guide=guide)." if standardised else "")
        raise ValueError(
            f"draws has no values for the latent site(s) {missing}: the model would draw "
            "them from their prior, and the result would not be the posterior's. Pass "
            "draws of every latent site (sample_posterior without sites=), or, for sites "
            "in plates whose elements are new here (held-out groups), name those plates in "
            f"new_plates.{hint}"
        )


def _num_draws(draws: Draws) -> int:
    if not draws:
        raise ValueError("draws is empty: pass {site: tensor with a leading draw dim}.")
    shapes = {name: torch.as_tensor(value).shape for name, value in draws.items()}
    sizes = {name: shape[0] if len(shape) else 0 for name, shape in shapes.items()}
    if len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise ValueError(
            f"draws must all have the same leading draw dim; got sizes {sizes}. Take them "
            "from one call of sample_posterior or sample_guide."
        )
    return next(iter(sizes.values()))


def _batched(draws: Draws, prototype: Trace, nesting: int, new_plates: set) -> Draws:
    """Draws reshaped so that the draw dim sits just left of the model's plate dims."""
    out = {}
    for name, value in draws.items():
        site = prototype.nodes.get(name)
        if _recomputed(name, site, prototype):
            continue
        if site is None or site["type"] != "sample" or site["is_observed"]:
            raise ValueError(
                f"draws['{name}']: the model has no latent sample site '{name}' when called "
                "with these arguments. Pass draws of the model's latent sites only."
            )
        if new_plates & {f.name for f in site["cond_indep_stack"]}:
            continue
        batch = tuple(site["fn"].batch_shape)
        shape = batch + tuple(site["fn"].event_shape)
        if _lstrip(value.shape[1:]) != _lstrip(shape):
            raise ValueError(
                f"draws['{name}'] has shape {tuple(value.shape)}: expected (num_draws,) + "
                f"{shape} for the site with these arguments. If its plates have new "
                "elements here (held-out groups), name them in new_plates."
            )
        out[name] = value.reshape(value.shape[:1] + (1,) * (nesting - len(batch)) + shape)
    return out


def _recomputed(name: str, site: Optional[dict], prototype: Trace) -> bool:
    """Draws the model recomputes from the others (what sample_posterior adds to the
    model's latents): its deterministic sites, and the standardised latent of a
    non-centred site (``theta_decentered`` beside a latent ``theta``)."""
    if site is not None:
        return site["type"] == "sample" and bool(site["infer"].get("_deterministic"))
    if not name.endswith(SUFFIX):
        return False
    base = prototype.nodes.get(name[: -len(SUFFIX)])
    return base is not None and base["type"] == "sample" and not base["is_observed"]


def _lstrip(shape) -> tuple:
    """The shape without leading singleton dims (Predictive adds some)."""
    shape = tuple(shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


def log_likelihood(model: Callable, draws: Draws, *args, new_plates: Sequence[str] = (),
                   **kwargs) -> Dict[str, torch.Tensor]:
    """Pointwise ``log p(x | draw n)`` of every observed site (masked elements 0).

    Example::

        draws = sample_posterior(inference, y, num_samples=500)
        log_lik = log_likelihood(model, draws, y)      # {"obs": (500, N)}

    :param model: the Pyro model.
    :param draws: ``{site: (num_draws,) + batch_shape + event_shape}``.
    :param args: the model's arguments (observed data included).
    :param new_plates: plates whose elements are new in these arguments.
    :param kwargs: the model's keyword arguments.
    :returns: ``{observed site: (num_draws,) + the site's batch shape}``.
    """
    trace, prototype, nesting = conditioned_trace(model, draws, args, kwargs,
                                                  new_plates=new_plates)
    num = _num_draws(draws)
    out = {}
    for name in observed_sites(prototype):
        site = trace.nodes[name]
        # -inf where a draw puts new data outside a support its latents set
        log_p = observed_log_prob(site["fn"], site["value"])
        if site["mask"] is not None:
            log_p = torch.where(torch.as_tensor(site["mask"]), log_p, log_p.new_zeros(()))
        out[name] = per_draw(log_p, num, prototype.nodes[name], nesting, event=False)
    return out


def per_draw(tensor: torch.Tensor, num: int, site: dict, nesting: int,
              event: bool) -> torch.Tensor:
    """``(num,) + batch_shape (+ event_shape)`` of a prototype ``site``, from a tensor
    whose draw dim is left of the plate dims."""
    batch = tuple(site["fn"].batch_shape)
    shape = batch + (tuple(site["fn"].event_shape) if event else ())
    full = (num,) + (1,) * (nesting - len(batch)) + shape
    return tensor.expand(full).reshape((num,) + shape)


def predictive_log_likelihood(model: Callable, draws: Draws, *args,
                              new_plates: Sequence[str] = (), pointwise: bool = False,
                              **kwargs) -> float:
    """Held-out ``log mean_n p(x_test | draw n)`` over the posterior draws, the QEM
    paper's protocol: latent sites of new plate elements are drawn from the model once
    per draw, given the draw's shared latents.

    Example::

        draws = sample_posterior(inference, train, num_samples=1000)
        predictive_log_likelihood(model, draws, test, new_plates=["school"])

    :param model: the Pyro model.
    :param draws: posterior draws ``{site: (num_draws,) + batch + event}``.
    :param args: the model's arguments with the held-out data.
    :param new_plates: plates whose elements in ``args`` are new (not in training).
    :param pointwise: return ``sum_i log mean_n p(x_i | draw n)`` over the observed
        elements instead, the log pointwise predictive density that ArviZ's ``loo`` and
        ``waic`` build on. The joint figure averages over draws a product over every
        held-out observation; with many observations a few draws dominate it and it
        favours narrow posteriors (on the movielens-shaped benchmark the exact NUTS
        posterior scores far below every approximation on it).
    :param kwargs: the model's keyword arguments.
    """
    log_lik = log_likelihood(model, draws, *args, new_plates=new_plates, **kwargs)
    if not log_lik:
        raise ValueError("The model has no observed sites with these arguments.")
    elements = torch.cat([value.reshape(value.shape[0], -1).double() for value in log_lik.values()], -1)
    return log_predictive_density(elements, pointwise)


def log_predictive_density(log_lik: torch.Tensor, pointwise: bool = False) -> float:
    """``log mean_n p(x | draw n)`` from ``log_lik[n, i] = log p(x_i | draw n)``, or with
    ``pointwise`` ``sum_i log mean_n p(x_i | draw n)`` (see
    :func:`predictive_log_likelihood`).

    :param log_lik: log-likelihoods, shape ``(draws,)`` + the observed elements' shape
        (none for a site outside every plate, several dims for one in nested plates), as
        :func:`log_likelihood` returns them per site; a tensor or an array.
    """
    log_lik = torch.as_tensor(log_lik)
    if log_lik.dim() == 0 or log_lik.shape[0] == 0:
        raise ValueError(
            f"log_lik must have a leading draw dim with at least one draw, got shape "
            f"{tuple(log_lik.shape)} (log_likelihood(...)[site] has that layout)."
        )
    log_lik = log_lik.reshape(log_lik.shape[0], -1)
    log_n = math.log(log_lik.shape[0])
    if pointwise:
        return (torch.logsumexp(log_lik, 0) - log_n).sum().item()
    return (torch.logsumexp(log_lik.sum(-1), 0) - log_n).item()


def posterior_predictive(model: Callable, draws: Draws, *args, new_plates: Sequence[str] = (),
                         **kwargs) -> Dict[str, torch.Tensor]:
    """Replicated data: every observed site sampled from the model given each draw, and
    every site given no data in this call (``y=None``) that no other site reads (the
    quantity to predict, as in Pyro's ``Predictive``).

    Example::

        y_rep = posterior_predictive(model, draws, y)["obs"]   # (num_draws,) + y.shape

    Parameters as for :func:`log_likelihood`.

    :returns: ``{observed or predicted site: (num_draws,) + batch_shape + event_shape}``
        (``pyro.factor`` terms left out: they hold no data).
    """
    trace, prototype, nesting = conditioned_trace(model, draws, args, kwargs,
                                                  new_plates=new_plates, predict=True)
    num = _num_draws(draws)
    sites = dict(observed_sites(prototype, data_only=True))
    # Sites without data in this call (y=None) that nothing reads: the predictions.
    sites.update({name: prototype.nodes[name]
                  for name in _undrawn(draws, prototype, set(new_plates))})
    return {name: per_draw(trace.nodes[name]["value"], num, site, nesting, event=True)
            for name, site in prototype.nodes.items() if name in sites}
