"""Small data sets bundled with the package (no downloads at run time), and synthetic ones.

- ``radon``: log radon, basement indicator and log uranium for 4 states x 300 zip
  codes (Gelman and Hill's radon survey, as processed for the QEM paper).
- ``radon_mn``: the Minnesota part of the same survey as a ragged, indexed-group data
  set: 919 houses in 85 counties (1 to 116 houses each). Source: "posteriordb data set
  radon_mn (Gelman and Hill radon survey, Minnesota), commit
  28f8d3d6e975315f42aa274a8399f21e07a43b30"; converted once to ``radon_mn.npz`` with
  zero-based county indices (posteriordb follows Stan and counts from 1).
- ``bus_breakdown``: NYC bus delays for 2 years x 3 boroughs x 150 bus IDs per split,
  five train/test splits (NYC OpenData, as processed for the QEM paper).

:func:`make_hierarchical` simulates indexed-group regressions of any size, with
power-law group sizes and the true parameters returned for recovery checks.
"""

from __future__ import annotations

from importlib import resources
from typing import Dict

import numpy as np
import torch

from .synthetic import DEFAULT_TRUE_PARAMS, make_hierarchical

__all__ = ["load", "load_radon", "load_radon_mn", "make_hierarchical", "DEFAULT_TRUE_PARAMS"]

# The names :func:`load` accepts, i.e. the ``.npz`` files shipped beside this module.
AVAILABLE = ("radon", "radon_mn", "bus_breakdown")


def load(name: str) -> Dict[str, np.ndarray]:
    """The arrays of a bundled data set, by name, exactly as stored.

    :param name: ``"radon"``, ``"radon_mn"`` or ``"bus_breakdown"``.
    :returns: ``{array name: numpy array}``.
    :raises ValueError: if no data set of that name is bundled.

    Example::

        >>> from pyro_qem.datasets import load
        >>> int(load("radon_mn")["county"].max())
        84
    """
    path = resources.files(__name__) / f"{name}.npz"
    if name not in AVAILABLE or not path.is_file():
        raise ValueError(f"No bundled data set '{name}'; available: {', '.join(AVAILABLE)}.")
    with resources.as_file(path) as file, np.load(file) as arrays:
        return {key: arrays[key] for key in arrays.files}


def load_radon(dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
    """Radon data as tensors of shape (4 states, 300 zip codes).

    :returns: ``{"log_radon", "basement", "log_uranium"}``.
    """
    return {k: torch.as_tensor(np.asarray(v, dtype=np.float64), dtype=dtype)
            for k, v in load("radon").items()}


def load_radon_mn(dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
    """Minnesota radon: 919 houses in 85 counties, a classic varying-intercept data set.

    Gelman and Hill's radon survey, Minnesota part, as published in the posterior
    database (data set ``radon_mn``, commit 28f8d3d6e975315f42aa274a8399f21e07a43b30).
    Houses are rows; counties are groups of 1 to 116 houses, so the data are ragged and
    the county of each house is given by an index rather than by an array axis.

    :param dtype: floating dtype of every array except ``county``.
    :returns: a dict of tensors:

        - ``log_radon`` (919,): log radon level of the house, the response.
        - ``floor`` (919,): floor of the measurement, 0 = basement, 1 = first floor
          (stored as 0/1 in ``dtype`` so that it can multiply a coefficient).
        - ``log_uranium`` (919,): log soil uranium of the house's county (the county
          value repeated per house).
        - ``county`` (919,) ``torch.int64``: the house's county, **zero-based**,
          ``0 .. 84`` (the source counts from 1, as Stan does).
        - ``county_log_uranium`` (85,): log uranium per county, so that
          ``county_log_uranium[county] == log_uranium``.

    Example, the varying-intercept model; ``a[..., county]`` indexes the last (county)
    axis, so the model also works when inference adds batch dimensions in front::

        >>> import pyro
        >>> import pyro.distributions as dist
        >>> from pyro_qem.datasets import load_radon_mn
        >>> data = load_radon_mn()
        >>> def model(data):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     sigma_a = pyro.sample("sigma_a", dist.HalfNormal(1.0))
        ...     b = pyro.sample("b", dist.Normal(0.0, 1.0))
        ...     sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        ...     with pyro.plate("counties", 85):
        ...         a = pyro.sample("a", dist.Normal(mu, sigma_a))
        ...     with pyro.plate("houses", 919):
        ...         mean = a[..., data["county"]] + b * data["floor"]
        ...         pyro.sample("y", dist.Normal(mean, sigma), obs=data["log_radon"])
        >>> pyro.poutine.trace(model).get_trace(data).nodes["y"]["value"].shape
        torch.Size([919])
    """
    arrays = load("radon_mn")
    return {k: (torch.as_tensor(v, dtype=torch.int64) if k == "county"
                else torch.as_tensor(np.asarray(v, dtype=np.float64), dtype=dtype))
            for k, v in arrays.items()}
