"""Effect handlers that pyro_qem runs models under, and the records they produce.

The bottom layer of the package: these modules import only Pyro and torch. The QEM
guides (:mod:`pyro_qem.guides`) are effect handlers too; they sit above, because they
build q from the fitted state.
"""

from .index_probe import IndexedValue, IndexProbe, IndexUse, plain
from .noncentring import NonCentring
from .params import ParamCollector
from .plate_chunks import PlateChunkMessenger
from .record import ParticleDraw, SiteRecord, SiteRecorder, is_subsampled, user_scale
from .uncondition import UnconditionData

__all__ = ["IndexProbe", "IndexUse", "IndexedValue", "NonCentring", "ParamCollector", "ParticleDraw", "PlateChunkMessenger", "SiteRecord", "SiteRecorder",
           "UnconditionData", "is_subsampled", "plain", "user_scale"]
