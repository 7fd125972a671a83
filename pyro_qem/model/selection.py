"""Which plate elements a run touched: the minibatch indices of subsampled plates, and
reading or writing those elements of a full-size tensor."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence, Tuple

import torch

from ..handlers import is_subsampled

# (batch dim of a plate, indices of the minibatch): which plate elements a step touched.
Selection = Sequence[Tuple[int, torch.Tensor]]


def selection_of(frames: Iterable, subsamples: Mapping[str, torch.Tensor]) -> Selection:
    """(dim, indices) of each subsampled plate among ``frames``, outermost dim first."""
    selection = []
    for frame in frames:
        if is_subsampled(frame):
            if frame.name not in subsamples:
                raise RuntimeError(
                    f"Plate '{frame.name}' is subsampled but its indices were not seen; the "
                    "guide must be entered before the plate is created."
                )
            selection.append((frame.dim, subsamples[frame.name]))
    return sorted(selection, key=lambda s: s[0])


def gather(tensor: torch.Tensor, selection: Selection, trailing: int) -> torch.Tensor:
    """The elements of ``tensor`` that ``selection`` picks (``trailing`` event dims)."""
    for dim, index in selection:
        tensor = tensor.index_select(dim - trailing, index)
    return tensor


def scatter_(tensor: torch.Tensor, selection: Selection, values: torch.Tensor, trailing: int) -> None:
    """In-place inverse of :func:`gather`."""
    if not selection:
        tensor.copy_(values)
        return
    (dim, index), rest = selection[0], selection[1:]
    sub = tensor.index_select(dim - trailing, index)
    scatter_(sub, rest, values, trailing)
    tensor.index_copy_(dim - trailing, index, sub)
