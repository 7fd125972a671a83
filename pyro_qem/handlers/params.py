"""Collect the parameters a run touches, for gradient updates."""

from __future__ import annotations

from typing import Dict

import torch

from pyro.poutine.messenger import Messenger


class ParamCollector(Messenger):
    """Collects the unconstrained leaf of every ``pyro.param`` read inside it, by name
    (what :class:`pyro.infer.SVI` captures with ``poutine.trace(param_only=True)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.params: Dict[str, torch.Tensor] = {}

    def __enter__(self):
        self.params = {}
        return super().__enter__()

    def _pyro_post_param(self, msg) -> None:
        self.params[msg["name"]] = msg["value"].unconstrained()
