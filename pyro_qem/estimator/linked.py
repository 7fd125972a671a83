"""Indexed plates: rows that each depend on one group's particles, contracted exactly.

When a site in plate P (rows, e.g. houses) reads a latent of plate Q (groups, e.g.
counties) through an integer index (``a[..., county]``), row n uses the particles of
group ``index[n]`` only. The estimator then treats P as nested in Q with ragged
membership: it contracts P's own particle dims row by row (everything that lives in P),
which leaves one log factor per row over the particle dims of the groups the rows read,
and adds the rows of each group into a factor inside plate Q (a scatter-add, scaled by
N / B when P is subsampled; completed by P's plate reducer first when P's rows are
split across processes, so that a group whose rows live on several processes gets the
sum of all of them). Q's contraction is then the ordinary nested one, and each
group's particles are weighed by exactly its own rows. Memory grows with the number of
rows, never with the number of groups times the largest group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence, Set, Tuple

import torch
from pyro.ops.contract import contract_tensor_tree

from .contraction import Chunking, PlateReducers, log_marginal, plate_ring, term_tree
from .factors import LogFactor


@dataclass(frozen=True)
class PlateLink:
    """Rows of plate ``child`` (symbol) belong to elements of plate ``parent`` (symbol):
    row n to element ``index[n]``."""

    child: str
    parent: str
    index: torch.Tensor
    parent_size: int


def link_order(links: Mapping[str, PlateLink]) -> List[PlateLink]:
    """Links from the innermost rows outwards (house -> county before county -> state)."""
    depth: Dict[str, int] = {}

    def level(symbol: str, seen: Tuple[str, ...] = ()) -> int:
        if symbol not in links:
            return 0
        if symbol in seen:
            raise ValueError("Indexed plates form a cycle: " + " -> ".join(seen + (symbol,)))
        if symbol not in depth:
            depth[symbol] = 1 + level(links[symbol].parent, seen + (symbol,))
        return depth[symbol]

    return sorted(links.values(), key=lambda link: -level(link.child))


def fold_links(factors: Sequence[LogFactor], links: Mapping[str, PlateLink],
               local_dims: Mapping[str, FrozenSet[str]], plate_scales: Mapping[str, float],
               rows_of: Optional[Dict[str, List[LogFactor]]] = None,
               plate_reducers: PlateReducers = ()
               ) -> Tuple[List[LogFactor], Dict[str, float]]:
    """Replace the factors of every indexed (child) plate by factors inside its parent.

    :param factors: packed factors (sources included).
    :param links: child plate symbol -> :class:`PlateLink`.
    :param local_dims: plate symbol -> the particle dims of the groups inside it.
    :param plate_scales: ``N / B`` per subsampled plate symbol.
    :param rows_of: if given, filled with each child plate's factors before folding
        (what joint sampling needs to draw the rows' own particles afterwards).
    :param plate_reducers: plate symbol -> reducer of a sharded plate (see
        :data:`~pyro_qem.estimator.contraction.PlateReducers`): a sharded child plate's
        folded factor is completed by it; reducers of plates nested in a child apply in
        the child's own contraction.
    :returns: the new factors and the plate scales that still apply.
    """
    factors = list(factors)
    scales = dict(plate_scales)
    for link in link_order(links):
        rows = [f for f in factors if link.child in f.ordinal]
        if not rows:
            continue
        factors = [f for f in factors if link.child not in f.ordinal]
        if rows_of is not None:
            rows_of[link.child] = rows
        folded = _fold(rows, link, local_dims.get(link.child, frozenset()), scales,
                       dict(plate_reducers))
        factors.append(folded)
        scales.pop(link.child, None)
    return factors, scales


def contract_terms(terms: Sequence[LogFactor], plate_scales: Mapping[str, float],
                   plate_reducers: PlateReducers = (),
                   links: Optional[Mapping[str, PlateLink]] = None,
                   local_dims: Optional[Mapping[str, FrozenSet[str]]] = None,
                   chunking: Optional[Chunking] = None) -> torch.Tensor:
    """``log P_hat`` of a run's packed terms: the indexed plates' rows folded into their
    parents first (:func:`fold_links`), then the plated contraction, in chunks of
    ``chunking.plate`` if given (a plate of the folded terms: the rows' own
    contraction is not chunked).

    :param local_dims: plate symbol -> the particle dims of the groups inside it
        (needed with ``links``).
    """
    scales = dict(plate_scales)
    if links:
        terms, scales = fold_links(terms, links, local_dims or {}, scales,
                                   plate_reducers=plate_reducers)
    return log_marginal(terms, scales, plate_reducers, chunking)


def _fold(rows: Sequence[LogFactor], link: PlateLink, local: FrozenSet[str],
          scales: Mapping[str, float], reducers: PlateReducers) -> LogFactor:
    target = frozenset.intersection(*(f.ordinal for f in rows))
    tree, dim_to_size, _ = term_tree(rows)
    ring = plate_ring(dim_to_size, scales, reducers)
    present: Set[str] = set(dim_to_size)
    contracted = contract_tensor_tree(tree, set(local & present), ring=ring)
    terms = [ring.product(term, ordinal - target) if ordinal - target else term
             for ordinal, group in contracted.items() for term in group]
    term = ring.sumproduct(terms, set())
    dims = term._pyro_dims
    position = dims.index(link.child)
    values = term * scales.get(link.child, 1.0)
    index = link.index.to(values.device)
    # index_add runs several times faster along a contiguous last dim than along a
    # strided one (the rows' dim of a contraction's output, or of a particle-sets run).
    rows_last = values.movedim(position, -1).contiguous()
    grouped = rows_last.new_zeros(rows_last.shape[:-1] + (link.parent_size,))
    grouped = grouped.index_add(-1, index, rows_last).movedim(-1, position)
    ordinal = (target - {link.child}) | {link.parent}
    new_dims = dims.replace(link.child, link.parent)
    if link.parent in dims:
        raise ValueError("an indexed plate's rows already carry the parent plate's dim")
    if link.child in reducers:
        # Rows of one group may live on several processes: sum the folded group
        # factor over them (the scale above is the global N / B, so this is exact).
        grouped._pyro_dims = new_dims
        grouped = reducers[link.child](grouped)
    return LogFactor(f"rows:{link.child}", grouped, new_dims, frozenset(ordinal))


def row_index(child: str, target: str, links: Mapping[str, PlateLink]) -> torch.Tensor:
    """For each row of plate ``child``, its element of plate ``target`` (an ancestor
    through links): the composition of the links' indexes."""
    link = links[child]
    index = link.index
    while link.parent != target:
        if link.parent not in links:
            raise ValueError(f"plate symbol {target!r} is not an ancestor of {child!r}")
        link = links[link.parent]
        index = link.index.to(index.device)[index]
    return index
