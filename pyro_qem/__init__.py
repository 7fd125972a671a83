"""pyro_qem: massively parallel importance weighting and QEM inference for Pyro models.

Swap ``SVI(model, guide, optim, loss)`` for ``Inference(model, AutoQEM(model), K, lr)``.
The package's layers import one way: :mod:`~pyro_qem.handlers` (effect handlers and the
records they produce) -> :mod:`~pyro_qem.model` (structure and discovery) ->
:mod:`~pyro_qem.estimator` (factors, contraction, weights) -> :mod:`~pyro_qem.guides` ->
:mod:`~pyro_qem.infer` (the step, M-step, schedules, fit) -> :mod:`~pyro_qem.outputs`;
:mod:`~pyro_qem.families` sits beside the handlers, :mod:`~pyro_qem.evals` apart.
"""

from .guides import AutoGradientNormal, AutoQEM, QEMGuide, StateCollisionError
from .estimator.memory import MemoryBudgetError
from .infer import (MPRWS, MPVI, FitHistory, Inference, QEMCollapseWarning, RobbinsMonro,
                    SlowStepWarning, SubsampleWarning, fit)
from .outputs import (
    QEMDiagnosticWarning,
    diagnose,
    log_likelihood,
    log_predictive_density,
    moment_runs,
    posterior_moments,
    posterior_predictive,
    predictive_log_likelihood,
    sample_guide,
    sample_posterior,
    to_inference_data,
)

__version__ = "0.1.0"

__all__ = [
    "AutoGradientNormal", "AutoQEM", "FitHistory", "Inference", "MPRWS", "MPVI",
    "MemoryBudgetError", "QEMCollapseWarning", "QEMDiagnosticWarning", "QEMGuide",
    "RobbinsMonro", "SlowStepWarning", "StateCollisionError", "SubsampleWarning",
    "__version__", "diagnose", "fit", "log_likelihood", "log_predictive_density", "moment_runs",
    "posterior_moments", "posterior_predictive", "predictive_log_likelihood", "sample_guide",
    "sample_posterior", "to_inference_data",
]
