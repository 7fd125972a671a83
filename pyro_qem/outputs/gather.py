"""Outputs of a distributed fit: every process's rows of the local sites in one place.

In a fit across processes (``Inference(..., process_group=...)``) every output of
:mod:`pyro_qem.outputs` is computed by every process: the global sites' values are
the same on all of them, and a site inside the sharded plate has this process's rows
only. :func:`gather_local` puts the rows of all processes together.
"""

from __future__ import annotations

from typing import Dict, Mapping

import torch

from ..infer.distributed import gather_rows
from ..infer.inference import Inference


def gather_local(inference: Inference, values: Mapping[str, torch.Tensor],
                 leading: int = 0) -> Dict[str, torch.Tensor]:
    """The outputs of every process, with the rows of each local site in row order
    ``0..N-1``; global sites are returned as they are. A collective: every process
    must call it (with the same sites). In a single-process fit it returns ``values``.

    Example::

        means = posterior_moments(inference, y[rows], rows)   # each process: its rows of z
        full = gather_local(inference, means)                 # z for all N rows
        draws = gather_local(inference, moment_runs(inference, y[rows], rows), leading=1)

    :param inference: the distributed :class:`~pyro_qem.infer.Inference`.
    :param values: ``{site: tensor}``, as an output returned it.
    :param leading: dims in front of each site's batch shape (1 for outputs stacked
        over runs or draws, 0 for :func:`~pyro_qem.outputs.posterior_moments`).
    :returns: ``{site: tensor}`` with the local sites at their full plate size.
    """
    if not isinstance(inference, Inference):
        raise TypeError(f"inference must be a pyro_qem.Inference, got {type(inference).__name__}.")
    sharding = inference.sharding
    if sharding is None:
        if inference.process_group is not None:
            raise RuntimeError("gather_local: the distributed fit has not taken a step yet.")
        return dict(values)
    structure = inference.guide.structure
    plate = structure.plates[sharding.plate]
    out = {}
    for name in sorted(values):
        value = values[name]
        site = structure.sites.get(name)
        if site is None:
            raise ValueError(f"gather_local: '{name}' is not a latent site of the model.")
        if not sharding.is_local(site):
            out[name] = value
            continue
        dim = leading + len(site.batch_shape) + plate.dim
        out[name] = gather_rows(value, sharding, dim)
    return {name: out[name] for name in values}
