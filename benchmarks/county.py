"""QEM on radon county models written with indexed groups, against NUTS and Pyro SVI.

Example::

    python -m benchmarks.county                       # everything (~30 min on 2 cores)
    python -m benchmarks.county --quick               # a smoke run (~30 s)
    python -m benchmarks.county --rebuild-reference   # recompute the NUTS references

Prints Markdown tables and writes ``county.md`` and ``county.json`` under ``--out``
(default ``benchmarks/results``). Every process runs with one torch thread.

1. **Accuracy** on the Minnesota radon data (919 houses, 85 counties of 1-116 houses;
   :mod:`benchmarks.models.county`): varying intercepts, varying intercepts and slopes,
   and correlated intercepts and slopes with an LKJ prior. QEM uses the README
   settings (K = 30, lr = 0.1, 600 steps, iterates averaged from step 300; the global
   latents in one particle group, a county's a and b in another) and 2000 joint draws
   (:func:`pyro_qem.sample_posterior`); Pyro SVI uses AutoNormal, Trace_ELBO and Adam.
   Errors are over every coordinate of every latent site, county-level ones included
   (fixed coordinates, such as L[0, 0] = 1, left out): the worst |mean - NUTS mean| in
   NUTS sds, and the range of sd / NUTS sd. "q" is the fitted guide (20000 independent
   draws of it); "joint" QEM's joint draws.
2. **Cost** of the indexed (ragged) model against the same model on a padded
   (85, 116) county x slot grid with a mask: ms per QEM step (K = 30, the same groups,
   alternated in one process, median after warm-up) and the largest factor of one
   particle run (:func:`pyro_qem.estimator.memory.factor_sizes`).
3. **Scale**: varying intercepts on ``make_hierarchical(1000, 100_000, seed=0)``.

NUTS references (cached as ``results/reference_county_<model>.{npz,json}`` by
:func:`benchmarks.reference.save`; the JSON records the time, divergences and minimum
ESS): Pyro NUTS, one chain, seed 0, target acceptance 0.9, jit-compiled, 1000 warmup
steps and 20000 draws, on non-centred twins of the models (``a``, ``b`` by
``LocScaleReparam``; ``ab = mu_ab + diag(tau) L z``), so the draws are of the same
posterior without funnels. Measured on this project's CPU machine (x86_64, 2 cores, 1
torch thread, torch 2.13.0+cpu, pyro-ppl 1.9.2): intercepts 242 s (min ESS 7786),
slopes 622 s (min ESS 3430), correlated 704 s (min ESS 3798), no divergences (with
another process on the machine); ``seconds`` in each JSON. With 3000 draws (min ESS
376-857) the references' own error hid a 15% too narrow sd of the LKJ model's scales. The Monte Carlo
error of a reference mean is about 1/sqrt(ESS) reference sds, so over ~170-260
coordinates the worst error of even an exact method is expected near
3/sqrt(min ESS) (reported under each table as the noise floor).

The synthetic reference is exact rather than sampled: with Normal intercepts the
intercepts integrate out in closed form (a group's rows are jointly Normal with
covariance sigma^2 I + sigma_a^2 11^T), so NUTS runs on the 4 global parameters of the
collapsed model (:func:`~benchmarks.models.county.collapsed_intercepts`, sufficient
statistics per group, seconds on 1e5 rows), and the intercepts' means and sds follow
from the Normal conditional given each draw (Rao-Blackwellised). This is the full data's
posterior, where NUTS on a 1e4-row subset would be a different posterior.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

import pyro
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
import pyro_qem.infer
from pyro_qem import AutoGradientNormal, AutoQEM, Inference, sample_guide, sample_posterior
from pyro_qem.datasets import make_hierarchical
from pyro_qem.estimator.memory import factor_sizes

from . import reference
from .methods import GRADIENT_ENGINE_METHODS
from .posterior import draw, gradient_normal_posterior
from .models.county import (COUNTY_MODELS, CountyModel, collapsed_intercepts, group_statistics,
                            intercept_moments, padded_grid, padded_intercepts, radon_args,
                            varying_intercepts)

Moments = Mapping[str, Mapping[str, torch.Tensor]]
NUTS_DRAWS = (1000, 20000)         # warmup, samples per radon reference (4-15 min each)
SYNTHETIC_NUTS_DRAWS = (500, 4000)  # the collapsed model: 4 parameters, cheap
TARGET_MEAN, TARGET_SD = 0.1, 0.1  # the target: 0.1 posterior sd, 10% in sd


@dataclass
class FitSettings:
    """The README's QEM settings and the SVI baseline's learning rate, shared by the
    benchmarks that score fits against NUTS references."""

    K: int = 30
    lr: float = 0.1
    steps: int = 600
    average_from: int = 300
    joint_draws: int = 2000
    q_draws: int = 20000
    svi_lr: float = 0.02
    seed: int = 0


@dataclass
class Settings(FitSettings):
    """Everything the run depends on; ``quick`` shrinks every count."""

    svi_steps: int = 5000
    gradient_K: int = 10
    gradient_steps: int = 2000
    cost_warmup: int = 10
    cost_steps: int = 50
    synthetic: Tuple[int, int] = (1000, 100_000)
    synthetic_K: int = 10
    synthetic_steps: int = 600
    synthetic_time_K: Tuple[int, ...] = (10, 30)
    synthetic_joint_draws: int = 250
    synthetic_svi_steps: int = 3000
    models: Sequence[str] = tuple(COUNTY_MODELS)

    @classmethod
    def quick(cls) -> "Settings":
        return cls(K=10, steps=20, average_from=10, joint_draws=20, q_draws=500, svi_steps=50,
                   gradient_steps=10,
                   cost_warmup=1, cost_steps=3, synthetic=(30, 1000), synthetic_steps=20,
                   synthetic_time_K=(10,), synthetic_joint_draws=10, synthetic_svi_steps=50)


# --------------------------------------------------------------------------- references

def reference_name(cm: CountyModel) -> str:
    return f"county_{cm.name}"


def radon_reference(cm: CountyModel, rebuild: bool, run: bool,
                    out: Path = reference.DEFAULT_RESULTS) -> Tuple[Optional[Moments], Dict]:
    """The cached NUTS reference of ``cm`` (computed and cached first if ``rebuild``, or
    if missing and ``run``), and its JSON record."""
    name = reference_name(cm)
    if rebuild or (run and reference.load(name, out) is None):
        warmup, samples = NUTS_DRAWS
        draws, info = reference.nuts(cm.model, cm.nuts_model, radon_args(), warmup, samples)
        info = {"model": name, **info, "machine": machine()}
        reference.save(reference.moments_of(draws), info, out)
        print(f"NUTS reference for {name}: {info}", flush=True)
    return reference.load(name, out), reference.info_of(name, out)


def synthetic_reference(data: Dict, quick: bool, rebuild: bool,
                        out: Path = reference.DEFAULT_RESULTS) -> Tuple[Moments, Dict]:
    """The exact posterior of :func:`varying_intercepts` on the synthetic data, by NUTS
    on the collapsed model (cached unless ``quick``)."""
    groups, rows = len(data["group_size"]), len(data["group"])
    name = f"county_synthetic_{groups}x{rows}"
    cached = None if (rebuild or quick) else reference.load(name, out)
    if cached is not None:
        return cached, reference.info_of(name, out)
    stats = group_statistics(data["x"], data["group"], data["y"], groups)
    warmup, samples = (100, 300) if quick else SYNTHETIC_NUTS_DRAWS
    draws, info = reference.nuts(collapsed_intercepts, collapsed_intercepts, (stats,),
                                 warmup, samples)
    moments = reference.moments_of(draws)
    moments["a"] = {k: v.numpy() for k, v in intercept_moments(stats, draws).items()}
    info = {"model": name, **info, "machine": machine()}
    if not quick:
        reference.save(moments, info, out)
        moments = reference.load(name, out)
    else:
        moments = {s: {k: torch.as_tensor(v) for k, v in m.items()} for s, m in moments.items()}
    return moments, info


# --------------------------------------------------------------------------- metrics

def moments_of(draws: Mapping[str, torch.Tensor]) -> Dict[str, Dict[str, torch.Tensor]]:
    return {k: {"mean": v.double().mean(0), "sd": v.double().std(0)} for k, v in draws.items()}


def errors(moments: Moments, ref: Moments, sites: Optional[Sequence[str]] = None) -> Dict:
    """Worst |mean error| in reference sds, RMS of it, and the range of sd ratios over
    every coordinate of ``sites`` (default: all in ``ref``) with a positive reference sd."""
    z_all, ratio_all, worst = [], [], ("", -1.0)
    for name in sites or ref:
        ref_mean = torch.as_tensor(ref[name]["mean"]).double().flatten()
        ref_sd = torch.as_tensor(ref[name]["sd"]).double().flatten()
        mean = moments[name]["mean"].double().flatten()
        sd = moments[name]["sd"].double().flatten()
        free = ref_sd > 1e-9 * (1 + ref_mean.abs())
        z = ((mean - ref_mean) / ref_sd)[free].abs()
        z_all.append(z)
        ratio_all.append((sd / ref_sd)[free])
        if z.numel() and z.max().item() > worst[1]:
            worst = (name, z.max().item())
    z, ratio = torch.cat(z_all), torch.cat(ratio_all)
    return {"worst_mean": z.max().item(), "rms_mean": z.pow(2).mean().sqrt().item(),
            "sd_min": ratio.min().item(), "sd_max": ratio.max().item(),
            "worst_site": worst[0], "coordinates": int(z.numel()),
            "meets_target": bool(z.max() <= TARGET_MEAN and (ratio - 1).abs().max() <= TARGET_SD)}


def noise_floor(info: Mapping, coordinates: int, draws: int) -> float:
    """The worst |mean error| an exact method's ``draws`` draws would show through Monte
    Carlo error alone (the reference's and its own), about the expected maximum of
    ``coordinates`` half-normals: sqrt(2 log n) standard errors, at the minimum ESS."""
    se = math.sqrt(1.0 / info["min_ess"] + 1.0 / draws)
    return math.sqrt(2 * math.log(max(coordinates, 2))) * se


# --------------------------------------------------------------------------- fits

@dataclass
class FitResult:
    """What one method produced on one model."""

    method: str
    fit_s: float = math.nan
    ms_per_step: float = math.nan
    draw_s: float = math.nan
    q: Dict = field(default_factory=dict)
    joint: Dict = field(default_factory=dict)
    extra: Dict = field(default_factory=dict)
    failed: Optional[str] = None


def fit_qem(model: Callable, groups, args: tuple, K: int, lr: float, steps: int,
            average_from: int) -> Tuple[Inference, AutoQEM, float, List[float]]:
    """QEM from a fresh param store; returns the inference, guide, fit seconds and
    per-step seconds."""
    pyro.clear_param_store()
    guide = AutoQEM(model, groups=groups)
    inference = Inference(model, guide, K=K, lr=lr, average_from=average_from)
    durations = []
    for _ in range(steps):
        start = time.perf_counter()
        inference.step(*args)
        durations.append(time.perf_counter() - start)
    return inference, guide, sum(durations), durations


def qem_result(model: Callable, groups, args: tuple, ref: Optional[Moments], settings: Settings,
               K: int, steps: int, average_from: int, joint_draws: int,
               sites: Optional[Sequence[str]] = None) -> FitResult:
    """Fit QEM and score its q and its joint draws against ``ref``."""
    pyro.set_rng_seed(settings.seed)
    inference, guide, seconds, durations = fit_qem(model, groups, args, K, settings.lr, steps,
                                                   average_from)
    result = FitResult(f"QEM K={K} lr={settings.lr:g} avg>{average_from}", fit_s=seconds,
                       ms_per_step=1e3 * statistics.median(durations[1:] or durations))
    q_moments = moments_of(sample_guide(guide, settings.q_draws))
    start = time.perf_counter()
    draws = sample_posterior(inference, *args, num_samples=joint_draws)
    result.draw_s = time.perf_counter() - start
    joint = moments_of(draws)
    result.extra = {"q_moments": q_moments, "joint_moments": joint}
    if ref is not None:
        # A non-centred site has no q of its own (its q is <site>_decentered's).
        q_sites = [s for s in (sites or ref) if s in q_moments]
        result.q, result.joint = errors(q_moments, ref, q_sites), errors(joint, ref, sites)
    return result


def svi_draws(guide: AutoNormal, args: tuple, num: int) -> Dict[str, torch.Tensor]:
    """``num`` draws of every latent site of a fitted AutoNormal (constrained values)."""
    with torch.no_grad(), pyro.plate("svi_draws", num, dim=-3):
        trace = pyro.poutine.trace(guide).get_trace(*args)
    out = {}
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and name in guide.prototype_trace.nodes:
            value = site["value"]
            event = site["fn"].event_dim
            batch = guide.prototype_trace.nodes[name]["fn"].batch_shape
            out[name] = value.reshape((num,) + tuple(batch) + value.shape[value.dim() - event:])
    return out


def svi_result(model: Callable, args: tuple, ref: Optional[Moments], settings: Settings,
               steps: int, sites: Optional[Sequence[str]] = None) -> FitResult:
    """Pyro SVI (AutoNormal, Trace_ELBO, Adam) scored like QEM's q."""
    pyro.clear_param_store()
    pyro.set_rng_seed(settings.seed)
    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": settings.svi_lr}), Trace_ELBO())
    durations, losses = [], []
    for _ in range(steps):
        start = time.perf_counter()
        losses.append(svi.step(*args))
        durations.append(time.perf_counter() - start)
    result = FitResult(f"SVI AutoNormal Adam lr={settings.svi_lr:g} ({steps} steps)",
                       fit_s=sum(durations),
                       ms_per_step=1e3 * statistics.median(durations[1:] or durations))
    start = time.perf_counter()
    q_moments = moments_of(svi_draws(guide, args, settings.q_draws))
    result.draw_s = time.perf_counter() - start
    tail = losses[-max(1, steps // 10):]
    result.extra = {"q_moments": q_moments, "final_loss": statistics.mean(tail),
                    "loss_first_half_of_last_fifth": statistics.mean(
                        losses[-max(2, steps // 5):-max(1, steps // 10)] or tail)}
    if ref is not None:
        result.q = errors(q_moments, ref, sites)
    return result


def gradient_guide_refusal(model: Callable, args: tuple) -> Optional[str]:
    """Why :class:`pyro_qem.AutoGradientNormal` cannot fit ``model`` (a site whose
    support's bijection changes its shape, such as an LKJ factor), or None."""
    pyro.clear_param_store()
    try:
        AutoGradientNormal(model).setup(*args)
    except ValueError as error:
        return str(error)
    finally:
        pyro.clear_param_store()
    return None


def gradient_result(model: Callable, args: tuple, ref: Optional[Moments], settings: Settings,
                    steps: int, method: str) -> FitResult:
    """MP-VI or MP-RWS (``pyro_qem.infer``, the paper's gradient baselines on QEM's own
    estimator) on an AutoGradientNormal guide with Adam, scored on its q like SVI."""
    pyro.clear_param_store()
    pyro.set_rng_seed(settings.seed)
    guide = AutoGradientNormal(model)
    engine = getattr(pyro_qem.infer, GRADIENT_ENGINE_METHODS[method])
    inference = engine(model, guide, K=settings.gradient_K,
                       optim=pyro.optim.Adam({"lr": settings.svi_lr}))
    durations = []
    for _ in range(steps):
        start = time.perf_counter()
        inference.step(*args)
        durations.append(time.perf_counter() - start)
    result = FitResult(f"{method} K={settings.gradient_K} Adam lr={settings.svi_lr:g} ({steps} steps)",
                       fit_s=sum(durations),
                       ms_per_step=1e3 * statistics.median(durations[1:] or durations))
    q_moments = moments_of(draw(gradient_normal_posterior(guide), settings.q_draws))
    result.extra = {"q_moments": q_moments}
    if ref is not None:
        result.q = errors(q_moments, ref)
    return result


def guarded(label: str, fn: Callable[[], FitResult]) -> FitResult:
    """``fn()``, or a failed result holding the traceback."""
    try:
        return fn()
    except Exception:  # noqa: BLE001 - the table reports what failed
        text = traceback.format_exc()
        print(f"{label} failed:\n{text}", flush=True)
        return FitResult(label, failed=text)


# --------------------------------------------------------------------------- cost

def cost(settings: Settings) -> Dict:
    """ms/step of the ragged and padded radon intercept models, alternated, and the
    largest factor of one particle run of each."""
    floor, county, y = radon_args()
    grid = padded_grid(floor, county, y)
    groups = COUNTY_MODELS["intercepts"].groups
    variants = {"indexed (919 rows)": (varying_intercepts, (floor, county, y)),
                "padded (85 x %d grid, mask)" % grid[0].shape[1]: (padded_intercepts, grid)}
    pyro.clear_param_store()
    pyro.set_rng_seed(settings.seed)
    runs = {}
    for label, (model, args) in variants.items():
        guide = AutoQEM(model, groups=groups)
        inference = Inference(model, guide, K=settings.K, lr=settings.lr)
        runs[label] = (inference, args, [])
    for step in range(settings.cost_warmup + settings.cost_steps):
        for inference, args, times in runs.values():
            start = time.perf_counter()
            inference.step(*args)
            if step >= settings.cost_warmup:
                times.append(time.perf_counter() - start)
    out = {}
    for label, (inference, args, times) in runs.items():
        sizes = factor_sizes(inference.run_particles(*args).sites)
        largest = max(sizes, key=lambda s: s.bytes)
        out[label] = {"ms_per_step": 1e3 * statistics.median(times),
                      "largest_site": largest.site, "largest_shape": list(largest.shape),
                      "largest_mib": largest.bytes / 2 ** 20,
                      "total_mib": sum(s.bytes for s in sizes) / 2 ** 20}
    return out


# --------------------------------------------------------------------------- synthetic

def synthetic(settings: Settings, rebuild: bool, quick: bool) -> Dict:
    """Varying intercepts on ``make_hierarchical(*settings.synthetic, seed=0)``."""
    groups_n, rows = settings.synthetic
    data = make_hierarchical(groups_n, rows, seed=0)
    args = (data["x"], data["group"], data["y"])
    kwargs = {"num_counties": groups_n}

    def model(x, group, y=None):
        varying_intercepts(x, group, y, **kwargs)

    groups = COUNTY_MODELS["intercepts"].groups
    ref, info = synthetic_reference(data, quick, rebuild)
    out: Dict = {"groups": groups_n, "rows": rows, "largest_group": int(data["group_size"].max()),
                 "empty_groups": int((data["group_size"] == 0).sum()), "reference": info,
                 "true": {k: float(v) for k, v in data["true"].items() if v.dim() == 0}}
    # Step time at each K: a few steps of a fresh fit (the first one excluded).
    out["step_ms"] = {}
    for K in settings.synthetic_time_K:
        pyro.set_rng_seed(settings.seed)
        _, _, _, durations = fit_qem(model, groups, args, K, settings.lr, 6 if not quick else 2, 3)
        out["step_ms"][K] = 1e3 * statistics.median(durations[1:])
        sizes = factor_sizes(Inference(model, AutoQEM(model, groups=groups), K=K)
                             .run_particles(*args).sites)
        largest = max(sizes, key=lambda s: s.bytes)
        out.setdefault("largest_mib", {})[K] = largest.bytes / 2 ** 20
    K, steps = settings.synthetic_K, settings.synthetic_steps
    qem = guarded("synthetic QEM", lambda: qem_result(
        model, groups, args, ref, settings, K, steps, steps // 2, settings.synthetic_joint_draws))
    svi = guarded("synthetic SVI", lambda: svi_result(model, args, ref, settings,
                                                      settings.synthetic_svi_steps))
    out["results"] = [qem, svi]
    # The global parameters against the truth and the exact posterior.
    table = []
    for name in ("mu", "sigma_a", "b", "sigma"):
        row = {"site": name, "true": out["true"][name],
               "ref_mean": float(ref[name]["mean"]), "ref_sd": float(ref[name]["sd"])}
        for res, key in ((qem, "q_moments"), (qem, "joint_moments"), (svi, "q_moments")):
            if res.failed is None:
                m = res.extra[key][name]
                row[f"{res.method.split()[0]} {key.split('_')[0]}"] = (float(m["mean"]), float(m["sd"]))
        table.append(row)
    out["globals"] = table
    return out


# --------------------------------------------------------------------------- report

def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
            f"thread(s); torch {torch.__version__}, pyro-ppl {pyro.__version__}, "
            f"Python {platform.python_version()}")


def _f(value, digits=2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def _err_cells(e: Mapping) -> str:
    if not e:
        return "- | -"
    return f"{_f(e['worst_mean'], 3)} ({e['worst_site']}) | {_f(e['sd_min'], 3)}-{_f(e['sd_max'], 3)}"


RESULT_HEADER = ("| method | fit (s) | ms/step | draws (s) | q: worst mean err | q: sd ratio "
                 "| joint: worst mean err | joint: sd ratio | target met |")


def result_rows(results: Sequence[FitResult]) -> List[str]:
    lines = [RESULT_HEADER, "|" + "---|" * 9]
    for r in results:
        if r.failed:
            last = r.failed.strip().splitlines()[-1]
            lines.append(f"| {r.method} | failed: {last} |||||||| |")
            continue
        best = r.joint or r.q
        met = "-" if not best else ("yes" if best["meets_target"] else "no")
        lines.append(f"| {r.method} | {_f(r.fit_s, 1)} | {_f(r.ms_per_step, 1)} | {_f(r.draw_s, 1)} "
                     f"| {_err_cells(r.q)} | {_err_cells(r.joint)} | {met} |")
    return lines


def markdown(report: Dict, settings: Settings) -> str:
    parts = [f"Machine: {report['machine']}.", "",
             "## Radon county models (919 houses, 85 counties)", "",
             f"QEM: K={settings.K}, lr={settings.lr}, {settings.steps} steps, averaged from "
             f"{settings.average_from}, {settings.joint_draws} joint draws; q moments from "
             f"{settings.q_draws} guide draws. Errors over every coordinate (county-level "
             f"included): worst |mean - NUTS mean| / NUTS sd (site), and min-max of sd / NUTS "
             f"sd. Target (joint draws): mean within {TARGET_MEAN} sd, sd within "
             f"{int(100 * TARGET_SD)}%.", ""]
    for name, entry in report["models"].items():
        parts += [f"### {entry['title']}", ""]
        if entry.get("note"):
            parts += [entry["note"], ""]
        parts += result_rows(entry["results"])
        info = entry.get("reference") or {}
        if info:
            parts += ["", f"- NUTS reference: {info['warmup']} warmup + {info['samples']} draws, "
                      f"{info['seconds']} s, {info['divergences']} divergences, min ESS "
                      f"{info['min_ess']:.0f}; Monte Carlo noise floor of the worst mean error "
                      f"(exact method, {settings.joint_draws} draws, "
                      f"{entry['coordinates']} coordinates): ~{entry['noise_floor']:.3f}."]
        for r in entry["results"]:
            if r.failed is None and r.q and r.joint:
                parts.append(f"- {r.method}: RMS mean err q {r.q['rms_mean']:.3f}, joint "
                             f"{r.joint['rms_mean']:.3f}.")
            elif r.failed is None and r.q:
                parts.append(f"- {r.method}: RMS mean err q {r.q['rms_mean']:.3f}.")
        parts.append("")
    c = report["cost"]
    parts += ["## Cost: indexed (ragged) vs padded dense", "",
              f"Varying intercepts on the radon data, QEM K={settings.K}, globals grouped, 1 "
              f"thread, median over {settings.cost_steps} steps after {settings.cost_warmup} "
              f"warm-up, alternated in one process. Largest factor: one particle run's "
              f"largest log density (float64).", "",
              "| layout | ms/step | largest factor (site, shape) | largest factor (MiB) "
              "| all factors (MiB) |", "|---|---|---|---|---|"]
    for label, v in c.items():
        parts.append(f"| {label} | {v['ms_per_step']:.1f} | {v['largest_site']} "
                     f"{tuple(v['largest_shape'])} | {v['largest_mib']:.1f} | {v['total_mib']:.1f} |")
    s = report["synthetic"]
    parts += ["", f"## Synthetic: {s['groups']} groups, {s['rows']} rows "
              f"(make_hierarchical, seed 0; largest group {s['largest_group']} rows, "
              f"{s['empty_groups']} empty)", ""]
    for K, ms in s["step_ms"].items():
        parts.append(f"- QEM step at K={K}: {ms:.0f} ms (largest factor "
                     f"{s['largest_mib'][K]:.0f} MiB).")
    padded_mib = settings.K ** 2 * s["groups"] * s["largest_group"] * 8 / 2 ** 20
    parts.append(f"- A padded layout would need a ({s['groups']}, {s['largest_group']}) grid: "
                 f"its likelihood factor at K={settings.K} is {padded_mib / 1024:.0f} GiB "
                 f"(computed, not run).")
    info = s["reference"]
    parts.append(f"- Reference: NUTS on the collapsed model (intercepts integrated out, exact "
                 f"posterior), {info['warmup']} + {info['samples']} draws, {info['seconds']} s, "
                 f"min ESS {info['min_ess']:.0f}; intercepts Rao-Blackwellised.")
    first = s["results"][0]
    if first.failed is None and first.joint:
        floor = noise_floor(info, first.joint["coordinates"], settings.synthetic_joint_draws)
        parts.append(f"- Monte Carlo noise floor of the joint draws' worst mean error "
                     f"({settings.synthetic_joint_draws} draws, {first.joint['coordinates']} "
                     f"coordinates): ~{floor:.3f}.")
    parts += [""] + result_rows(s["results"]) + [""]
    parts += ["Global parameters (mean, sd):", "",
              "| site | true | exact posterior | " + " | ".join(
                  k for k in s["globals"][0] if " " in k) + " |",
              "|---|---|---|" + "---|" * sum(" " in k for k in s["globals"][0])]
    for row in s["globals"]:
        cells = [f"{row[k][0]:.4f} ({row[k][1]:.4f})" for k in row if " " in k]
        parts.append(f"| {row['site']} | {row['true']:.3f} | {row['ref_mean']:.4f} "
                     f"({row['ref_sd']:.4f}) | " + " | ".join(cells) + " |")
    return "\n".join(parts) + "\n"


def to_json(value):
    """``value`` with tensors, arrays and results made JSON-serialisable."""
    if isinstance(value, FitResult):
        return to_json({k: v for k, v in value.__dict__.items() if k != "extra"}
                       | {"extra": {k: v for k, v in value.extra.items()
                                    if not k.endswith("moments")}})
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return np.asarray(value).tolist()
    return value


def run_models(settings: Settings, args) -> Dict:
    out = {}
    radon = radon_args()
    for name in settings.models:
        cm = COUNTY_MODELS[name]
        entry: Dict = {"title": cm.title, "results": []}
        try:
            ref, info = radon_reference(cm, args.rebuild_reference, run=not args.quick)
        except Exception:  # noqa: BLE001
            ref, info = None, {}
            entry["note"] = "NUTS reference failed:\n\n```\n" + traceback.format_exc() + "```"
            print(entry["note"], flush=True)
        entry["reference"] = info
        entry["results"].append(guarded(f"{name} QEM", lambda: qem_result(
            cm.model, cm.groups, radon, ref, settings, settings.K, settings.steps,
            settings.average_from, settings.joint_draws)))
        entry["results"].append(guarded(f"{name} SVI", lambda: svi_result(
            cm.model, radon, ref, settings, settings.svi_steps)))
        unsupported = gradient_guide_refusal(cm.model, radon)
        if unsupported:
            entry["note"] = (entry.get("note", "") + f"\n\nMP-VI and MP-RWS not run: "
                             f"{unsupported}").strip()
        for method in () if unsupported else GRADIENT_ENGINE_METHODS:
            entry["results"].append(guarded(f"{name} {method}", lambda: gradient_result(
                cm.model, radon, ref, settings, settings.gradient_steps, method)))
        first = entry["results"][0]
        if first.failed:
            entry["note"] = (entry.get("note", "") + f"QEM failed on this model:\n\n```\n"
                             f"{first.failed}```").strip()
        if ref is not None and info and first.joint:
            entry["coordinates"] = first.joint["coordinates"]
            entry["noise_floor"] = noise_floor(info, entry["coordinates"], settings.joint_draws)
        elif info:
            entry["coordinates"], entry["noise_floor"] = 0, math.nan
        for r in entry["results"]:
            print(f"  {name}: {r.method}: fit {r.fit_s:.1f} s, q {r.q}, joint {r.joint}, "
                  f"{'failed' if r.failed else 'ok'}", flush=True)
        out[name] = entry
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny settings")
    parser.add_argument("--rebuild-reference", action="store_true",
                        help="recompute the cached NUTS references")
    parser.add_argument("--models", default=",".join(COUNTY_MODELS))
    parser.add_argument("--out", type=Path, default=reference.DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    unknown = set(args.models.split(",")) - set(COUNTY_MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(COUNTY_MODELS)}")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(1)
    settings = Settings.quick() if args.quick else Settings()
    settings.models = tuple(args.models.split(","))
    start = time.perf_counter()
    report = {"machine": machine(), "settings": settings.__dict__}
    report["models"] = run_models(settings, args)
    report["cost"] = cost(settings)
    print(json.dumps(report["cost"], indent=1), flush=True)
    report["synthetic"] = synthetic(settings, args.rebuild_reference, args.quick)
    report["seconds"] = round(time.perf_counter() - start, 1)
    text = markdown(report, settings)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "county.md").write_text(text)
    (args.out / "county.json").write_text(json.dumps(to_json(report), indent=1) + "\n")
    return text


if __name__ == "__main__":
    main()
