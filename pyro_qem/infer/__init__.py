"""Inference: the QEM step, its M-step, step-size schedules and the fit loop.

One particle pipeline (:mod:`.pipeline`) serves the step and every output in
:mod:`pyro_qem.outputs`; the M-step lives in :mod:`.mstep`.
"""

from .collapse import QEMCollapseWarning
from .fit import FitHistory, fit
from .inference import MPRWS, MPVI, Inference, SubsampleWarning
from .pipeline import ParticleRun, WeightedRun, run_particles, weigh
from .schedules import Constant, RobbinsMonro

__all__ = ["Constant", "FitHistory", "Inference", "MPRWS", "MPVI", "ParticleRun", "QEMCollapseWarning", "RobbinsMonro",
           "SubsampleWarning", "WeightedRun", "fit", "run_particles", "weigh"]
