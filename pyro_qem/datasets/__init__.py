"""Small data sets bundled with the package (no downloads at run time).

- ``radon``: log radon, basement indicator and log uranium for 4 states x 300 zip
  codes (Gelman and Hill's radon survey, as processed for the QEM paper).
- ``bus_breakdown``: NYC bus delays for 2 years x 3 boroughs x 150 bus IDs per split,
  five train/test splits (NYC OpenData, as processed for the QEM paper).
"""

from __future__ import annotations

from importlib import resources
from typing import Dict

import numpy as np
import torch

__all__ = ["load", "load_radon"]


def load(name: str) -> Dict[str, np.ndarray]:
    """The arrays of a bundled data set, by name (``"radon"`` or ``"bus_breakdown"``)."""
    path = resources.files(__name__) / f"{name}.npz"
    if not path.is_file():
        raise ValueError(f"No bundled data set '{name}'; available: radon, bus_breakdown.")
    with resources.as_file(path) as file, np.load(file) as arrays:
        return {key: arrays[key] for key in arrays.files}


def load_radon(dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
    """Radon data as tensors of shape (4 states, 300 zip codes).

    :returns: ``{"log_radon", "basement", "log_uranium"}``.
    """
    return {k: torch.as_tensor(np.asarray(v, dtype=np.float64), dtype=dtype) for k, v in load("radon").items()}
