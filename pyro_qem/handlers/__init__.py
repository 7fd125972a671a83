"""Effect handlers that pyro_qem runs models under.

The guides themselves (:mod:`pyro_qem.guides`) are effect handlers too: they replace
each latent site's value by K particles.
"""

from .params import ParamCollector
from .plate_chunks import PlateChunkMessenger
from .record import SiteRecord, SiteRecorder, is_subsampled

__all__ = ["ParamCollector", "PlateChunkMessenger", "SiteRecord", "SiteRecorder", "is_subsampled"]
