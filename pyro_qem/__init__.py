"""pyro_qem: massively parallel importance weighting and QEM inference for Pyro models.

Swap ``SVI(model, guide, optim, loss)`` for ``Inference(model, AutoQEM(model), K, lr)``.
"""

from .guides import AutoGradientNormal, AutoQEM, QEMGuide
from .infer import MPRWS, MPVI, Inference, RobbinsMonro
from .infer.fit import FitHistory, fit
from .outputs import (
    QEMDiagnosticWarning,
    diagnose,
    posterior_moments,
    predictive_log_likelihood,
    sample_guide,
    sample_posterior,
    to_inference_data,
)

__version__ = "0.1.0"

__all__ = ["AutoGradientNormal", "AutoQEM", "Inference", "MPRWS", "MPVI", "QEMGuide",
           "RobbinsMonro", "__version__"]
__all__ += ["FitHistory", "QEMDiagnosticWarning", "diagnose", "fit", "posterior_moments",
            "predictive_log_likelihood", "sample_guide", "sample_posterior", "to_inference_data"]
