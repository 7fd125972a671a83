"""What pyro_qem knows about a model: its sites, plates and particle groups
(:mod:`.structure`), found once by tracing it (:mod:`.discovery`), and which plate
elements a run touched (:mod:`.selection`).

This layer sits on :mod:`pyro_qem.handlers` and below everything else: the estimator,
the guides, inference and outputs all read the same :class:`ModelStructure`.
"""

from .discovery import Prototype, discover, prior_dependencies, prototype_traces, rng_preserved
from .selection import Selection, gather, scatter_, selection_of
from .structure import GroupInfo, ModelStructure, PlateInfo, SiteInfo, Symbols, group_sites

__all__ = ["GroupInfo", "ModelStructure", "PlateInfo", "Prototype", "Selection", "SiteInfo", "Symbols",
           "discover", "gather", "group_sites", "prior_dependencies", "prototype_traces", "rng_preserved", "scatter_",
           "selection_of"]
