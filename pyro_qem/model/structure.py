"""What tracing a model once tells us: its sites, plates, groups and tensor dims.

This is kept apart from the numeric step so that the step can be replayed (or, later,
compiled) without rediscovering anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

import torch
from opt_einsum import get_symbol


# The name of the plate that stacks independent particle runs (outputs that need
# many fresh particle sets run them in one vectorised model call).
PARTICLE_SETS = "_pyro_qem_particle_sets"


@dataclass(frozen=True)
class PlateInfo:
    """A vectorised ``pyro.plate``: its tensor dim and full size."""

    name: str
    dim: int
    size: int


@dataclass(frozen=True)
class SiteInfo:
    """A latent sample site as the prototype run saw it (plates at full size)."""

    name: str
    support: object
    batch_shape: torch.Size
    event_shape: torch.Size
    plates: Tuple[str, ...]
    dtype: torch.dtype
    device: torch.device
    enumerated: bool = False


@dataclass(frozen=True)
class GroupInfo:
    """Latent sites that share one particle dim (particle k of each is used together)."""

    index: int
    dim: int
    sites: Tuple[str, ...]
    plates: FrozenSet[str]


@dataclass(frozen=True)
class ModelStructure:
    """Everything discovery fixes: the inputs of every later step.

    :ivar links: for each plate whose rows read a latent of another plate through an
        integer index (``a[..., county]`` inside ``pyro.plate("house", N)``), that
        other plate: ``{"house": "county"}``.
    :ivar indexed_sites: the latent sites read through such an index.
    :ivar data_links: the linked plates whose index into their parent no latent applies:
        the data nest them (rows read a county's and its state's latents directly), and
        each run reads the map off the rows.
    :ivar outside_parents: for each site whose log density depends on a latent in a
        plate the site is not in (found by provenance at set-up), those latents and plates.
    :ivar parents: for each site, the latent sites its log density depends on (found by
        provenance at set-up; empty if the model could not be traced that way).
    :ivar symbols: the einsum symbols of its groups and plates (:class:`Symbols`).
    """

    max_plate_nesting: int
    sites: Dict[str, SiteInfo]
    groups: Tuple[GroupInfo, ...]
    plates: Dict[str, PlateInfo]
    observed: Dict[str, torch.Size]  # observed site -> its batch shape at set-up
    links: Dict[str, str] = field(default_factory=dict)  # rows' plate -> indexed plate
    indexed_sites: FrozenSet[str] = frozenset()  # latents read through an index
    data_links: FrozenSet[str] = frozenset()  # linked plates nested through the data only
    # site -> ((latent it depends on, plates of that latent the site is not in), ...):
    # dependencies found by provenance tracking at set-up that cross a plate boundary
    # (e.g. x.mean() over a plate and, with it, over the particles).
    outside_parents: Dict[str, Tuple[Tuple[str, Tuple[str, ...]], ...]] = field(default_factory=dict)
    # site -> the latent sites its log density depends on (provenance at set-up; empty
    # where the model could not be traced that way): each must leave its particle dim
    # in the site's log density, or the particles were mixed up.
    parents: Dict[str, FrozenSet[str]] = field(default_factory=dict)
    # latent site -> its elements (batch shape) that are masked out (poutine.mask, or a
    # masked distribution) and whose value no other site reads: absent, their particles
    # keep uniform weights. A masked element that is read has a flat prior instead.
    absent: Dict[str, torch.Tensor] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        site_to_group = {name: g.index for g in self.groups for name in g.sites}
        object.__setattr__(self, "_site_to_group", site_to_group)
        object.__setattr__(self, "symbols", Symbols(self))

    def group_of(self, site: str) -> GroupInfo:
        return self.groups[self._site_to_group[site]]

    def reachable_plates(self, plates) -> FrozenSet[str]:
        """``plates`` and every plate their rows nest in through links."""
        found = set(plates)
        for plate in plates:
            while plate in self.links and self.links[plate] not in found:
                plate = self.links[plate]
                found.add(plate)
        return frozenset(found)

    def particle_sets_plate(self, size: int) -> PlateInfo:
        """The plate of ``size`` independent particle sets in one run: one tensor dim
        left of every particle group's dim, so that each set's particles combine only
        with the same set's particles (see :meth:`with_particle_sets`)."""
        return PlateInfo(PARTICLE_SETS, -(self.max_plate_nesting + len(self.groups) + 1), size)

    def with_particle_sets(self, size: int) -> "ModelStructure":
        """This structure with the plate of :meth:`particle_sets_plate` added: a run
        whose model call sits inside that plate holds ``size`` independent particle
        runs, which the estimator contracts as one plate element each."""
        plates = {**self.plates, PARTICLE_SETS: self.particle_sets_plate(size)}
        return dataclasses.replace(self, plates=plates)

    def reading_plate(self, plates: Iterable[str], target: str) -> Optional[str]:
        """The plate among ``plates`` whose rows belong to elements of plate ``target``
        through indexed plates (:attr:`links`: house -> county -> state), or None."""
        for plate in plates:
            parent = self.links.get(plate)
            while parent is not None:
                if parent == target:
                    return plate
                parent = self.links.get(parent)
        return None

    def reads_across(self, plates: Iterable[str], other: Iterable[str]) -> bool:
        """Whether something in ``plates`` that reads a latent in the plates ``other``
        reads it other than through its rows' index: ``other`` has a plate outside
        ``plates`` that no chain of :attr:`links` from one of ``plates`` reaches (or
        several such plates), so one element would read several of its elements."""
        plates = set(plates)
        missing = set(other) - plates
        if not missing:
            return False
        return len(missing) > 1 or self.reading_plate(plates, next(iter(missing))) is None

    def group_at_dim(self, dim: int) -> Optional[GroupInfo]:
        """The group whose particles live in tensor dim ``dim`` (None for a plate dim)."""
        index = -dim - self.max_plate_nesting - 1
        return self.groups[index] if 0 <= index < len(self.groups) else None


