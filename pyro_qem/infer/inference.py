"""QEM inference: the drop-in replacement for ``SVI(model, guide, optim, loss)``."""

from __future__ import annotations

import warnings
from typing import AbstractSet, Callable, Dict, Optional, Union

import torch

from ..estimator import estimate
from ..estimator.memory import check_memory, check_memory_before_run, costly_factor_advice, default_budget
from ..guides.qem_guide import QEMGuide
from ..handlers.epochs import EpochSubsampleMessenger
from .collapse import CollapseMonitor
from .compiled import CompiledStep, check_compile
from .distributed import (
    ProcessGroup,
    Sharding,
    as_process_group,
    setup_guide,
    setup_sharding,
    whole_plate_view,
)
from .fit import FitHistory, fit
from .threads import check_num_threads, step_threads
from .gradients import apply, backward, check_objective, check_params
from .mstep import moment_update
from .regression import regression_kind, statistics_count
from .pipeline import ParticleRun, run_particles
from .schedules import StepSize, as_schedule, check_lr
from .update_choice import UpdateChoice


def _check_max_memory(max_memory) -> Optional[float]:
    if max_memory is None:
        return None
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, float)) or not max_memory > 0:
        raise ValueError(
            f"max_memory must be a positive number of bytes (e.g. 4 * 2**30 for 4 GiB) or "
            f"None for half the available memory, got {max_memory!r}."
        )
    return float(max_memory)


class SlowStepWarning(UserWarning):
    """A step's largest log density is large because its sites read several global
    latents in separate particle dims (the warning says which and how to group them)."""


class SubsampleWarning(UserWarning):
    """A minibatch fit that will not give the full-data posterior of some site outside
    the subsampled plate: one the minibatch regression cannot fit (its spread comes
    out distorted), or a fit without iterate averaging (its location wanders)."""


