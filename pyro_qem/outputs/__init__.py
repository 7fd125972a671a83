"""What users get out of a fit: posterior moments and draws, predictive log-likelihood,
ArviZ data, diagnostics (the fit loop itself is :func:`pyro_qem.infer.fit.fit`)."""

from .draws import resample_run, sample_guide, sample_posterior
from .moments import moment_runs, posterior_moments

__all__ = ["moment_runs", "posterior_moments", "resample_run", "sample_guide", "sample_posterior"]