class Symbols:
    """One einsum symbol per particle group and per plate of a model (the names of the
    dims of the estimator's packed factors)."""

    def __init__(self, structure: "ModelStructure") -> None:
        self.group = {g.index: get_symbol(g.index) for g in structure.groups}
        offset = len(structure.groups)
        self.plate = {name: get_symbol(offset + i) for i, name in enumerate(structure.plates)}
        self.plate_names = {sym: name for name, sym in self.plate.items()}


def group_sites(
    sites: Dict[str, SiteInfo], groups: Optional[Sequence[Iterable[str]]], max_plate_nesting: int
) -> Tuple[GroupInfo, ...]:
    """One :class:`GroupInfo` per user group, and one per remaining latent site.

    Groups are ordered by the first appearance of a member in the model, so that the
    dims are allocated in model order.
    """
    member_of: Dict[str, int] = {}
    user_groups: List[Tuple[str, ...]] = [tuple(g) for g in (groups or [])]
    for index, members in enumerate(user_groups):
        _check_group(members, sites, member_of)
        for name in members:
            member_of[name] = index
    ordered: List[Tuple[str, ...]] = []
    seen = set()
    for name in sites:
        if name in member_of:
            key = member_of[name]
            if key not in seen:
                seen.add(key)
                ordered.append(tuple(n for n in sites if member_of.get(n) == key))
        else:
            ordered.append((name,))
    return tuple(
        GroupInfo(
            index=i,
            dim=-(max_plate_nesting + 1 + i),
            sites=members,
            plates=frozenset(sites[members[0]].plates),
        )
        for i, members in enumerate(ordered)
    )


def _check_group(members: Tuple[str, ...], sites: Dict[str, SiteInfo], member_of: Dict) -> None:
    if not members:
        raise ValueError("groups: an empty group was given; each group needs at least one site.")
    for name in members:
        if name not in sites:
            raise ValueError(
                f"groups: site '{name}' is not a latent sample site of the model "
                f"(latent sites: {sorted(sites)}). Remove it from the group."
            )
        if name in member_of:
            raise ValueError(f"groups: site '{name}' appears in more than one group.")
    enumerated = [name for name in members if sites[name].enumerated]
    if enumerated and len(members) > 1:
        raise ValueError(
            f"groups: site '{enumerated[0]}' is enumerated exactly (infer={{'enumerate': "
            "'parallel'}), so its dim holds its support, not particles; it cannot share a "
            "dim with other sites. Remove it from the group."
        )
    plates = {name: set(sites[name].plates) for name in members}
    first = members[0]
    for name in members[1:]:
        if plates[name] != plates[first]:
            raise ValueError(
                f"groups: sites '{first}' (plates {sorted(plates[first])}) and '{name}' "
                f"(plates {sorted(plates[name])}) are in different plates; only sites in "
                "exactly the same plates can share a particle dim."
            )
