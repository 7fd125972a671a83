"""What every benchmark model provides, and the helpers they share."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

import pyro.distributions as dist

Data = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class BenchmarkModel:
    """A benchmark model: an ordinary Pyro model ``model(data, c=1.0)`` and its data.

    :param name: short name used on the command line (``bus``, ``radon``, ``movielens``).
    :param model: the Pyro model; ``c`` rescales one latent (the invariance experiment).
    :param load: ``device -> (train, test)`` data dicts; the test dict holds held-out
        plate elements of the same shapes.
    :param groups: the recommended particle groups for QEM.
    :param rescaled_site: the latent that ``c`` divides.
    :param rescale: the ``c`` of the rescaled variant.
    :param max_plate_nesting: the number of plate dims of the model.
    """

    name: str
    model: Callable
    load: Callable[[str], Tuple[Data, Data]]
    groups: Sequence[List[str]]
    rescaled_site: str
    rescale: float
    max_plate_nesting: int


def bundled(name: str) -> Dict[str, np.ndarray]:
    """The arrays of ``pyro_qem/datasets/<name>.npz`` (bundled with the package)."""
    with resources.as_file(resources.files("pyro_qem") / "datasets" / f"{name}.npz") as path:
        with np.load(path) as arrays:
            return {key: arrays[key] for key in arrays.files}


def as_tensors(arrays: Dict[str, np.ndarray], device: str) -> Data:
    """float32 tensors on ``device``."""
    return {k: torch.as_tensor(np.asarray(v, dtype=np.float32), device=device)
            for k, v in arrays.items()}


def linear(features: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``(features * coef).sum(-1)`` as one matmul of the coefficients by the features'
    transpose.

    ``coef`` (event dim last) is constant along the innermost plate, so where it has
    batch dims its size there is 1: ``coef (..., 1, P) @ features^T (..., P, N)`` gives
    the ``(..., 1, N)`` predictor, whose singleton is dropped (in that order, with no
    copy of the features per particle: for 2-D features one GEMM over all particles).
    """
    if coef.dim() < 2:
        coef = coef.unsqueeze(-2)
    return torch.matmul(coef, features.transpose(-1, -2)).squeeze(-2)


def std_normal(like: torch.Tensor, shape: Sequence[int] = ()) -> dist.Normal:
    """Normal(0, 1) with batch shape ``shape`` on ``like``'s device and dtype."""
    zeros = like.new_zeros(tuple(shape))
    return dist.Normal(zeros, torch.ones_like(zeros))
