"""What users get out of a fit: posterior moments and draws, predictive log-likelihood,
ArviZ data and diagnostics (the fit loop itself is :func:`pyro_qem.infer.fit`)."""

from .diagnostics import (
    Diagnostics,
    QEMDiagnosticWarning,
    coordinate_correlations,
    diagnose,
    guide_log_weights,
    khat_threshold,
    pareto_khat,
    weight_ess,
)
from .draws import resample_run, sample_guide, sample_posterior
from .gather import gather_local
from .inference_data import to_inference_data
from .moments import moment_runs, posterior_moments
from .predictive import (
    log_likelihood,
    log_predictive_density,
    posterior_predictive,
    predictive_log_likelihood,
)

__all__ = [
    "coordinate_correlations",
    "Diagnostics",
    "QEMDiagnosticWarning",
    "diagnose",
    "gather_local",
    "guide_log_weights",
    "khat_threshold",
    "log_likelihood",
    "log_predictive_density",
    "moment_runs",
    "pareto_khat",
    "posterior_moments",
    "posterior_predictive",
    "predictive_log_likelihood",
    "resample_run",
    "sample_guide",
    "sample_posterior",
    "to_inference_data",
    "weight_ess",
]
