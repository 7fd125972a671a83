"""The measures of a fitted posterior: held-out predictive log-likelihood, a standard
ELBO, log P_hat at a fixed K, and moment errors against a reference."""

from __future__ import annotations

import math
from typing import Callable, Dict, Mapping, Optional, Sequence

import torch

import pyro
import pyro.poutine as poutine
from pyro.infer import Trace_ELBO
from pyro_qem import AutoQEM, Inference
from pyro_qem.outputs import log_predictive_density

from .models import Data
from .posterior import Posterior, as_guide, draw


def _batched(draws: Dict[str, torch.Tensor], event_dims: Mapping[str, int],
             nesting: int) -> Dict[str, torch.Tensor]:
    """Draws with the draw dim just left of the model's plate dims."""
    out = {}
    for name, value in draws.items():
        batch = value.shape[1:value.dim() - event_dims[name]]
        pad = (1,) * (nesting - len(batch))
        out[name] = value.reshape(value.shape[:1] + pad + value.shape[1:])
    return out


def log_likelihoods(model: Callable, data: Data, draws: Dict[str, torch.Tensor],
                    event_dims: Mapping[str, int], nesting: int) -> torch.Tensor:
    """``log p(x_i | draw n)`` for every draw n and observed element i (all observed
    sites, flattened): shape ``(draws, elements)``, from one vectorised run of the model.

    Latent sites without a draw (new plate elements) are drawn from the model given
    the draws of the others.
    """
    num = next(iter(draws.values())).shape[0]
    conditioned = poutine.condition(model, _batched(draws, event_dims, nesting))
    with torch.no_grad(), pyro.plate("draws", num, dim=-nesting - 1):
        trace = poutine.trace(conditioned).get_trace(data)
    columns = []
    for site in trace.nodes.values():
        if site["type"] == "sample" and site["is_observed"] and site["name"] not in draws:
            log_p = site["fn"].log_prob(site["value"])
            log_p = log_p.expand(torch.broadcast_shapes(log_p.shape, (num,) + (1,) * nesting))
            columns.append(log_p.reshape(num, -1))
    return torch.cat(columns, -1)


def predictive_scores(log_p: torch.Tensor) -> Dict[str, float]:
    """Both held-out scores from ``log p(x_i | draw n)`` (draws x elements).

    - ``pred_ll``: ``sum_i log mean_n p(x_i | draw n)``, the log pointwise predictive
      density (what ArviZ's ``loo``/``waic`` build on). The primary measure.
    - ``pred_ll_joint``: ``log mean_n p(x_test | draw n)`` of the whole test set, the
      QEM paper's figure. A mean over draws of a product over ~1000 observations is
      dominated by the single best draw, so it rewards narrow posteriors: on movielens
      the exact (NUTS) posterior scores far below every approximation.
    """
    return {"pred_ll": log_predictive_density(log_p, pointwise=True),
            "pred_ll_joint": log_predictive_density(log_p)}


def predictive_loglik(model: Callable, test: Data, posterior: Posterior, nesting: int,
                      num_draws: int = 100) -> Dict[str, float]:
    """:func:`predictive_scores` over ``num_draws`` independent draws of each site's q:
    the same estimator for every method."""
    event_dims = {name: len(q.event_shape) for name, q in posterior.items()}
    draws = draw(posterior, num_draws)
    return predictive_scores(log_likelihoods(model, test, draws, event_dims, nesting))


def standard_elbo(model: Callable, train: Data, posterior: Posterior, nesting: int,
                  num_particles: int = 200) -> float:
    """Pyro's ``Trace_ELBO`` of the q's, with many vectorised particles."""
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True,
                      max_plate_nesting=nesting)
    return -elbo.loss(model, as_guide(posterior), train)


class LogPHat:
    """``log P_hat`` at a fixed K of any mean-field Normal posterior, by loading its
    moments into a QEM guide of the model and evaluating the engine's estimator.

    :param model: the model (with its ``c`` bound).
    :param train: the training data.
    :param groups: the QEM particle groups.
    :param K: particles per group.
    """

    def __init__(self, model: Callable, train: Data, groups: Sequence[Sequence[str]],
                 K: int = 30) -> None:
        self.guide = AutoQEM(model, groups=groups, prefix="benchmark_log_p_hat", noncentre=None)
        self.guide.setup(train)
        self.inference = Inference(model, self.guide, K=K)
        self.train = train

    def __call__(self, posterior: Posterior) -> float:
        store = pyro.get_param_store()
        for name, q in posterior.items():
            family = self.guide.families[name]
            params = {"loc": q.mean.double(), "scale": q.stddev.double()}
            stats = family.moments_from_params(params, q.event_shape)
            for stat, value in zip(family.stat_names, stats):
                store[self.guide.state.name(stat, name)] = value.detach()
        try:
            return -self.inference.evaluate_loss(self.train)
        except FloatingPointError:
            return -math.inf  # no particle combination has finite density


def moment_errors(posterior: Posterior,
                  reference: Optional[Mapping[str, Mapping]]) -> Dict[str, float]:
    """RMS over all latent coordinates of the mean error in reference sds, and of the
    relative sd error ``sd_q / sd_ref - 1``. Empty without a reference."""
    if not reference:
        return {}
    mean_sq, sd_sq, count = 0.0, 0.0, 0
    for name, q in posterior.items():
        ref_mean = torch.as_tensor(reference[name]["mean"]).to(q.mean)
        ref_sd = torch.as_tensor(reference[name]["sd"]).to(q.mean)
        mean_sq += (((q.mean - ref_mean) / ref_sd) ** 2).sum().item()
        sd_sq += ((q.stddev / ref_sd - 1.0) ** 2).sum().item()
        count += ref_mean.numel()
    return {"mean_err": math.sqrt(mean_sq / count), "sd_err": math.sqrt(sd_sq / count)}