class Inference:
    """Fits a QEM guide to a model by massively parallel importance weighting and
    moment-matching EM: no gradients, no optimiser.

    Each :meth:`step` draws K particles of every latent site (each group in its own
    tensor dim), contracts the importance-weighted estimate ``P_hat`` of p(x) over all
    K^n particle combinations plate by plate, reads every site's posterior particle
    weights off one backward pass through zero source terms, and moves each q's mean
    parameters towards the weighted moments: ``m <- (1 - lr) m + lr m_hat``.

    Example::

        guide = AutoQEM(model)
        inference = Inference(model, guide, K=30, lr=0.1, average_from=200)
        for step in range(300):
            loss = inference.step(y)      # -log P_hat of the particles this step used

    :param model: the Pyro model.
    :param guide: a :class:`~pyro_qem.guides.QEMGuide` (e.g. :class:`~pyro_qem.guides.AutoQEM`);
        it holds all fitted state, so a new ``Inference`` on it continues the fit.
    :param K: particles per latent site (or group), at least 2.
    :param lr: smoothing step in (0, 1], or a schedule ``update count -> lr`` such as
        :class:`~pyro_qem.infer.schedules.RobbinsMonro`.
    :param average_from: from this update count on, the guide also keeps the running
        average of its iterates, which :meth:`QEMGuide.distributions` then reports and
        from which every output (joint draws, moments, predictive log-likelihood,
        diagnostics) draws its particles.
        Averaging (or a decaying ``lr``) removes the Monte Carlo noise that a fixed
        ``lr`` leaves in the fitted q. Start it once the loss has levelled off (e.g. half
        way): iterates still far from the posterior widen the average.
    :param optim: a :class:`pyro.optim.PyroOptim` (e.g. ``pyro.optim.Adam({"lr":
        0.01})``) for the ``pyro.param`` s of the model and of gradient-fitted guide
        sites; they step on ``-log P_hat`` within the same :meth:`step`.
    :param objective: the gradient rule for guide parameters: ``"vi"`` (MP-VI, the
        gradient of ``log P_hat`` through reparameterised particles) or ``"rws"``
        (MP-RWS, the wake-phi gradient with the particle weights held fixed).
    :param noise_compensation: keep q's spread from shrinking under noisy weights (the
        default). Smoothing mean parameters with a fixed ``lr`` shrinks a Normal q's
        variance by a factor ``1 - lr^2 / ESS`` per step on average even where the
        weights carry no information, which collapses large groups at high ``lr``; the
        compensation adds that variance back (see
        :meth:`~pyro_qem.families.Family.noise_compensation`). On the bus benchmark
        (69-dim global group, K = 30, lr = 0.3, 300 steps) ``-log P_hat`` rose from 463
        to 690 and the global sds fell to 0.002-0.03 of NUTS's without it; with it the
        loss stayed near 419 and the sds were 0.3-0.8 of NUTS's. ``False`` gives the
        original algorithm.
    :param max_memory: the memory budget of one step in bytes. Before the estimator
        allocates a run's factors, their sizes are computed from the shapes, and a step
        whose factors would exceed the budget raises
        :class:`~pyro_qem.estimator.memory.MemoryBudgetError` naming the largest
        factor. Before the contraction, its peak (intermediates and the backward pass
        for the weights included) is estimated by running it on shape-only ``meta``
        tensors (once per layout of the factors, and only when a cheap bound exceeds
        the budget); when it would not fit, one plate is contracted in chunks of its
        elements, each recomputed in the backward pass, with the same ``log P_hat`` and
        weights (to about 1e-12 in float64), or, when even one element per chunk would not
        fit, the step is refused saying why (e.g. an intermediate with no plate dim).
        None (default): half the memory available (RAM, or free GPU memory for a CUDA
        model) at the first step.
    :param num_threads: torch's intra-op threads during :meth:`step` and
        :meth:`evaluate_loss`: ``"auto"`` (default) uses one thread while the step's
        largest factor is small (below 2^20 entries: a swarm of small ops, which two
        threads slow down several-fold as soon as another process is busy: radon at
        K = 30 took 70 ms a step with 2 threads and 6.5 ms with 1 beside one busy
        process) and torch's own setting otherwise; an int fixes the count; None leaves
        torch's setting alone. The setting is restored after each step.
    :param process_group: None (a single-process fit), or a
        :class:`~pyro_qem.infer.distributed.ProcessGroup` (or a
        :mod:`torch.distributed` process group, wrapped with the default timeout) for
        a fit across processes: each process passes its own rows of the data plate and
        declares them with ``pyro.plate("data", N, subsample=rows)``. The shards are
        checked at the first step (disjoint, covering 0..N-1); every step then gives
        every process the exact full-data ``log P_hat`` and the same global q's
        (:mod:`pyro_qem.infer.distributed`). Gradient-fitted sites and ``optim`` are
        not supported with it.
    :param compile: False (default): every step runs the model under Pyro's handlers.
        ``"trace"``: record the tensor operations of one whole step (draws, log
        densities, contraction, weights, moment update) once the arguments' shapes have
        been seen, and replay the recording without Python handlers; ``True`` or
        ``"inductor"``: also compile the recording with :func:`torch.compile`;
        ``"cudagraphs"``: also capture the compiled step in a CUDA graph on a GPU (on
        a CPU, ``"inductor"``). A
        recording is checked at its first replay against the eager step from the same
        state and random state (equal to 1e-10 in float64; bit for bit with
        ``"trace"``), and anything it cannot cover (minibatches, a distributed fit,
        gradient-fitted parameters, contractions in chunks, Python control flow on
        tensor values) falls back to eager steps with a one-line
        :class:`~pyro_qem.infer.compiled.CompileFallbackWarning`. On the radon
        benchmark model (K = 30, one thread) a 2.2 ms eager step replays in 1.6 ms and runs
        compiled in 0.3 ms, after 6 s of compilation (less with torch's kernel cache
        warm)
        (:mod:`pyro_qem.infer.compiled`; ``python -m benchmarks.compiled_step``).
    :param update: how full-batch steps refit q. ``"moments"`` (default): moment
        matching of the weighted particles. ``"auto"``: moment matching, except for
        groups of Normal-coordinate or MultivariateNormal sites whose weights have
        degenerated (a running effective sample size below 2 for 25 steps in a row),
        which are refitted by regression with a step of at most 0.3
        (:mod:`pyro_qem.infer.update_choice`): for vector sites with many coupled
        coordinates, whose weights stay degenerate at any practical K (50
        logistic-regression coefficients in one site at K = 30: within 0.08 sd and
        0.98-1.01x of exact after 600 steps, where moment matching stayed 1.3-3.8x too
        wide). Not the default because on a two-component Gaussian mixture it merged
        the components on one seed of three (19 sd off) where moment matching finds
        the right mode. ``"regression"``: natural parameters fitted to the log joint
        at the particles for every group that allows it
        (:mod:`pyro_qem.infer.regression`; least squares on q's statistics, or for
        Normal-coordinate groups with too few particles a score-function step), which
        needs no effective sample size. Its fixed point is mean-field VI's (q's
        precision is the log joint's average curvature), which differs from moment
        matching where the posterior is far from q's family; ``diagnose`` says where
        the weights have degenerated.
        Minibatch steps always fit the sites outside the subsampled plate this way.
    """

    def __init__(
        self,
        model: Callable,
        guide: QEMGuide,
        K: int = 30,
        lr: StepSize = 0.1,
        *,
        average_from: Optional[int] = None,
        optim=None,
        objective: str = "vi",
        noise_compensation: bool = True,
        max_memory: Optional[float] = None,
        num_threads: Union[None, int, str] = "auto",
        process_group=None,
        compile: Union[bool, str] = False,
        update: str = "moments",
    ) -> None:
        if not isinstance(guide, QEMGuide):
            raise TypeError(
                f"guide must be a pyro_qem QEM guide (e.g. AutoQEM(model)), got "
                f"{type(guide).__name__}. Pyro's AutoGuides are fitted by SVI instead."
            )
        if isinstance(K, bool) or not isinstance(K, int) or K < 2:
            raise ValueError(
                f"K must be an int >= 2 (particles per latent site), got {K!r}. "
                "K = 10 to 30 is typical."
            )
        if not callable(lr):
            check_lr(lr, "lr")
        if average_from is not None and (not isinstance(average_from, int) or average_from < 0):
            raise ValueError(f"average_from must be a non-negative int or None, got {average_from!r}.")
        self.model = model
        self.guide = guide
        self.K = K
        self.lr = as_schedule(lr)
        self.average_from = average_from
        self.optim = optim
        self.objective = check_objective(objective)
        self.noise_compensation = noise_compensation
        self._choice = UpdateChoice(update)
        self.update = update
        self.max_memory = _check_max_memory(max_memory)
        self._budget: Optional[float] = self.max_memory
        self._collapse = CollapseMonitor(K, lambda group: self._choice.advice(self.guide, group, self.K))
        self.num_threads = check_num_threads(num_threads)
        self._largest_factor: Optional[int] = None
        # Minibatches by passes over the data (handlers.epochs): a pass's scaled
        # minibatch terms add up to the full-data term.
        self._epochs = EpochSubsampleMessenger()
        self._warned_plates: set = set()
        self.process_group: Optional[ProcessGroup] = as_process_group(process_group)
        if self.process_group is not None and optim is not None:
            raise NotImplementedError(
                "process_group with optim=: the gradients of pyro.params would need their own "
                "all-reduce, which a distributed QEM fit does not do yet. Fit the parameters "
                "in a single process, or make them latent sites fitted by QEM."
            )
        self._minibatch = False  # whether the last eager step subsampled a plate
        self._chunked = False  # whether it contracted in chunks to fit max_memory
        mode = check_compile(compile)
        #: The compiled step (:mod:`pyro_qem.infer.compiled`), or None for eager steps.
        self.compiled: Optional[CompiledStep] = CompiledStep(self, mode) if mode else None
        #: The distributed fit's plan (sharded plate, every process's rows), made at
        #: the first step; None in a single-process fit.
        self.sharding: Optional[Sharding] = None

    def run_particles(self, *args, **kwargs) -> ParticleRun:
        """Run the model once with K particles per latent site, recording every site
        (drawn, as for every output, from the running average of q's iterates where the
        guide keeps one)."""
        return self._run(args, kwargs)

    def _run(self, args: tuple, kwargs: dict, num_sets: int = 1) -> ParticleRun:
        if self.sharding is not None:
            self.sharding.start_output_run(num_sets)
        # Outputs propose from the averaged q, the fit's estimate: the last iterate
        # wanders about it (on the LKJ radon model its global means were up to 0.2
        # posterior sd off where the average's were 0.03).
        run = self._particle_run(args, kwargs, num_sets, averaged=True)
        if self.sharding is not None:
            # Outputs: a run over shards that cover the plate is a full-data run, and
            # what outputs sample from it must agree on the global sites.
            run = whole_plate_view(run, self.sharding)
            self.sharding.synchronise_random_stream()
        return run

    def _particle_run(self, args: tuple, kwargs: dict, num_sets: int = 1,
                      averaged: bool = False) -> ParticleRun:
        hook = None
        if self.process_group is not None:
            if self.sharding is None:
                self._setup_sharding(args, kwargs)
            hook = self.sharding.particle_hook
        if self._largest_factor is None:  # no run yet
            structure = self.guide.setup(*args, **kwargs)
            if self._budget is None:
                site = next(iter(structure.sites.values()), None)
                self._budget = default_budget(site.device if site is not None else None)
            # Refuse before the model allocates its own K-particle tensors.
            check_memory_before_run(structure, self.K, self._budget)
        with self._epochs:
            run = run_particles(self.model, self.guide, self.K, args, kwargs,
                                reparameterized=self.objective == "vi",
                                num_sets=num_sets, particle_hook=hook, averaged=averaged)
        largest = check_memory(run.sites, run.structure, self.K, self._budget)
        run.max_memory = self._budget
        if num_sets == 1:  # the thread choice is for a step's size, not a batch of sets
            if self._largest_factor is None:
                advice = costly_factor_advice(run.sites, run.structure, self.K)
                if advice is not None:
                    warnings.warn(advice, SlowStepWarning, stacklevel=4)
            self._largest_factor = largest
        if self.sharding is not None:
            run.plate_reducers = self.sharding.reductions(run.subsamples)
        return run

    def _setup_sharding(self, args: tuple, kwargs: dict) -> None:
        self.process_group.what = "set-up"
        structure = setup_guide(self.guide, args, kwargs, self.process_group)
        gradient_sites = sorted(name for name, site in structure.sites.items()
                                if not site.enumerated and name not in self.guide.families)
        if gradient_sites:
            raise NotImplementedError(
                f"process_group: sites {gradient_sites} are fitted by gradient, which a "
                "distributed QEM fit does not support yet; fit them by moment matching "
                "(AutoQEM) or run in a single process."
            )

        def probe():
            run = run_particles(self.model, self.guide, 2, args, kwargs)
            return run.sites, run.subsamples

        self.sharding = setup_sharding(self.process_group, self.guide, probe, self.K)

    def step(self, *args, **kwargs) -> float:
        """One QEM update (and one gradient step on parameters, if any). Returns
        ``-log P_hat`` of the particles this update used."""
        if self.process_group is not None:
            self.process_group.what = f"step {self.guide.state.num_updates() + 1}"
        with step_threads(self.num_threads, self._largest_factor):
            return self._step(args, kwargs)

    def _step(self, args: tuple, kwargs: dict) -> float:
        count = self.guide.state.num_updates()
        lr = check_lr(self.lr(count), "lr schedule value")
        average = self.average_from is not None and count >= self.average_from
        if self.compiled is not None:
            done = self.compiled.step(args, kwargs, lr, average)
            if done is not None:
                loss, weights = done
                skip = self._unfitted_groups()
                self._collapse.observe(self.guide.structure, weights, lr, loss, skip)
                self._choice.observe(weights, skip)
                return loss
        run = self._particle_run(args, kwargs)
        check_params(run.params, self.optim)
        # The regression reads the log joint off every particle's weight: weights in
        # float64 for the steps that use it (float32's floor, exp(-87), cut off
        # particles and biased the fit: means 0.5-0.8 sd off at N/B = 100).
        regressed = self._choice.regressed(self.guide, self.K)
        wide = regressed is None or bool(regressed) or bool(run.subsamples)
        result = estimate(run.sites, run.structure, self.K, links=run.links,
                          plate_reducers=run.plate_reducers, max_memory=self._budget,
                          float64_weights=wide)
        self._minibatch = bool(result.plate_scales)
        self._chunked = result.chunking is not None
        self._warn_subsampling(result.plate_scales, run.sites)
        source_grads, param_grads = backward(result.log_p_hat, result.sources, run.params,
                                             run.sites, self.objective)
        if param_grads:
            apply(self.optim, run.params, param_grads)
        weights = result.weights(source_grads)
        self._moment_update(run, weights, lr, average, regressed)
        loss = -result.log_p_hat.item()
        skip = self._unfitted_groups() | self._minibatched_groups(result.plate_scales)
        self._choice.observe(weights, skip)
        # The collapse monitor's drift is moment matching's; regressed groups have none.
        every = regressed if regressed is not None else {
            g.index for g in run.structure.groups if regression_kind(self.guide, g, self.K) is not None}
        self._collapse.observe(run.structure, weights, lr, loss, skip | every)
        return loss

    def _minibatched_groups(self, scales: Dict[str, float]) -> set:
        """Groups outside a subsampled plate: their weights are sharpened by N / B and
        the loss changes with each minibatch, so the collapse monitor's reading does not
        apply (their spread comes out too wide, not too narrow; ``SubsampleWarning``)."""
        if not scales:
            return set()
        names = self.guide.structure.symbols.plate_names
        subsampled = {names[symbol] for symbol in scales}
        return {g.index for g in self.guide.structure.groups if not subsampled <= g.plates}

    def _moment_update(self, run: ParticleRun, weights, lr: float, average: bool,
                       regressed: Optional[AbstractSet[int]]) -> None:
        sharding = self.sharding
        if sharding is None or run.plate_reducers[sharding.plate].scale != 1.0:
            moment_update(self.guide, run.sites, run.subsamples, weights, lr, average,
                          self.noise_compensation, regressed)
            return
        # The processes together cover the plate, so this is a full-batch step, but
        # each process's frames show its shard as a subsample, and moment_update would
        # give the global sites the minibatch update. Update the global sites without
        # the shard's records, the local ones apart, and count one update.
        count = self.guide.state.num_updates()
        latent = [r for r in run.sites if r.draw is not None]
        local = [r for r in latent if any(f.name == sharding.plate for f in r.frames)]
        outside = [r for r in latent if not any(f.name == sharding.plate for f in r.frames)]
        for records in (outside, local):
            moment_update(self.guide, records, run.subsamples, weights, lr, average,
                          self.noise_compensation, regressed)
        with torch.no_grad():
            self.guide.state.leaf("num_updates").fill_(count + 1)

    @torch.no_grad()
    def evaluate_loss(self, *args, **kwargs) -> float:
        """``-log P_hat`` for fresh particles from the fitted q (the running average of
        its iterates where ``average_from`` keeps one, as for every output), without
        updating it."""
        if self.process_group is not None:
            self.process_group.what = "evaluate_loss"
        with step_threads(self.num_threads, self._largest_factor):
            run = self.run_particles(*args, **kwargs)
            check_params(run.params, self.optim)
            return -estimate(run.sites, run.structure, self.K, with_sources=False,
                             links=run.links, plate_reducers=run.plate_reducers,
                             max_memory=self._budget).log_p_hat.item()

    def _unfitted_groups(self) -> set:
        """Groups whose spread the M-step does not set (enumerated or gradient-fitted)."""
        structure = self.guide.structure
        return {structure.group_of(name).index for name, site in structure.sites.items()
                if site.enumerated or name not in self.guide.families}

    def _warn_subsampling(self, scales: Dict[str, float], records) -> None:
        if not scales:
            return
        names = self.guide.structure.symbols.plate_names
        for symbol, scale in scales.items():
            plate = names[symbol]
            if plate in self._warned_plates:
                continue
            self._warned_plates.add(plate)
            structure = self.guide.structure
            outside = [s for s, info in structure.sites.items() if plate not in info.plates]
            regressed = [s for s in outside
                         if regression_kind(self.guide, structure.group_of(s), self.K) is not None]
            others = [s for s in outside if s not in regressed]
            if others:
                counts = {s: statistics_count(self.guide, structure.group_of(s)) for s in others}
                unnatural = [s for s in others if counts[s] is None]
                needy = {s: 2 * (counts[s] + 1) for s in others if counts[s] is not None}
                why = "; ".join(
                    ([f"{unnatural}: a family without natural parameters, e.g. a Beta or "
                      "Dirichlet q (use a Normal, LogNormal, Gamma or InverseGamma family)"]
                     if unnatural else [])
                    + ([f"{sorted(needy)}: too few particles for the least-squares fit of "
                        f"their group (K = {self.K}; it needs K >= {max(needy.values())})"]
                       if needy else []))
                warnings.warn(
                    f"pyro.plate('{plate}') is subsampled (N/B = {scale:g}). The sites outside "
                    f"it that the minibatch regression cannot fit ({why}) keep the moment "
                    "update, which fits each step to a different minibatch's posterior: "
                    "their spread comes out too wide (2-7x for vector sites). Use full "
                    f"batches for their final uncertainty (sites {regressed} are fitted by "
                    "regression, without that distortion).",
                    SubsampleWarning,
                    stacklevel=3,
                )
            elif self.average_from is None:
                warnings.warn(
                    f"pyro.plate('{plate}') is subsampled (N/B = {scale:g}). The sites outside "
                    f"it ({outside}) are fitted by regression on each minibatch, whose "
                    "noise moves q's location by about sqrt(lr N / (2 B)) posterior sds "
                    "from step to step; pass average_from (e.g. half the steps) to "
                    "average it out.",
                    SubsampleWarning,
                    stacklevel=3,
                )
            grouping = _grouping_plates(structure, plate, records)
            if grouping:
                warnings.warn(
                    f"pyro.plate('{plate}') is subsampled (N/B = {scale:g}) and its elements "
                    f"are grouped under latents of plate(s) {grouping}: each group's term "
                    "raises its minibatch elements' likelihood to N/B inside its average "
                    "over the group's particles, which is not unbiased for the full-data "
                    "term, so the sites outside those plates come out biased (a 1e5-row, "
                    "1000-group hierarchy at N/B = 10: its noise scale 11 posterior sds too "
                    "small) and, at large N/B, the group effects too wide. Use full batches "
                    "for such models (README, Limitations).",
                    SubsampleWarning,
                    stacklevel=3,
                )

    def fit(self, *args, **kwargs) -> FitHistory:
        """:func:`pyro_qem.infer.fit` on this inference: steps with a progress bar
        and optional early stopping; returns a :class:`~pyro_qem.infer.fit.FitHistory`."""
        return fit(self, *args, **kwargs)


