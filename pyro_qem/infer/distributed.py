"""QEM across processes: each process contracts its own shard of the data plate.

A distributed fit runs one :class:`~pyro_qem.infer.Inference` per process (under
``torchrun`` or :func:`torch.multiprocessing.spawn`, after the user's
:func:`torch.distributed.init_process_group`), each given ``process_group=``. Every
process declares its rows the ordinary Pyro way, ``pyro.plate("data", N,
subsample=this_ranks_rows)``, so the model stays runnable by SVI and NUTS.

What is exchanged, per step:

- the particles of every *global* site (outside the sharded plate) are broadcast from
  rank 0 (one message of K values per site and element of the other plates), so every
  process weighs the same particles: local draws consume a different amount of the
  random stream on each process, so seeding alone would not keep them equal;
- every plate-reduced term of the sharded plate (the sum over this process's rows of
  each row's log-sum-exp over its own particles, a tensor over the global groups'
  particle dims; for indexed models the rows folded into their groups) is summed over
  the processes by one all-reduce, in a way that keeps the gradient to the local rows:
  ``x + (all_reduce(x.detach()) - x.detach())``. Each process then holds the exact
  full-data ``log P_hat``, the same weights of the global groups (their source
  gradients), and the exact weights of its own rows' particles;
- one 8-byte all-reduce of the number of rows this step (the plate's ``N / B`` under
  minibatches inside the shards).

Local sites never leave their process. Every collective waits at most ``timeout``
seconds; a failed or missing process raises :class:`DistributedError`, naming the step
and what to do, instead of hanging.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import warnings
import zlib
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.util import site_is_subsample

from ..estimator.estimate import PlateReduction
from ..guides.qem_guide import QEMGuide
from ..handlers import SiteRecord, is_subsampled
from ..model import ModelStructure, SiteInfo, rng_preserved

try:  # torch builds without distributed support exist (some macOS wheels)
    import torch.distributed as dist
except ImportError:  # pragma: no cover
    dist = None


# Marks the exchange that starts an output run, so that processes running different
# outputs (or an output against a step) fail at once instead of mixing messages.
_OUTPUT_TAG = 0x514D


class DistributedError(RuntimeError):
    """A collective of a distributed fit failed or timed out (a process died, hung, or
    runs another model), or the processes' set-up disagrees."""


