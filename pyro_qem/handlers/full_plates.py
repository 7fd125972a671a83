"""Run subsampled plates at their full size (used once, to discover a model's sites)."""

from __future__ import annotations

import torch

from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample


class FullPlateMessenger(Messenger):
    """Makes every ``pyro.plate(..., subsample_size=B)`` select all of its elements.

    The guide's parameters cover a plate's full size, so the prototype run that
    discovers the sites must see every element. Plates given explicit ``subsample=``
    indices keep them; discovery reports those as unsupported.
    """

    def _pyro_sample(self, msg) -> None:
        if site_is_subsample(msg) and msg["value"] is None:
            fn = msg["fn"]
            msg["value"] = torch.arange(fn.size, device=fn.device)
            msg["done"] = True