def _grouping_plates(structure, plate: str, records) -> list:
    """The plates whose latents group the elements of the subsampled ``plate``: those
    its rows read through an index (``a[..., county]``), and the plates it is nested in
    (by any recorded site, observed ones included) that hold latent sites, sorted."""
    found = set()
    linked = plate
    while linked in structure.links:
        linked = structure.links[linked]
        found.add(linked)
    for record in records:
        names = {f.name for f in record.frames if f.vectorized}
        if plate in names:
            found.update(names - {plate})
    holding = {p for site in structure.sites.values() if plate not in site.plates
               for p in site.plates}
    return sorted(found & holding)


class MPVI(Inference):
    """MP-VI: gradient ascent on ``log P_hat`` with reparameterised particles, the
    gradient baseline of the QEM paper on QEM's own estimator.

    :param guide: a guide with gradient-fitted sites, e.g.
        :class:`~pyro_qem.guides.AutoGradientNormal`.
    :param optim: a Pyro optimiser, e.g. ``pyro.optim.Adam({"lr": 0.01})``.
    """

    objective_name = "vi"

    def __init__(self, model: Callable, guide: QEMGuide, K: int = 30, *, optim, **kwargs) -> None:
        if optim is None:
            raise ValueError(f"{type(self).__name__} needs optim=, e.g. pyro.optim.Adam({{'lr': 0.01}}).")
        super().__init__(model, guide, K, optim=optim, objective=self.objective_name, **kwargs)


class MPRWS(MPVI):
    """MP-RWS: the wake-phi update, the gradient of ``sum_k w_k log q(z_k)`` with the
    particle weights held fixed: usually much less noisy than MP-VI's gradient at
    large K."""

    objective_name = "rws"
