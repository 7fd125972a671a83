"""Effect handlers that pyro_qem runs models under.

The guides themselves (:mod:`pyro_qem.guides`) are effect handlers too: they replace
each latent site's value by K particles.
"""

from .full_plates import FullPlateMessenger
from .record import SiteRecord, SiteRecorder

__all__ = ["FullPlateMessenger", "SiteRecord", "SiteRecorder"]
