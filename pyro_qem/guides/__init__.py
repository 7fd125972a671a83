"""Guides fitted by QEM: effect handlers that draw particles for a model's latent sites."""

from .auto import AutoQEM
from .gradient_auto import AutoGradientNormal
from .qem_guide import QEMGuide
from .state import MomentState, StateCollisionError

__all__ = ["AutoGradientNormal", "AutoQEM", "MomentState", "QEMGuide", "StateCollisionError"]
