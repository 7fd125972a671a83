"""Importance-weighted posterior moments from the source-term marginals.

One particle run gives every latent site's posterior weight of each of its K particles,
per plate element (the gradient of ``log P_hat`` with respect to a zero source term
added to the site's factors); a moment of any statistic ``f`` is then
``sum_k w_k f(z_k)``. This uses all K particles of every element, so it is more
accurate than the same moment of resampled draws; averaging over independent runs
shrinks the Monte Carlo error further, roughly as ``1 / sqrt(num_runs)``.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..infer.pipeline import ParticleRun, WeightedRun
from .degenerate import pooled_chances, repeat_chances, warn_degenerate
from .sites import check_count, plate_layout, resolve_fn, select_outputs, to_site_shape, weighted_run

from ..infer.inference import Inference

Statistic = Union[None, Callable[[torch.Tensor], torch.Tensor], Mapping[str, Callable]]


def moment_runs(
    inference: Inference,
    *args,
    fn: Statistic = None,
    sites: Optional[Sequence[str]] = None,
    num_runs: int = 10,
    **kwargs,
) -> Dict[str, torch.Tensor]:
    """The weighted moment of each run separately, stacked in a leading ``num_runs``
    dim: their mean is :func:`posterior_moments`, and their standard deviation over
    ``sqrt(num_runs)`` is its Monte Carlo standard error.

    Example::

        runs = moment_runs(inference, y, num_runs=20)
        mean, stderr = runs["mu"].mean(0), runs["mu"].std(0) / 20 ** 0.5

    :param inference: the :class:`~pyro_qem.infer.Inference` that fitted the guide.
    :param args: the model's arguments (all plate elements: no subsampling).
    :param fn: the statistic: a callable applied elementwise to a site's particles
        (batch dims kept, event dims may be reduced or extended), a dict
        ``site -> callable``, or None for the posterior mean.
    :param sites: site names (default: every latent site, and the deterministic sites
        whose value the particles fix: non-centred sites, ``pyro.deterministic`` sites
        given an ``event_dim``; their moments use the joint weights of the particle
        groups they read).
    :param num_runs: independent particle runs, each with fresh K particles.
    :param kwargs: the model's keyword arguments.
    :returns: ``{site: tensor (num_runs,) + batch_shape + statistic's event shape}``,
        float64.
    """
    check_count("num_runs", num_runs)
    per_run, chances = [], []
    for _ in range(num_runs):
        # The sites are chosen once per run, before it is weighed: the deterministic
        # ones among them need joint weights.
        chosen: Dict[str, Tuple[List[str], List[str]]] = {}

        def derived(run: ParticleRun) -> List[str]:
            chosen["outputs"] = select_outputs(run, sites, "posterior_moments")
            return chosen["outputs"][1]

        weighed = weighted_run(inference, args, kwargs, "moments", joint=derived)
        per_run.append(_moments_of_run(weighed, fn, *chosen["outputs"]))
        # Only the weights' summaries are kept: a run holds all its factors.
        chances.append(repeat_chances(weighed))
        structure = weighed.structure
    warn_degenerate(pooled_chances(chances), structure, inference.K, "posterior_moments")
    return {name: torch.stack([run[name] for run in per_run]) for name in per_run[0]}


def posterior_moments(
    inference: Inference,
    *args,
    fn: Statistic = None,
    sites: Optional[Sequence[str]] = None,
    num_runs: int = 10,
    **kwargs,
) -> Dict[str, torch.Tensor]:
    """Posterior expectation ``E[fn(z)]`` of every requested site, per plate element,
    from the importance weights of ``num_runs`` independent particle runs.

    Example::

        means = posterior_moments(inference, y)                       # E[z]
        # E[z] and E[z^2] from the same particle runs, so that their difference is a
        # variance (two separate calls use different runs and can even go negative):
        both = posterior_moments(inference, y, fn=lambda z: torch.stack([z, z ** 2], -1),
                                 sites=["mu"])["mu"]
        sd = (both[..., 1] - both[..., 0] ** 2).sqrt()

    Parameters as for :func:`moment_runs`.

    :returns: ``{site: tensor batch_shape + statistic's event shape}``, float64.
    """
    runs = moment_runs(inference, *args, fn=fn, sites=sites, num_runs=num_runs, **kwargs)
    return {name: value.mean(0) for name, value in runs.items()}


def _moments_of_run(run: WeightedRun, fn: Statistic, names: Sequence[str],
                    derived: Sequence[str]) -> Dict[str, torch.Tensor]:
    """The weighted moments of the latent sites ``names`` and the deterministic sites
    ``derived`` (as :func:`~pyro_qem.outputs.sites.select_outputs` chose them) in one
    run, in model order."""
    out = {}
    for name in names:
        site = run.structure.sites[name]
        group = run.structure.group_of(name)
        value = run.records[name].value.detach()
        with torch.no_grad():
            stat = torch.as_tensor(resolve_fn(fn, name)(value))
        batch_ndim = -group.dim
        if stat.dim() < batch_ndim or stat.shape[0] != value.shape[0]:
            raise ValueError(
                f"fn for site '{name}' returned shape {tuple(stat.shape)} for particles of "
                f"shape {tuple(value.shape)}: it must keep the particle and batch dims "
                "(work elementwise, or reduce only the event dims)."
            )
        weight = run.weights[group.index].detach().double()
        trailing = stat.dim() - batch_ndim
        moment = (weight.reshape(weight.shape + (1,) * trailing) * stat.double()).sum(0)
        out[name] = to_site_shape(moment, site, trailing)
    for name in derived:
        out[name] = _derived_moment(run, name, fn)
    return {name: out[name] for name in [r.name for r in run.run.sites] if name in out}


def _derived_moment(run: WeightedRun, name: str, fn: Statistic) -> torch.Tensor:
    """A deterministic site's moment: its statistic at every combination of the
    particles of the groups it reads, weighed by their joint weights."""
    record = run.run.sites_by_name[name]
    weight = run.joint_weights[name].double()
    value = record.value.detach()
    with torch.no_grad():
        stat = torch.as_tensor(resolve_fn(fn, name)(value)).double()
    batch_ndim = value.dim() - len(record.fn.event_shape)
    trailing = stat.dim() - batch_ndim
    if trailing < 0 or stat.shape[:batch_ndim] != value.shape[:batch_ndim]:
        raise ValueError(
            f"fn for site '{name}' returned shape {tuple(stat.shape)} for values of shape "
            f"{tuple(value.shape)}: it must keep the particle and batch dims (work "
            "elementwise, or reduce only the event dims)."
        )
    width = max(weight.dim(), batch_ndim)
    weight = weight.reshape((1,) * (width - weight.dim()) + weight.shape + (1,) * trailing)
    stat = stat.reshape((1,) * (width - batch_ndim) + stat.shape)
    groups = [width + d for d in range(-width, 0) if run.structure.group_at_dim(d) is not None]
    moment = weight * stat
    moment = moment.sum(groups, keepdim=True) if groups else moment
    # What is left: the plates' dims (size-1 particle dims on their left) and the
    # statistic's own.
    plates = run.structure.max_plate_nesting
    batch, trimmed = plate_layout(record, plates)
    if width >= plates:
        moment = moment.reshape(moment.shape[width - plates:])
    else:
        moment = moment.reshape((1,) * (plates - width) + moment.shape)
    moment = moment.expand(batch + moment.shape[plates:])
    return moment.reshape(trimmed + moment.shape[plates:])