class ProcessGroup:
    """The processes of a distributed QEM fit: a :mod:`torch.distributed` process
    group, the timeout of its collectives, and (optionally) this process's shard.

    Example::

        torch.distributed.init_process_group("gloo")        # torchrun sets the env
        rows = torch.arange(rank, N, world_size)             # this process's shard
        group = ProcessGroup(timeout=120)
        inference = Inference(model, AutoQEM(model), K=30, process_group=group)
        for _ in range(300):
            inference.step(y[rows], rows)                     # plate("data", N, subsample=rows)

    :param group: a process group of :mod:`torch.distributed` (default: the world group
        that :func:`torch.distributed.init_process_group` made).
    :param timeout: seconds any one collective may wait for the other processes before
        :class:`DistributedError` is raised.
    :param shard: this process's rows of the sharded plate, when the model subsamples
        *within* them (minibatches): the shards are checked against these, and each
        step's indices must lie in them. None: the rows of the first step are the shard.
    :param src: the rank whose global particles and set-up state every process uses.
    :raises RuntimeError: if :mod:`torch.distributed` is not initialised.
    """

    def __init__(self, group=None, *, timeout: float = 300.0,
                 shard: Optional[torch.Tensor] = None, src: int = 0) -> None:
        if dist is None or not dist.is_available():
            raise RuntimeError("process_group: this torch build has no torch.distributed.")
        if not dist.is_initialized():
            raise RuntimeError(
                "process_group was given, but torch.distributed is not initialised in this "
                "process. Call torch.distributed.init_process_group('gloo') (or 'nccl' on "
                "GPUs) in every process before creating the Inference; torchrun sets the "
                "environment it reads (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE)."
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        if not 0 <= src < self.world_size:
            raise ValueError(f"src must be a rank in 0..{self.world_size - 1}, got {src}.")
        self.src = src
        self.timeout = float(timeout)
        self.shard = None if shard is None else _as_index(shard, "shard")
        self.backend = dist.get_backend(self.group)
        self.what = "set-up"  # the step being run, for error messages
        #: Collectives called and bytes this process put into them, since creation.
        self.messages = 0
        self.bytes = 0

    def __repr__(self) -> str:
        return (f"ProcessGroup(rank={self.rank}, world_size={self.world_size}, "
                f"backend={self.backend!r}, timeout={self.timeout:g})")

    # ------------------------------------------------------------- collectives

    def _device(self, tensor: torch.Tensor) -> torch.Tensor:
        # NCCL moves CUDA tensors only; gloo takes CPU ones (and CUDA ones, slowly).
        if self.backend == "nccl" and tensor.device.type != "cuda":
            return tensor.cuda()
        return tensor

    def _count(self, tensor: torch.Tensor) -> None:
        self.messages += 1
        self.bytes += tensor.numel() * tensor.element_size()

    def _wait(self, work, what: str) -> None:
        try:
            work.wait(datetime.timedelta(seconds=self.timeout))
        except RuntimeError as error:
            raise DistributedError(
                f"Distributed QEM, {self.what}: the collective for {what} failed on rank "
                f"{self.rank} of {self.world_size} ({' '.join(str(error).split())[:300]}). "
                f"Another process died, hung for more than timeout={self.timeout:g} s, or runs "
                "a different model or number of steps. Check the other processes' logs, "
                "then restart every process from the last checkpoint "
                "(guide.load_state_dict(torch.load(path)) of save_checkpoint's file)."
            ) from error

    def all_reduce(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """The sum of ``tensor`` over the processes (a new tensor; not differentiable)."""
        buffer = self._device(tensor.detach().clone().contiguous())
        self._count(buffer)
        self._wait(dist.all_reduce(buffer, group=self.group, async_op=True), what)
        return buffer.to(tensor.device)

    def broadcast(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """Rank ``src``'s ``tensor`` on every process (a new tensor)."""
        value = tensor.detach()
        is_bool = value.dtype == torch.bool
        buffer = self._device((value.to(torch.uint8) if is_bool else value).clone().contiguous())
        self._count(buffer)
        self._wait(dist.broadcast(buffer, src=self._global_rank(self.src), group=self.group,
                                  async_op=True), what)
        buffer = buffer.to(tensor.device)
        return buffer.bool() if is_bool else buffer

    def all_gather(self, tensor: torch.Tensor, what: str) -> List[torch.Tensor]:
        """Every process's ``tensor`` (same shape on all), in rank order."""
        value = self._device(tensor.detach().contiguous())
        out = [torch.empty_like(value) for _ in range(self.world_size)]
        self._count(value)
        self._wait(dist.all_gather(out, value, group=self.group, async_op=True), what)
        return [t.to(tensor.device) for t in out]

    def all_gather_rows(self, rows: torch.Tensor, sizes: Sequence[int], what: str) -> List[torch.Tensor]:
        """Every process's ``rows`` (dim 0 of size ``sizes[rank]``), padded for the
        exchange and cut back."""
        longest = max(sizes)
        padded = rows.new_zeros((longest,) + rows.shape[1:])
        padded[:rows.shape[0]] = rows
        return [t[:n] for t, n in zip(self.all_gather(padded, what), sizes)]

    def reducer(self, plate: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """The differentiable sum over processes of a term reduced over ``plate``:
        ``x + (all_reduce(x.detach()) - x.detach())``, the full-data value whose
        gradient goes to this process's rows."""
        def reduce(term: torch.Tensor) -> torch.Tensor:
            local = term.detach()
            total = self.all_reduce(local, f"the sum over pyro.plate('{plate}')")
            return term + (total - local)
        return reduce

    def _global_rank(self, rank: int) -> int:
        if self.group is dist.group.WORLD or self.group is None:
            return rank
        return dist.get_global_rank(self.group, rank)


def as_process_group(process_group) -> Optional[ProcessGroup]:
    """``Inference``'s ``process_group=`` argument as a :class:`ProcessGroup` (None for a
    single-process fit)."""
    if process_group is None or isinstance(process_group, ProcessGroup):
        return process_group
    if dist is None or not dist.is_available():
        raise RuntimeError("process_group: this torch build has no torch.distributed.")
    if not dist.is_initialized():
        ProcessGroup()  # raises the not-initialised error
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(
            "process_group must be None, a pyro_qem.infer.distributed.ProcessGroup, or a "
            "torch.distributed process group (e.g. torch.distributed.group.WORLD), got "
            f"{type(process_group).__name__}."
        )
    return ProcessGroup(process_group)


def _as_index(indices, what: str) -> torch.Tensor:
    index = torch.as_tensor(indices)
    if index.dim() != 1 or index.dtype in (torch.bool,) or index.is_floating_point():
        raise ValueError(f"{what} must be a 1-D tensor of integer row indices, got "
                         f"dtype {index.dtype} and shape {tuple(index.shape)}.")
    return index.long().cpu()


# ----------------------------------------------------------------- the fit's state


class Sharding:
    """One distributed fit's plan: the sharded plate, every process's shard, and the
    per-step exchange. :class:`~pyro_qem.infer.Inference` makes one at its first step.

    :ivar plate: the sharded plate's name.
    :ivar size: its full size N.
    :ivar shards: every process's rows, in rank order.
    """

    def __init__(self, group: ProcessGroup, plate: str, size: int, shards: List[torch.Tensor]) -> None:
        self.group = group
        self.plate = plate
        self.size = size
        self.shards = shards

    @property
    def shard(self) -> torch.Tensor:
        """This process's rows."""
        return self.shards[self.group.rank]

    def is_local(self, site: SiteInfo) -> bool:
        """Whether the site is inside the sharded plate (its particles stay here)."""
        return self.plate in site.plates

    def particle_hook(self, site: SiteInfo, value: torch.Tensor, selection) -> torch.Tensor:
        """The guide's particle hook: rank ``src``'s particles of a global site."""
        if self.is_local(site):
            return value
        return self.group.broadcast(value, f"the particles of site '{site.name}'")

    def start_output_run(self, num_sets: int) -> None:
        """Check that every process starts the same output run (with the same number
        of particle sets); warn once if the shards differ in size, as joint draws then
        use up each process's random stream differently."""
        previous, self.group.what = self.group.what, "an output"
        try:
            headers = self.group.all_gather(torch.tensor([_OUTPUT_TAG, num_sets]), "the start of an output run")
        finally:
            self.group.what = previous
        if any(int(h[0]) != _OUTPUT_TAG for h in headers):
            raise DistributedError(
                "Distributed QEM: the processes are not running the same output (or one runs "
                "an output while another steps). Call each output on every process, in the "
                "same order, with the same arguments apart from the rows."
            )
        per_rank = _disagreement([int(h[1]) for h in headers])
        if per_rank:
            # sample_posterior takes its set sizes from rank 0, so this is a bug.
            raise DistributedError(
                f"Distributed QEM: an output asked for different numbers of particle sets per "
                f"run on different processes ({per_rank}). Please report this with the model."
            )
        if not getattr(self, "_warned_unequal", False) and len({s.numel() for s in self.shards}) > 1:
            self._warned_unequal = True
            warnings.warn(
                f"The shards of pyro.plate('{self.plate}') differ in size "
                f"({sorted({s.numel() for s in self.shards})}): moments are exact and the "
                "same on every process, but joint draws (sample_posterior) may give the "
                "processes different draws of the global sites after the first draw of a "
                "particle set. Use shards of equal size for joint draws.",
                UserWarning,
                stacklevel=4,
            )

    def synchronise_random_stream(self) -> None:
        """Reseed torch's random stream on every process from rank ``src``'s, so that
        what is sampled next from identical inputs is identical (the global sites'
        indices in joint resampling; local draws consume different amounts)."""
        seed = torch.randint(0, 2 ** 62, (1,), dtype=torch.int64)
        torch.manual_seed(int(self.group.broadcast(seed, "the random seed of an output")))

    def reductions(self, subsamples: Mapping[str, torch.Tensor]) -> Dict[str, PlateReduction]:
        """This step's :class:`~pyro_qem.estimator.estimate.PlateReduction` of the
        sharded plate: its reducer and ``N / (rows of every process)``."""
        rows = subsamples.get(self.plate)
        if rows is None:
            raise DistributedError(
                f"Distributed QEM, {self.group.what}: pyro.plate('{self.plate}') was not "
                "subsampled in this run; every step must pass this process's rows as "
                f"pyro.plate('{self.plate}', {self.size}, subsample=rows)."
            )
        count = torch.tensor([float(rows.numel())], dtype=torch.float64)
        total = int(self.group.all_reduce(count, "the number of rows").item())
        return {self.plate: PlateReduction(self.group.reducer(self.plate), self.size / total)}


class _ShardSetup(Messenger):
    """At set-up, a plate given this process's rows (``subsample=rows``) as if it had
    ``subsample_size=len(rows)``, with every set-up chunk being those rows.

    The guide's set-up walks subsampled plates chunk by chunk to initialise q of every
    element, and refuses explicit indices; a process of a distributed fit has only its
    own rows, which are then its every chunk (the other rows' initial state comes from
    their processes afterwards).
    """

    def _pyro_sample(self, msg) -> None:
        if not site_is_subsample(msg) or msg["value"] is None:
            return
        rows = torch.as_tensor(msg["value"])
        if rows.numel() >= msg["fn"].size:
            return
        msg["infer"] = dict(msg["infer"] or {}, _qem_rows=rows)
        msg["fn"] = _Subsample(msg["fn"].size, rows.numel(), device=rows.device)
        msg["value"] = None

    def _pyro_post_sample(self, msg) -> None:
        rows = (msg["infer"] or {}).get("_qem_rows")
        if site_is_subsample(msg) and rows is not None:
            # In place: the set-up's record of this chunk's indices is this tensor.
            msg["value"].copy_(rows)


def setup_guide(guide: QEMGuide, args: tuple, kwargs: dict,
                group: Optional["ProcessGroup"] = None) -> ModelStructure:
    """Set the guide up on this process's rows (see :class:`_ShardSetup`). With
    ``group``, which plate elements the guide keeps centred
    (:func:`~pyro_qem.handlers.noncentring.noncentring_plan`) is rank ``src``'s choice on
    every process: each would choose from its own rows, and elements proposed
    differently on different processes would not be one model."""
    model = guide.model

    def on_shard(*a, **k):
        with _ShardSetup():
            return model(*a, **k)

    def agree(masks: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        # Every process calls this once; the candidates themselves must match first
        # (another model proposes other sites non-centred), then rank src's masks rule.
        described = ", ".join(f"{name} {tuple(m.shape)}" for name, m in masks.items())
        header = torch.tensor([zlib.crc32(described.encode()) & 0x7FFFFFFF], dtype=torch.int64)
        headers = group.all_gather(header, "the non-centred proposals' sites")
        if len({int(h[0]) for h in headers}) > 1:
            per_rank = [None] * group.world_size
            dist.all_gather_object(per_rank, described or "none", group=group.group)
            raise DistributedError(
                f"Distributed QEM set-up (rank {group.rank}): the processes run different "
                "models: the sites they would propose non-centred differ ("
                + "; ".join(f"rank {r}: {d}" for r, d in enumerate(per_rank))
                + "). Every process must run the same model; only the rows of the sharded "
                "plate differ."
            )
        return {name: group.broadcast(mask.to(torch.float64).contiguous(),
                                      f"which elements of site '{name}' stay centred") > 0.5
                for name, mask in masks.items()}

    guide.model = on_shard
    guide.plan_hook = agree if group is not None else None
    try:
        return guide.setup(*args, **kwargs)
    finally:
        guide.model = model
        guide.plan_hook = None


def setup_sharding(group: ProcessGroup, guide: QEMGuide, run_probe: Callable[[], Tuple[List[SiteRecord], Dict[str, torch.Tensor]]],
                   num_particles: int) -> Sharding:
    """Check the processes agree and their shards cover the plate, then give every
    process rank ``src``'s state of the global sites.

    :param run_probe: runs the model once (its records and subsampled plates' indices).
    :raises ValueError: for a model without (or with several) subsampled plates, or
        shards that overlap or miss rows.
    :raises DistributedError: when the processes run different models or K.
    """
    structure = guide.structure
    with rng_preserved():
        records, subsamples = run_probe()
    plates = sorted({f.name for r in records for f in r.frames if is_subsampled(f)})
    if not plates:
        raise ValueError(
            "process_group was given, but no pyro.plate of the model is subsampled, so no "
            "process knows which rows are its own. Declare this process's rows as "
            "pyro.plate('data', N, subsample=rows) (rows: this process's indices into "
            "0..N-1), or drop process_group for a single-process fit."
        )
    if len(plates) > 1:
        raise NotImplementedError(
            f"process_group: the plates {plates} are all subsampled; a distributed fit shards "
            "exactly one plate (the data plate). Pass subsample= to that plate only."
        )
    if structure.data_links:
        # Raised on every process alike: they share the structure.
        child = sorted(structure.data_links)[0]
        raise NotImplementedError(
            f"process_group: pyro.plate('{child}') is nested in "
            f"pyro.plate('{structure.links[child]}') only through the rows' data (rows read "
            "both plates' latents directly), and each process sees its own rows only, so "
            f"the {child} elements whose rows are elsewhere would be placed wrongly. Let the "
            f"{child} latents read the {structure.links[child]} latents through an index of "
            f"their own, e.g. c = pyro.sample('c', dist.Normal(s[..., {child}_to_"
            f"{structure.links[child]}], sd)), or fit on one process."
        )
    plate = plates[0]
    size = structure.plates[plate].size
    rows = subsamples[plate].long().cpu()
    shard = group.shard if group.shard is not None else rows
    inside = group.shard is None or bool(torch.isin(rows, shard).all())
    header = torch.tensor([num_particles, size, shard.numel(), _signature(structure, plate),
                           int(inside)], dtype=torch.int64)
    headers = group.all_gather(header, "the set-up check")
    outside = [r for r, h in enumerate(headers) if not h[4]]
    if outside:  # raised on every process alike, so that none waits for the others
        raise ValueError(
            f"process_group: rank(s) {outside} subsampled rows of pyro.plate('{plate}') "
            "outside the shard declared with ProcessGroup(shard=...); minibatches must be "
            "drawn from each process's own shard."
        )
    if len({int(h[3]) for h in headers}) > 1:
        # Every process got here, so an object exchange cannot hang: name the sites.
        described = [None] * group.world_size
        dist.all_gather_object(described, _describe(structure, plate), group=group.group)
        per_rank = "; ".join(f"rank {r}: {d}" for r, d in enumerate(described))
        raise DistributedError(
            f"Distributed QEM set-up (rank {group.rank}): the processes run different "
            f"models ({per_rank}). Every process must run the same model; only the rows "
            f"of pyro.plate('{plate}') differ."
        )
    _check_agreement(headers, plate, group.rank)
    sizes = [int(h[2]) for h in headers]
    shards = group.all_gather_rows(shard, sizes, f"the shards of pyro.plate('{plate}')")
    check_shards(shards, plate, size)
    _share_global_state(group, guide, structure, plate)
    sharding = Sharding(group, plate, size, shards)
    _share_initial_rows(guide, sharding)
    return sharding


def _describe(structure: ModelStructure, plate: str) -> str:
    """What must match across processes: the latent sites, their groups, and the shapes
    of those outside the sharded plate; and the plates' sizes."""
    parts = []
    for name, site in sorted(structure.sites.items()):
        shape = "local" if plate in site.plates else tuple(site.batch_shape) + tuple(site.event_shape)
        parts.append(f"{name} (group {structure.group_of(name).index}, {shape}, {site.dtype})")
    parts += [f"plate {name} of {info.size}" for name, info in sorted(structure.plates.items())]
    return ", ".join(parts)


def _signature(structure: ModelStructure, plate: str) -> int:
    """A 31-bit fingerprint of :func:`_describe`."""
    return zlib.crc32(_describe(structure, plate).encode()) & 0x7FFFFFFF


def _check_agreement(headers: Sequence[torch.Tensor], plate: str, rank: int) -> None:
    names = ("K", f"the size of pyro.plate('{plate}')")
    for column, what in enumerate(names):
        if what is None:
            continue
        per_rank = _disagreement([int(h[column]) for h in headers])
        if per_rank:
            raise DistributedError(
                f"Distributed QEM set-up (rank {rank}): the processes disagree on {what} "
                f"({per_rank}). Every process must run the same model with the same K and "
                "the same plate sizes; only the rows of the sharded plate differ."
            )


def _disagreement(values: Sequence[int]) -> Optional[str]:
    """``"rank 0: a, rank 1: b, ..."`` when the processes' values differ, else None."""
    if len(set(values)) <= 1:
        return None
    return ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))


def check_shards(shards: Sequence[torch.Tensor], plate: str, size: int) -> None:
    """Raise unless the shards are disjoint and cover ``0..size-1``.

    Example::

        check_shards([torch.arange(0, 5), torch.arange(5, 10)], "data", 10)  # fine

    :param shards: every process's row indices, in rank order.
    :param plate: the plate's name, for the message.
    :param size: the plate's full size N.
    :raises ValueError: naming the rows that are out of range, shared or missing.
    """
    for rank, shard in enumerate(shards):
        if shard.numel() == 0:
            raise ValueError(
                f"process_group: rank {rank} has no rows of pyro.plate('{plate}'); give every "
                "process at least one row (or run on fewer processes)."
            )
        bad = shard[(shard < 0) | (shard >= size)]
        if bad.numel():
            raise ValueError(
                f"process_group: rank {rank}'s rows of pyro.plate('{plate}', {size}) include "
                f"{bad[:5].tolist()}, outside 0..{size - 1}."
            )
    # 2 bytes a row: a set-up check of 1e9 rows needs 2 GB, not the 8 of int64.
    owner = torch.full((size,), -1, dtype=torch.int16 if len(shards) < 2 ** 15 else torch.int32)
    for rank, shard in enumerate(shards):
        taken = owner[shard] >= 0
        values, counts = torch.unique(shard, return_counts=True)
        if taken.any() or (counts > 1).any():
            if taken.any():
                row = int(shard[taken][0])
                where = f"row {row} is held by rank {int(owner[row])} and rank {rank}"
            else:
                row = int(values[counts > 1][0])
                where = f"row {row} appears {int(counts[counts > 1][0])} times in rank {rank}'s rows"
            raise ValueError(
                f"process_group: the shards of pyro.plate('{plate}') overlap: {where}. Each "
                "row must belong to exactly one process (e.g. rows = torch.arange(rank, N, "
                "world_size))."
            )
        owner[shard] = rank
    missing = (owner < 0).nonzero().flatten()
    if missing.numel():
        raise ValueError(
            f"process_group: the shards of pyro.plate('{plate}', {size}) miss "
            f"{missing.numel()} rows (e.g. {missing[:5].tolist()}); together the processes "
            f"must hold every row 0..{size - 1} (e.g. rows = torch.arange(rank, N, "
            "world_size)). Subsample within the shards with ProcessGroup(shard=...)."
        )


@torch.no_grad()
def _share_global_state(group: ProcessGroup, guide: QEMGuide, structure: ModelStructure,
                        plate: str) -> None:
    """Rank ``src``'s state of every site outside the sharded plate, and its update
    count, on every process (set-up runs draw from the prior, which differs per
    process once local sites have consumed the random stream)."""
    for key in sorted(guide.state.tensors):
        site = _site_of_key(key)
        if site is not None and (site not in structure.sites or plate in structure.sites[site].plates):
            continue
        leaf = guide.state.leaf(key)
        leaf.copy_(group.broadcast(leaf, f"the set-up state '{key}'"))


@torch.no_grad()
def _share_initial_rows(guide: QEMGuide, sharding: Sharding) -> None:
    """Every process's initial state of its rows of the local sites, on every process:
    set-up initialised only this process's rows, and q of every row must be valid
    (e.g. for ``guide.distributions()``), though only this process's rows are fitted
    here."""
    gathered = gathered_state_dict(guide, sharding)["state"]
    structure = guide.structure
    for key, value in gathered.items():
        site = _site_of_key(key)
        if site is not None and site in structure.sites and sharding.is_local(structure.sites[site]):
            guide.state.leaf(key).copy_(value)


def _site_of_key(key: str) -> Optional[str]:
    """The site of a state key ``<stat>.<site>`` (None for ``num_updates``)."""
    return key.split(".", 1)[1] if "." in key else None


def whole_plate_view(run, sharding: Sharding):
    """A particle run over shards that together cover the plate, seen as the full-data
    run it is: the sharded plate's frames and scales as if not subsampled (its
    reducer completes every plate-reduced term), so outputs that require whole plates
    accept it. Local sites keep this process's rows (the run's structure gives them
    this process's batch shape). A run of a minibatch step (``N / B`` over all
    processes above 1) is returned as it is."""
    plate = sharding.plate
    reduction = run.plate_reducers.get(plate)
    if reduction is None or reduction.scale != 1.0:
        return run
    sites = []
    for record in run.sites:
        frame = next((f for f in record.frames if f.name == plate and is_subsampled(f)), None)
        if frame is None:
            sites.append(record)
            continue
        frames = tuple(f._replace(full_size=f.size) if f is frame else f for f in record.frames)
        # Pyro scaled the site by N / B_r for the subsample; the reducer now sums the
        # processes' rows instead.
        scale = record.scale * (frame.size / frame.full_size)
        if isinstance(scale, float) and math.isclose(scale, 1.0, rel_tol=1e-12):
            scale = 1.0
        sites.append(dataclasses.replace(record, frames=frames, scale=scale))
    subsamples = {name: index for name, index in run.subsamples.items() if name != plate}
    structure = run.structure
    dim, rows = structure.plates[plate].dim, sharding.shard.numel()
    local = {}
    for name, site in structure.sites.items():
        if sharding.is_local(site) and len(site.batch_shape) >= -dim:
            shape = list(site.batch_shape)
            shape[dim] = rows
            local[name] = dataclasses.replace(site, batch_shape=torch.Size(shape))
    structure = dataclasses.replace(structure, sites={**structure.sites, **local})
    return dataclasses.replace(run, sites=sites, subsamples=subsamples, structure=structure)


# ----------------------------------------------------------------- checkpoints


@torch.no_grad()
def gathered_state_dict(guide: QEMGuide, sharding: Sharding) -> Dict[str, object]:
    """The guide's :meth:`~pyro_qem.guides.QEMGuide.state_dict` with every process's
    rows of the local sites in place: the state of the whole fit, which any process (or
    a single-process guide of the full data) restores with ``load_state_dict``. A
    collective: every process must call it."""
    group, structure = sharding.group, guide.structure
    sizes = [s.numel() for s in sharding.shards]
    state = guide.state.state_dict()
    for key in sorted(state):
        site = _site_of_key(key)
        if site is None or site not in structure.sites or not sharding.is_local(structure.sites[site]):
            continue
        info = structure.sites[site]
        position = len(info.batch_shape) + structure.plates[sharding.plate].dim
        tensor = state[key]
        rows = tensor.index_select(position, sharding.shard).movedim(position, 0).contiguous()
        parts = group.all_gather_rows(rows, sizes, f"the checkpoint of '{key}'")
        full = tensor.movedim(position, 0).clone()
        for shard, part in zip(sharding.shards, parts):
            full[shard] = part
        state[key] = full.movedim(0, position).contiguous()
    return {"prefix": guide.prefix, "state": state}


def save_checkpoint(inference, path: str) -> None:
    """Save a distributed fit: every process's rows gathered into one file, written by
    rank ``src`` (atomically: a crash while writing leaves the previous file). A
    collective: call it on every process at the same step. In a single-process fit it
    saves ``guide.state_dict()``.

    Resume (on any number of processes, or one) with::

        guide.load_state_dict(torch.load(path))

    :param inference: the :class:`~pyro_qem.infer.Inference` being fitted.
    :param path: the file to write.
    """
    sharding = getattr(inference, "sharding", None)
    guide = inference.guide
    if guide.structure is None:
        raise RuntimeError("save_checkpoint: the fit has not taken a step yet; nothing to save.")
    if sharding is None:
        if getattr(inference, "process_group", None) is not None:
            raise RuntimeError("save_checkpoint: the distributed fit has not taken a step yet.")
        state, writer = guide.state_dict(), True
    else:
        previous, sharding.group.what = sharding.group.what, "save_checkpoint"
        try:
            state = gathered_state_dict(guide, sharding)
        finally:
            sharding.group.what = previous
        writer = sharding.group.rank == sharding.group.src
    if writer:
        temporary = f"{path}.tmp{os.getpid()}"
        torch.save(state, temporary)
        os.replace(temporary, path)


def gather_rows(values: torch.Tensor, sharding: Sharding, dim: int) -> torch.Tensor:
    """Every process's rows of a local output, in row order 0..N-1 along ``dim``: e.g.
    the posterior means of a site inside the sharded plate, which each process
    computes for its own rows. A collective: every process must call it.

    :param values: this process's values, its rows (in the order of its shard) along
        ``dim``.
    :param sharding: the fit's :class:`Sharding` (``inference.sharding``).
    :param dim: the dim of ``values`` that holds the rows.
    """
    sizes = [s.numel() for s in sharding.shards]
    dim = dim % values.dim() if values.dim() else 0
    if values.shape[dim] != sharding.shard.numel():
        raise ValueError(
            f"gather: dim {dim} of the values has {values.shape[dim]} entries, but this "
            f"process holds {sharding.shard.numel()} rows of pyro.plate('{sharding.plate}')."
        )
    rows = values.movedim(dim, 0).contiguous()
    parts = sharding.group.all_gather_rows(rows, sizes, f"gathering the rows of pyro.plate('{sharding.plate}')")
    full = rows.new_zeros((sharding.size,) + rows.shape[1:])
    for shard, part in zip(sharding.shards, parts):
        full[shard.to(full.device)] = part
    return full.movedim(0, dim)
