"""The NumPyro twins of the benchmark models have the Pyro models' log joint."""

import functools

import numpy as np
import pytest
import torch

import pyro
import pyro.poutine as poutine
from pyro.poutine.util import site_is_subsample

numpyro = pytest.importorskip("numpyro")
jax = pytest.importorskip("jax")

from benchmarks.models import MODELS  # noqa: E402
from benchmarks.numpyro_models import NUMPYRO_MODELS, fit_svi, to_jax  # noqa: E402
from numpyro.infer.util import log_density  # noqa: E402


def _latents(trace):
    return {k: s["value"] for k, s in trace.iter_stochastic_nodes() if not site_is_subsample(s)}


def _joints(name: str, c: float, dtype: torch.dtype, seed: int):
    """Pyro's and NumPyro's log joint at one draw of the latents from the Pyro prior."""
    bm = MODELS[name]
    train, _ = bm.load("cpu")
    train = {k: v.to(dtype) for k, v in train.items()}
    model = functools.partial(bm.model, c=c)
    pyro.set_rng_seed(seed)
    prior = poutine.trace(model).get_trace(train)
    values = _latents(prior)
    pyro_joint = poutine.trace(poutine.condition(model, values)).get_trace(train).log_prob_sum()
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    numpyro_joint, _ = log_density(functools.partial(NUMPYRO_MODELS[name], c=c),
                                   (to_jax(train, np_dtype),), {}, to_jax(values, np_dtype))
    return pyro_joint.item(), float(numpyro_joint)


@pytest.mark.parametrize("name", sorted(NUMPYRO_MODELS))
@pytest.mark.parametrize("rescaled", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_log_joint_float32(name, rescaled, seed):
    c = MODELS[name].rescale if rescaled else 1.0
    mine, theirs = _joints(name, c, torch.float32, seed)
    assert theirs == pytest.approx(mine, rel=1e-4)


@pytest.mark.parametrize("name", sorted(NUMPYRO_MODELS))
@pytest.mark.parametrize("rescaled", [False, True])
def test_log_joint_float64(name, rescaled):
    c = MODELS[name].rescale if rescaled else 1.0
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        mine, theirs = _joints(name, c, torch.float64, 3)
    finally:
        jax.config.update("jax_enable_x64", previous)
    assert theirs == pytest.approx(mine, rel=1e-8)


@pytest.mark.slow
def test_fit_svi_scores_with_the_pyro_metrics():
    """A short fit: timings separate, loss falls, q's and draws have Pyro's shapes."""
    from benchmarks import metrics
    bm = MODELS["radon"]
    train, test = bm.load("cpu")
    result = fit_svi("radon", train, steps=50, lr=0.05, scan=False)
    assert result.compile_s > 0 and result.ms_per_step > 0 and len(result.losses) == 50
    assert result.losses[-1] < result.losses[0]
    pyro.set_rng_seed(0)
    prior = poutine.trace(bm.model).get_trace(train)
    posterior = result.posterior()
    draws = result.draws(4)
    for name, q in posterior.items():
        shape = prior.nodes[name]["value"].shape
        assert q.batch_shape + q.event_shape == shape
        assert draws[name].shape == (4,) + shape
    assert set(posterior) == set(_latents(prior))
    score = metrics.predictive_loglik(bm.model, test, posterior, bm.max_plate_nesting, 20)
    assert np.isfinite(score["pred_ll"])
