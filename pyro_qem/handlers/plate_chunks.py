"""Walk subsampled plates chunk by chunk (used at set-up, to see every element once)."""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple, Union

import torch

from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample


def minibatch_request(msg) -> Optional[Tuple[object, int, int]]:
    """``(fn, N, B)`` for the sample message by which ``pyro.plate(name, N,
    subsample_size=B)`` asks for its B indices (B < N, none given yet), else None."""
    if not site_is_subsample(msg) or msg["value"] is not None:
        return None
    fn = msg["fn"]
    size, batch = fn.size, fn.subsample_size
    if batch is None or batch >= size:
        return None
    return fn, size, batch


class PlateChunkMessenger(Messenger):
    """Makes each ``pyro.plate(..., subsample_size=B)`` select a block of B consecutive
    elements (wrapping around), instead of a random minibatch.

    The guide's parameters cover a plate's full size, and a plate cannot be entered at
    a size other than B, so set-up runs the model once per chunk. ``chunk`` is either
    one chunk index used by every subsampled plate, or ``{plate name: chunk index}``
    (plates not named take chunk 0), so that nested subsampled plates can be walked
    through every combination of their chunks. After a run, :attr:`indices` holds each
    subsampled plate's indices and :attr:`num_chunks` the number of chunks that cover
    it. Plates given explicit ``subsample=`` keep them.
    """

    def __init__(self, chunk: Union[int, Mapping[str, int]] = 0) -> None:
        super().__init__()
        self.chunk = chunk
        self.indices: Dict[str, torch.Tensor] = {}
        self.num_chunks: Dict[str, int] = {}

    def chunk_of(self, plate: str) -> int:
        """The chunk index this run uses for ``plate``."""
        if isinstance(self.chunk, Mapping):
            return int(self.chunk.get(plate, 0))
        return int(self.chunk)

    def _pyro_sample(self, msg) -> None:
        request = minibatch_request(msg)
        if request is None:
            return
        fn, size, batch = request
        start = (self.chunk_of(msg["name"]) * batch) % size
        msg["value"] = (start + torch.arange(batch, device=fn.device)) % size
        msg["done"] = True
        self.indices[msg["name"]] = msg["value"]
        self.num_chunks[msg["name"]] = -(-size // batch)
