"""Which plates index which: rows of plate P that read a latent of plate Q through an
integer index (``a[..., county]``) are linked P -> Q.

At set-up the prototype run records every integer-tensor index applied to a plate dim
of a latent (:class:`~pyro_qem.handlers.IndexProbe`); :func:`find_links` turns those
into the model's links (fixed for the guide's life), and every particle run reads the
index tensors of this run's data with :func:`run_indices`.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import torch

from ..handlers import IndexUse
from ..handlers.trace_guards import decided

# plate name -> (dim, size in this run)
PlateSizes = Mapping[str, Tuple[int, int]]


def consumer_plate(use: IndexUse, plates: PlateSizes) -> Optional[str]:
    """The plate whose elements the index's entries are: the active plate at the
    index's dim with its length, else the only plate of the model with that dim and
    length; None when no plate fits (the result feeds no plated site)."""
    length = use.index.numel()
    active = [name for name, dim, size in use.active if dim == use.batch_dim and size == length]
    if active:
        return active[-1]
    fits = sorted(name for name, (dim, size) in plates.items()
                  if dim == use.batch_dim and size == length and name != use.plate)
    if len(fits) > 1:
        raise ValueError(
            f"Site '{use.site}' is indexed along pyro.plate('{use.plate}') by an index of "
            f"length {length}, and plates {fits} all have that size at dim {use.batch_dim}: "
            "pyro_qem cannot tell which one the rows belong to. Apply the index inside the "
            "rows' plate (with pyro.plate(...): ... a[..., index] ...)."
        )
    return fits[0] if fits else None


def find_links(uses: Iterable[IndexUse], plates: PlateSizes) -> Tuple[Dict[str, str], FrozenSet[str]]:
    """``({child plate: parent plate}, indexed latent sites)`` from a set-up run.

    :raises ValueError: for crossed groupings (rows indexing latents of two plates that
        are not nested in each other), which no affordable exact contraction handles.
    """
    parents: Dict[str, Set[str]] = {}
    sites: Dict[Tuple[str, str], str] = {}
    indexes: Dict[Tuple[str, str], torch.Tensor] = {}
    indexed: Set[str] = set()
    for use in uses:
        child = consumer_plate(use, plates)
        if child is None or child == use.plate:
            continue
        parents.setdefault(child, set()).add(use.plate)
        sites.setdefault((child, use.plate), use.site)
        indexes.setdefault((child, use.plate), use.index)
        indexed.add(use.site)
    links = {child: next(iter(found)) for child, found in parents.items() if len(found) == 1}
    for child, found in parents.items():
        if len(found) > 1:
            nested = _nested_in_data(child, sorted(found), links, indexes)
            if nested is not None:
                # Rows reading a county and its state directly: the data nest the
                # plates (each county's rows all in one state), so the county links to
                # the state through a map read off the rows (see run_indices).
                for inner, outer in zip(nested, nested[1:]):
                    links.setdefault(inner, outer)
                links[child] = nested[0]
            else:
                links[child] = _innermost(child, sorted(found), links, sites)
    return links, frozenset(indexed)


def data_links(uses: Iterable[IndexUse], links: Mapping[str, str], plates: PlateSizes
               ) -> FrozenSet[str]:
    """The linked plates whose index into their parent no latent of theirs applies
    (:func:`find_links` nested them through the rows' data)."""
    applied = {(consumer_plate(use, plates), use.plate) for use in uses}
    return frozenset(child for child, parent in links.items() if (child, parent) not in applied)


def _nested_in_data(child: str, found: Sequence[str], links: Mapping[str, str],
                    indexes: Mapping[Tuple[str, str], torch.Tensor]) -> Optional[List[str]]:
    """The plates ``child``'s rows read, finest first, when the rows' indexes nest them
    (each element of one is, in every row, in a single element of the next) and none is
    yet linked elsewhere; else None."""
    order = sorted(found, key=lambda plate: -int(indexes[(child, plate)].unique().numel()))
    for inner, outer in zip(order, order[1:]):
        if inner in links and links[inner] != outer:
            return None
        if _nesting_map(indexes[(child, inner)], indexes[(child, outer)]) is None:
            return None
    return order


def _nesting_map(inner: torch.Tensor, outer: torch.Tensor,
                 size: Optional[int] = None) -> Optional[torch.Tensor]:
    """For each element of the inner plate (``size`` of them), its element of the outer
    plate, given each row's two indexes; None where some inner element's rows lie in
    two outer elements. Elements without rows map to 0 (nothing of theirs reads the
    outer plate)."""
    inner, outer = inner.reshape(-1).long(), outer.reshape(-1).long()
    size = int(inner.max()) + 1 if size is None and inner.numel() else (size or 0)
    mapping = torch.zeros(size, dtype=torch.long, device=inner.device)
    mapping[inner] = outer
    if not decided((mapping[inner] == outer).all()):
        return None
    return mapping


def _innermost(child: str, found: Sequence[str], links: Mapping[str, str],
               sites: Mapping[Tuple[str, str], str]) -> str:
    """Of several parents of ``child``, the one whose ancestors (through links) hold all
    the others: rows indexing a county and its state both nest in the county."""
    for candidate in found:
        ancestors = set(_ancestors(candidate, links))
        if set(found) - {candidate} <= ancestors:
            return candidate
    first, second = found[0], found[1]
    raise ValueError(
        f"Crossed groupings: rows of pyro.plate('{child}') read '{sites[(child, first)]}' of "
        f"pyro.plate('{first}') and '{sites[(child, second)]}' of pyro.plate('{second}') "
        "through indexes, and neither plate is nested in the other. The exact contraction "
        f"would need every combination of {first} and {second} particles (K to the power "
        f"of their sizes). Fit one of them as a fixed effect or a single vector site "
        f"(e.g. {second} effects as one .to_event(1) site outside the plates), or nest one "
        f"grouping in the other where the data nest (each {first} element in one {second} "
        f"element): let the {first} latents read the {second} ones through an index of "
        f"their own, e.g. a = pyro.sample('a', dist.Normal(s[..., {first}_to_{second}], "
        f"sd)) inside pyro.plate('{first}'), and the rows read only the {first} latents."
    )


def _ancestors(plate: str, links: Mapping[str, str]):
    seen = set()
    while plate in links and plate not in seen:
        seen.add(plate)
        plate = links[plate]
        yield plate


def ancestors(plate: str, links: Mapping[str, str]) -> Set[str]:
    """The plates ``plate``'s rows nest in through links (parent, grandparent, ...)."""
    return set(_ancestors(plate, links))


def run_indices(uses: Iterable[IndexUse], links: Mapping[str, str], plates: PlateSizes
                ) -> Dict[str, torch.Tensor]:
    """``{child plate: index into the parent plate}`` for one particle run.

    :raises ValueError: when a linked plate's rows read their parent with two different
        indexes, or an index falls outside the parent plate.
    """
    found: Dict[str, torch.Tensor] = {}
    for use in uses:
        child = consumer_plate(use, plates)
        if child is None or links.get(child) != use.plate:
            continue
        index = use.index
        previous = found.get(child)
        if previous is not None:
            if previous is not index and not (previous.shape == index.shape
                                              and decided((previous == index).all())):
                raise ValueError(
                    f"Rows of pyro.plate('{child}') read latents of pyro.plate('{use.plate}') "
                    "through two different indexes of the same length; each row must "
                    "belong to one element. Use one index column per grouping."
                )
            continue
        _check_range(child, use, plates)
        found[child] = index
    for child, parent in links.items():
        if child not in found and child in plates:
            derived = _derived_index(uses, child, parent, plates)
            if derived is not None:
                found[child] = derived
    return found


def _derived_index(uses: Iterable[IndexUse], child: str, parent: str, plates: PlateSizes
                   ) -> Optional[torch.Tensor]:
    """The index of a link that the data nest (:func:`find_links`): read off rows that
    index both plates.

    :raises ValueError: when this run's rows put an element of ``child`` in two elements
        of ``parent``.
    """
    by_rows: Dict[str, Dict[str, torch.Tensor]] = {}
    for use in uses:
        rows = consumer_plate(use, plates)
        if rows is not None and use.plate in (child, parent):
            by_rows.setdefault(rows, {}).setdefault(use.plate, use.index)
    for rows, indexes in by_rows.items():
        if child in indexes and parent in indexes:
            mapping = _nesting_map(indexes[child], indexes[parent], plates[child][1])
            if mapping is None:
                raise ValueError(
                    f"Rows of pyro.plate('{rows}') read latents of pyro.plate('{child}') and "
                    f"pyro.plate('{parent}'); at set-up each {child} element's rows were all in "
                    f"one {parent} element, but in this run some {child} element's rows are in "
                    f"two. Keep the nesting in all data passed to the model, or let the "
                    f"{child} latents read the {parent} ones through an index of their own."
                )
            return mapping
    return None


def _check_range(child: str, use: IndexUse, plates: PlateSizes) -> None:
    size = plates[use.plate][1] if use.plate in plates else None
    index = use.index
    # decided: a recorded step checks the range again on every replay.
    if index.numel() and size is not None and decided((index.min() < 0) | (index.max() >= size)):
        raise ValueError(
            f"Site '{use.site}' is indexed along pyro.plate('{use.plate}') (size {size}) by "
            f"rows of pyro.plate('{child}') with values from {int(index.min())} to "
            f"{int(index.max())}; indexes must lie in 0..{size - 1} (zero-based). Subtract "
            "1 from one-based indexes."
        )
