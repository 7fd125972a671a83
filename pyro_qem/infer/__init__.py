"""Inference loops: QEM updates of a guide, and their step-size schedules."""

from .inference import MPRWS, MPVI, Inference, ParticleRun, SubsampleWarning
from .schedules import Constant, RobbinsMonro

__all__ = ["Constant", "Inference", "MPRWS", "MPVI", "ParticleRun", "RobbinsMonro",
           "SubsampleWarning"]
