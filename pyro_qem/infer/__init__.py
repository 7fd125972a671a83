"""Inference: the QEM step, its M-step, step-size schedules and the fit loop.

One particle pipeline (:mod:`.pipeline`) serves the step and every output in
:mod:`pyro_qem.outputs`; the M-step lives in :mod:`.mstep`, fits across processes in
:mod:`.distributed`.
"""

from .collapse import QEMCollapseWarning
from .compiled import CompileFallbackWarning
from .distributed import DistributedError, ProcessGroup, save_checkpoint
from .fit import FitHistory, fit
from .inference import MPRWS, MPVI, Inference, SlowStepWarning, SubsampleWarning
from .pipeline import ParticleRun, WeightedRun, run_particles, weigh
from .schedules import Constant, RobbinsMonro

__all__ = ["CompileFallbackWarning", "Constant", "DistributedError", "FitHistory", "Inference", "MPRWS", "MPVI", "ParticleRun",
           "ProcessGroup", "QEMCollapseWarning", "RobbinsMonro", "SlowStepWarning", "SubsampleWarning", "WeightedRun", "fit",
           "run_particles", "save_checkpoint", "weigh"]
