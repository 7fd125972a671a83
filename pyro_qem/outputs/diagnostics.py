"""Can the fitted answer be trusted? Weight ESS per site and Pareto k-hat of the guide.

Three checks, each with a warning that names what failed:

- the effective sample size ``1 / sum_k w_k^2`` of each site's marginal particle weights,
  per plate element: near 1, one particle carries the estimate, so weighted moments
  and resampled draws of that site are noise (q does not cover the posterior);
- the Pareto k-hat of the importance weights ``p(x, z) / q(z)`` of joint draws from the
  fitted guide (PSIS, Vehtari et al. 2024): above ``min(1 - 1/log10(S), 0.7)`` (0.5 at
  S = 100, 0.7 from S of about 2,200: the sample-size-aware threshold of Vehtari et
  al.'s PSIS paper) the guide is an unreliable proposal, for q's own draws and for the
  joint draws that reweight its particles alike. Not computed for models with
  enumerated sites (q has no draws of them);
- the posterior correlation between the coordinates of each vector site whose q is
  one per coordinate, from the particle weights: a mean-field q of strongly correlated
  coordinates comes out with the wrong spread, and nothing else shows it (the weights'
  ESS and k-hat can look fine).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch
from torch.distributions import biject_to

from .degenerate import QEMDiagnosticWarning
from .sites import to_site_shape, weighted_run
from .draws import sample_guide
from .predictive import conditioned_trace, per_draw

from ..estimator.factors import observed_log_prob
from ..guides.qem_guide import QEMGuide
from ..infer.inference import Inference


#: diagnose's smallest number of guide draws for k-hat (0 skips it).
MIN_KHAT_SAMPLES = 100


def khat_threshold(num_samples: int) -> float:
    """The sample-size-aware Pareto k-hat threshold ``min(1 - 1/log10(S), 0.7)``."""
    return min(1.0 - 1.0 / math.log10(num_samples), 0.7)


def pareto_khat(log_weights: torch.Tensor) -> float:
    """Pareto k-hat of importance weights: the shape of a generalised Pareto fit to
    their largest ``min(S / 5, 3 sqrt(S))`` values (Zhang & Stephens' estimate with the
    weak prior of ArviZ's ``psislw``, which this matches).

    Example::

        pareto_khat(torch.randn(1000))        # ~0 for light-tailed weights

    :param log_weights: a 1-D tensor of S unnormalised log weights.
    :returns: k-hat (``inf`` when the tail is too short to fit).
    """
    if log_weights.dim() != 1 or log_weights.numel() < 5:
        raise ValueError(f"log_weights must be 1-D with at least 5 values, got shape "
                         f"{tuple(log_weights.shape)}.")
    x = log_weights.detach().double().cpu()
    x = x - x.max()
    num = x.numel()
    ordered = torch.sort(x).values
    cutoff = max(ordered[-math.ceil(min(0.2 * num, 3 * math.sqrt(num))) - 1].item(),
                 math.log(torch.finfo(torch.float64).tiny))
    tail = ordered[ordered > cutoff]
    if tail.numel() <= 4:
        return math.inf
    return _gpd_shape(tail.exp() - math.exp(cutoff))


def _gpd_shape(tail: torch.Tensor) -> float:
    """Zhang & Stephens (2009) empirical-Bayes shape of a generalised Pareto fit to the
    sorted exceedances ``tail``, shrunk towards 0.5 as ArviZ does (prior weight 10)."""
    n = tail.numel()
    m = 30 + int(n ** 0.5)
    b = 1 - torch.sqrt(m / (torch.arange(1, m + 1, dtype=torch.float64) - 0.5))
    b = b / (3 * tail[int(n / 4 + 0.5) - 1]) + 1 / tail[-1]
    k = torch.log1p(-b[:, None] * tail).mean(1)
    profile = n * (torch.log(-(b / k)) - k - 1)
    weights = 1 / torch.exp(profile - profile[:, None]).sum(1)
    keep = weights >= 10 * torch.finfo(torch.float64).eps
    weights, b = weights[keep], b[keep]
    b_post = (b * weights / weights.sum()).sum()
    k_post = torch.log1p(-b_post * tail).mean()
    return ((n * k_post + 10 * 0.5) / (n + 10)).item()


def weight_ess(inference: Inference, *args, **kwargs) -> Dict[str, torch.Tensor]:
    """ESS ``1 / sum_k w_k^2`` of every sampled latent site's marginal particle weights,
    per plate element, from one particle run (between 1 and K). Enumerated sites are
    left out: their weights are their exact posterior over the support, not importance
    weights (a confidently assigned mixture label has an "ESS" of 1 and is right).

    Example::

        ess = weight_ess(inference, y)
        {name: value.min() for name, value in ess.items()}

    :returns: ``{site: tensor of the site's batch shape}`` (float64).
    """
    run = weighted_run(inference, args, kwargs, "weight_ess")
    out = {}
    for name, site in run.structure.sites.items():
        if site.enumerated:
            continue
        weight = run.weights[run.structure.group_of(name).index].detach().double()
        ess = 1.0 / (weight ** 2).sum(0)
        out[name] = to_site_shape(ess, site, 0).expand(site.batch_shape)
    return out


#: A mean-field vector site is flagged where the estimated posterior correlation of two
#: of its coordinates reaches this. Estimated from particles of a per-coordinate q, it
#: comes out attenuated (true 0.85-0.89: 0.63-0.81) and, for independent coordinates,
#: at most 0.2 (10 runs of K = 30, a 50-element plate's worst element included).
CORRELATED_FROM = 0.5


@torch.no_grad()
def coordinate_correlations(inference: Inference, *args, num_runs: int = 10,
                            **kwargs) -> Dict[str, float]:
    """For each vector (or matrix) site whose q is one per coordinate, the largest
    absolute posterior correlation between two of its coordinates over its plate elements,
    on the unconstrained scale (``biject_to(support).inv``), from the particle weights
    of ``num_runs`` runs (their weighted covariances averaged).

    Example::

        coordinate_correlations(inference, X, y)   # {"beta": 0.81}

    :returns: ``{site: float}``; sites whose support's bijection changes their shape
        (simplex, correlation factors) are left out.
    """
    guide = inference.guide
    structure = guide.setup(*args, **kwargs)
    # Only vector sites with a q per coordinate: a model without any needs no runs.
    names = [name for name, family in guide.families.items()
             if math.prod(structure.sites[name].event_shape) >= 2
             and family.coupled_coordinates(structure.sites[name].event_shape) == 1]
    covariances: Dict[str, torch.Tensor] = {}
    for _ in range(num_runs if names else 0):
        run = weighted_run(inference, args, kwargs, "coordinate_correlations")
        for name in names:
            site = run.structure.sites[name]
            size = math.prod(site.event_shape)
            record = run.records[name]
            value = record.value.detach().double()
            try:
                u = biject_to(record.fn.support).inv(value)
            except NotImplementedError:
                continue
            if u.shape != value.shape:
                continue
            u = u.reshape(u.shape[:u.dim() - len(site.event_shape)] + (size,))
            weight = run.weights[run.structure.group_of(name).index].detach().double().unsqueeze(-1)
            centred = (u - (weight * u).sum(0)) * weight.sqrt()
            centred = centred.movedim(0, -1)
            cov = centred @ centred.transpose(-1, -2)
            covariances[name] = covariances.get(name, 0) + cov / num_runs
    out = {}
    for name, cov in covariances.items():
        sd = cov.diagonal(dim1=-2, dim2=-1).clamp_min(1e-300).sqrt()
        corr = cov / (sd.unsqueeze(-1) * sd.unsqueeze(-2))
        off = corr - torch.diag_embed(corr.diagonal(dim1=-2, dim2=-1))
        out[name] = off.abs().amax().item()
    return out


@torch.no_grad()
def guide_log_weights(model: Callable, guide: QEMGuide, *args, num_samples: int = 1000,
                      averaged: bool = True, **kwargs) -> torch.Tensor:
    """``log p(x, z_s) - log q(z_s)`` for ``num_samples`` joint draws from the guide.

    ``z`` are the latents q covers: a non-centred site's standardised latent
    (``theta_decentered``), with ``p`` the model as the guide rewrites it (the same
    posterior and marginal likelihood).

    :returns: a tensor of shape ``(num_samples,)``, float64.
    """
    enumerated = _enumerated_sites(guide)
    if enumerated:
        raise NotImplementedError(
            f"guide_log_weights: the model enumerates {enumerated}, which q does not "
            "draw; their weights p(x, z) / q(z) would need those sites summed out of "
            "p(x, z, c) for every draw, which is not implemented. Use weight_ess, or "
            "posterior_moments and sample_posterior (they sum the enumerated sites "
            "exactly)."
        )
    draws = sample_guide(guide, num_samples, averaged=averaged)
    qs = guide.distributions(averaged=averaged)
    # q's non-centred sites are the standardised latents of the model as the guide
    # rewrites it: the weights are p / q of that model's latents.
    trace, prototype, nesting = conditioned_trace(guide.rewritten(model), draws, args, kwargs)
    total = torch.zeros(num_samples, dtype=torch.float64)
    for name, site in prototype.nodes.items():
        if site["type"] != "sample" or site["infer"].get("_deterministic"):
            continue
        node = trace.nodes[name]
        log_p = (observed_log_prob(node["fn"], node["value"]) if node["is_observed"]
                 else node["fn"].log_prob(node["value"]))
        if node["mask"] is not None:
            log_p = torch.where(torch.as_tensor(node["mask"]), log_p, log_p.new_zeros(()))
        total += per_draw(log_p, num_samples, site, nesting, event=False).reshape(
            num_samples, -1).sum(-1).double()
    absent = guide.structure.absent
    for name, q in qs.items():
        log_q = q.log_prob(draws[name])
        if name in absent:  # masked elements nothing reads: no weight, as in the fit
            log_q = torch.where(absent[name], log_q.new_zeros(()), log_q)
        total -= log_q.reshape(num_samples, -1).sum(-1).double()
    return total


def _enumerated_sites(guide: QEMGuide) -> list:
    if guide.structure is None:
        return []
    return [name for name, site in guide.structure.sites.items() if site.enumerated]


@dataclass
class Diagnostics:
    """What :func:`diagnose` found.

    :ivar ess: per site, the weight ESS per plate element.
    :ivar min_ess: the ESS below which a site is flagged.
    :ivar khat: Pareto k-hat of the guide's importance weights (None if not computed:
        ``num_samples=0``, or a model with enumerated sites, see ``khat_note``).
    :ivar khat_threshold: the threshold for ``num_samples`` draws.
    :ivar flagged: the sites whose smallest ESS is below ``min_ess``.
    :ivar rank_deficient: the sites with a full-covariance q of D coordinates whose
        smallest ESS is at most D: the weighted covariance the M-step takes from such
        weights has rank below D (``{site: (min ESS, D)}``).
    :ivar correlated: the vector sites with a per-coordinate q whose coordinates'
        estimated posterior correlation reaches :data:`CORRELATED_FROM` (``{site:
        largest absolute r}``, see :func:`coordinate_correlations`).
    """

    ess: Dict[str, torch.Tensor]
    min_ess: float
    khat: Optional[float]
    khat_threshold: float
    flagged: Dict[str, float]
    rank_deficient: Dict[str, tuple] = field(default_factory=dict)
    khat_note: str = ""
    correlated: Dict[str, float] = field(default_factory=dict)

    def summary(self) -> Dict[str, Dict[str, float]]:
        """Per site: min, median and max of the ESS over its plate elements."""
        return {name: {"min": v.min().item(), "median": v.median().item(),
                       "max": v.max().item()} for name, v in self.ess.items()}


def diagnose(inference: Inference, *args, num_samples: int = 1000,
             min_ess: Optional[float] = None, warn: bool = True, **kwargs) -> Diagnostics:
    """Weight ESS of every site and Pareto k-hat of the fitted guide, with a
    :class:`QEMDiagnosticWarning` naming each site that fails.

    Example::

        report = diagnose(inference, y)
        report.summary()["theta"]      # {"min": ..., "median": ..., "max": ...}

    :param inference: the :class:`~pyro_qem.infer.Inference` that fitted the guide.
    :param num_samples: joint draws from the guide for k-hat (0 to skip it; otherwise
        at least :data:`MIN_KHAT_SAMPLES`).
    :param min_ess: flag a site when any plate element's ESS is below this; default
        ``max(2, K / 10)`` (ours: at ESS ~ 1 one particle carries the estimate).
    :param warn: emit the warnings (otherwise only report).
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or \
            not (num_samples == 0 or num_samples >= MIN_KHAT_SAMPLES):
        raise ValueError(
            f"diagnose: num_samples must be 0 (no k-hat) or an int of at least "
            f"{MIN_KHAT_SAMPLES}, got {num_samples!r}: k-hat fits a Pareto tail to the "
            "largest ~20% of the weights, and its threshold min(1 - 1/log10(S), 0.7) is "
            "below 0.5 under 100 draws (negative under 10)."
        )
    ess = weight_ess(inference, *args, **kwargs)
    threshold = max(2.0, inference.K / 10) if min_ess is None else float(min_ess)
    flagged = {name: v.min().item() for name, v in ess.items() if v.min().item() < threshold}
    rank_deficient = {}
    for name, family in inference.guide.families.items():
        coupled = family.coupled_coordinates(inference.guide.structure.sites[name].event_shape)
        if coupled > 1 and ess[name].min().item() <= coupled:
            rank_deficient[name] = (ess[name].min().item(), coupled)
    khat, khat_max, note = None, math.nan, ""
    enumerated = _enumerated_sites(inference.guide)
    if num_samples and enumerated:
        note = (f"k-hat not computed: q has no draws of the enumerated site(s) {enumerated} "
                "(see guide_log_weights)")
    elif num_samples:
        log_w = guide_log_weights(inference.model, inference.guide, *args,
                                  num_samples=num_samples, **kwargs)
        khat, khat_max = pareto_khat(log_w), khat_threshold(num_samples)
    correlated = {name: r for name, r in coordinate_correlations(inference, *args, **kwargs).items()
                  if r >= CORRELATED_FROM}
    report = Diagnostics(ess, threshold, khat, khat_max, flagged, rank_deficient, note, correlated)
    if warn:
        _warn(report, inference.K)
    return report


def _warn(report: Diagnostics, K: int) -> None:
    for name, value in report.flagged.items():
        warnings.warn(
            f"Site '{name}': the effective sample size of its particle weights is "
            f"{value:.2f} of K = {K} on its worst plate element (threshold "
            f"{report.min_ess:g}), so one particle carries its posterior estimate: q does "
            "not cover the posterior there. Fit longer, or raise K or q's initial scale; "
            "for a vector site of many coordinates (whose weights stay degenerate at any "
            "practical K), Inference(..., update='auto') refits it from the "
            "log-weights where its weights stay degenerate, without needing an ESS "
            "(not for multimodal posteriors: see its docstring).",
            QEMDiagnosticWarning,
            stacklevel=3,
        )
    for name, (value, coupled) in report.rank_deficient.items():
        warnings.warn(
            f"Site '{name}': its q has a full {coupled} x {coupled} covariance, but the "
            f"effective sample size of its particle weights is {value:.2f} <= {coupled} on "
            "its worst plate element, so each step's weighted covariance has rank below "
            f"{coupled} and the fitted covariance is noise in the missing directions "
            "(strongly correlated posteriors do this when q is still far wider than the "
            "posterior). Raise K well above the dimension, fit longer from a closer start "
            "(init_loc_fn, a smaller init_scale), or reparameterise the coordinates to be "
            "less correlated.",
            QEMDiagnosticWarning,
            stacklevel=3,
        )
    for name, r in report.correlated.items():
        warnings.warn(
            f"Site '{name}': two of its coordinates are correlated in the posterior "
            f"(|r| about {r:.2f}, estimated from the particle weights on the unconstrained "
            "scale, which understates it), but its q is one per coordinate: q's spread and "
            "the joint draws come out wrong (a Gamma vector behind Dirichlet data at "
            "r ~0.85: joint-draw sds 0.59-0.68x; correlated regression coefficients: q "
            "2.4-2.9x too wide). Give it a full covariance: families={'" + name + "': "
            "'MultivariateNormal'} for a real vector (about 10 particles per coordinate of "
            "its group); a constrained vector needs an unconstrained version first (e.g. "
            "sample log_x from a MultivariateNormal and use x = log_x.exp()).",
            QEMDiagnosticWarning,
            stacklevel=3,
        )
    if report.khat is not None and report.khat > report.khat_threshold:
        worst = sorted(report.ess, key=lambda n: report.ess[n].min().item())[:3]
        warnings.warn(
            f"Pareto k-hat of the fitted guide's importance weights is {report.khat:.2f} > "
            f"{report.khat_threshold:.2f}: q is not a reliable proposal. Draws and moments "
            "of q (sample_guide, guide.distributions()) can be off, and so can "
            "sample_posterior and posterior_moments, which reweight K = "
            f"{K} particles drawn from q (on strongly correlated coefficients and a GP's "
            "hyperparameters, k-hat stayed above 0.7 and the joint draws' sds were 35% "
            f"or more off NUTS's). Check the sites with the lowest weight ESS ({worst}); raise "
            "K, give correlated sites one full-covariance q (groups=, families=), or "
            "check the answer against MCMC.",
            QEMDiagnosticWarning,
            stacklevel=3,
        )
