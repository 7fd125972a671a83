"""Record what a model run did at each sample site, for the estimator to read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.util import site_is_subsample

from .params import ParamCollector


def is_subsampled(frame: CondIndepStackFrame) -> bool:
    """Whether a plate frame holds a minibatch (``subsample_size`` smaller than its size)."""
    return frame.full_size is not None and frame.full_size != frame.size


def user_scale(scale, frames: Iterable[CondIndepStackFrame]):
    """A site's scale (float or tensor, as Pyro's messages carry it) without the
    ``N / B`` factors of its subsampled plates: what ``poutine.scale`` put there."""
    for frame in frames:
        if is_subsampled(frame):
            scale = scale * frame.size / frame.full_size
    return scale


@dataclass
class ParticleDraw:
    """What a QEM guide did at one latent site: the K particles' ``log q`` (zero for an
    enumerated site, whose dim holds its support), the particle group whose dim holds
    them, and the ``pyro.param`` s its q read (gradient-fitted sites only)."""

    log_q: torch.Tensor
    group: int
    enumerated: bool = False
    params: Optional[Dict[str, torch.Tensor]] = None


@dataclass
class SiteRecord:
    """One sample site of one model run: what the estimator needs and nothing more.

    ``draw`` is set for latent sites whose particles a QEM guide drew, None otherwise.
    """

    name: str
    fn: torch.distributions.Distribution
    value: torch.Tensor
    is_observed: bool
    mask: Optional[torch.Tensor]
    scale: object
    frames: Tuple[CondIndepStackFrame, ...]
    is_deterministic: bool = False
    draw: Optional[ParticleDraw] = None


class SiteRecorder(ParamCollector):
    """Collects a :class:`SiteRecord` per sample site, the indices of subsampled plates
    and (as :class:`ParamCollector`) the parameters the run read.

    Lighter than :class:`pyro.poutine.trace_messenger.TraceMessenger`: it keeps no graph and
    copies nothing, because the step that reads it runs every iteration.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sites: List[SiteRecord] = []
        self.subsamples: Dict[str, torch.Tensor] = {}

    def __enter__(self) -> "SiteRecorder":
        self.sites = []
        self.subsamples = {}
        return super().__enter__()

    def _pyro_post_sample(self, msg) -> None:
        if site_is_subsample(msg):
            self.subsamples[msg["name"]] = msg["value"]
            return
        if msg["is_observed"] and not isinstance(msg["value"], torch.Tensor):
            raise not_a_tensor_error(msg["name"], msg["value"])
        self.sites.append(_record(msg))


def not_a_tensor_error(name: str, value) -> TypeError:
    """The error for an observed site whose ``obs=`` is not a tensor (numpy arrays and
    lists run in Pyro, but the estimator needs tensors)."""
    return TypeError(
        f"Observed site '{name}' has obs= of type {type(value).__name__}; pyro_qem "
        "needs a torch.Tensor with the site's batch and event shape. Convert it, e.g. "
        "obs=torch.as_tensor(y, dtype=torch.get_default_dtype())."
    )


def _record(msg) -> SiteRecord:
    infer = msg["infer"] or {}
    return SiteRecord(
        name=msg["name"],
        fn=msg["fn"],
        value=msg["value"],
        is_observed=msg["is_observed"],
        mask=msg["mask"],
        scale=msg["scale"],
        frames=tuple(f for f in msg["cond_indep_stack"] if f.vectorized),
        is_deterministic=bool(infer.get("_deterministic")),
    )
