"""pyro_qem: massively parallel importance weighting and QEM inference for Pyro models.

Swap ``SVI(model, guide, optim, loss)`` for ``Inference(model, AutoQEM(model), K, lr)``.
"""

from .guides import AutoQEM, QEMGuide
from .infer import Inference, RobbinsMonro

__version__ = "0.1.0"

__all__ = ["AutoQEM", "Inference", "QEMGuide", "RobbinsMonro", "__version__"]
