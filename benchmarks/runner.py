"""Train one method configuration on one model, evaluating every few steps.

Training wall time counts the ``step`` calls only (each returns a float, which waits
for the device); evaluation runs between them and is excluded.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch

import pyro

from . import metrics
from .methods import MethodConfig, build
from .models import Data

FAILURES = (ValueError, RuntimeError, FloatingPointError)
EVAL_SEED_OFFSET = 1_000_003


@dataclass
class Task:
    """One model variant with its data (and optional NUTS reference moments)."""

    name: str
    model: Callable
    train: Data
    test: Data
    groups: Sequence[Sequence[str]]
    nesting: int
    reference: Optional[Mapping[str, Mapping]] = None


@dataclass
class Settings:
    """How long to train and how to evaluate. QEM and the engine's gradient methods
    take ``steps`` steps; Pyro SVI, whose steps are cheaper, takes ``svi_steps``; every
    run stops early once its training time passes ``max_seconds`` (None: no cap)."""

    steps: int = 200
    svi_steps: int = 1000
    max_seconds: Optional[float] = 30.0
    num_evals: int = 20
    num_draws: int = 1000
    elbo_particles: int = 100
    eval_K: int = 30
    seed: int = 0

    def steps_for(self, method: str) -> int:
        return self.svi_steps if method == "SVI" else self.steps


@dataclass
class Curve:
    """The raw record of one run; every list is indexed by evaluation point."""

    label: str
    config: Dict
    task: str
    step: List[int] = field(default_factory=list)
    time: List[float] = field(default_factory=list)
    pred_ll: List[float] = field(default_factory=list)
    pred_ll_joint: List[float] = field(default_factory=list)
    elbo: List[float] = field(default_factory=list)
    log_p_hat: List[float] = field(default_factory=list)
    mean_err: List[float] = field(default_factory=list)
    sd_err: List[float] = field(default_factory=list)
    losses: List[float] = field(default_factory=list)
    failed: Optional[str] = None
    capped: bool = False
    time_per_step: float = math.nan
    #: Seconds a compiled QEM fit spent recording and compiling its step: left out
    #: of :attr:`time` (training time) and reported apart.
    compile_s: float = 0.0


def evaluation_steps(steps: int, num_evals: int) -> List[int]:
    """About ``num_evals`` steps, spaced geometrically from 1 to ``steps`` (early
    progress, and so the time to a target, is resolved finely), plus two in the last
    fifth: the "final" figures (the mean of the last three) are then of the finished fit,
    not of evaluations half way through it."""
    ratio = steps ** (1.0 / max(1, num_evals - 1))
    geometric = {min(steps, max(1, round(ratio ** i))) for i in range(num_evals)}
    return sorted(geometric | {max(1, round(0.8 * steps)), max(1, round(0.9 * steps)), steps})


@contextlib.contextmanager
def common_random_numbers(seed: int):
    """Evaluate with the same random numbers every time, without touching training's
    RNG stream: metric curves are then smooth, and comparable across methods."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def evaluate(fit, task: Task, settings: Settings, log_p_hat) -> Dict[str, float]:
    """Every metric of ``fit``'s current posterior (with common random numbers)."""
    with common_random_numbers(settings.seed + EVAL_SEED_OFFSET):
        return _metrics(fit.posterior(), task, settings, log_p_hat)


def _metrics(posterior, task: Task, settings: Settings, log_p_hat) -> Dict[str, float]:
    errors = metrics.moment_errors(posterior, task.reference)
    return {
        **metrics.predictive_loglik(task.model, task.test, posterior, task.nesting,
                                    settings.num_draws),
        "elbo": metrics.standard_elbo(task.model, task.train, posterior, task.nesting,
                                      settings.elbo_particles),
        "log_p_hat": log_p_hat(posterior),
        "mean_err": errors.get("mean_err", math.nan),
        "sd_err": errors.get("sd_err", math.nan),
    }


def record(curve: Curve, step: int, elapsed: float, values: Mapping[str, float]) -> None:
    """Append one evaluation point to ``curve``."""
    curve.step.append(step)
    curve.time.append(elapsed)
    for key, value in values.items():
        getattr(curve, key).append(value)


def run(config: MethodConfig, task: Task, settings: Settings) -> Curve:
    """Train ``config`` on ``task`` from a fresh param store and seed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(settings.seed)
    curve = Curve(config.label, asdict(config), task.name)
    fit = build(task.model, task.groups, config)
    log_p_hat = metrics.LogPHat(task.model, task.train, task.groups, settings.eval_K)
    steps = settings.steps_for(config.method)
    at = set(evaluation_steps(steps, settings.num_evals))
    elapsed, durations = 0.0, []
    for step in range(1, steps + 1):
        try:
            start = time.perf_counter()
            compiling = getattr(fit, "compile_seconds", 0.0)
            loss = fit.step(task.train)
            compiling = getattr(fit, "compile_seconds", 0.0) - compiling
            curve.compile_s += compiling
            durations.append(time.perf_counter() - start - compiling)
            elapsed += durations[-1]
            curve.losses.append(loss)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss}")
            capped = settings.max_seconds is not None and elapsed > settings.max_seconds
            if step in at or capped:
                record(curve, step, elapsed, evaluate(fit, task, settings, log_p_hat))
            if capped:
                curve.capped = True
                break
        except FAILURES as error:
            curve.failed = f"step {step}: {type(error).__name__}: {str(error)[:120]}"
            break
    curve.time_per_step = statistics.median(durations[1:] or durations or [math.nan])
    return curve
