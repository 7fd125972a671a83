"""The benchmark models in NumPyro, and NumPyro's jit-compiled SVI as a baseline.

Needs the optional ``bench`` extra (``pip install -e .[bench]``: numpyro and jax).
Each model here is a line-for-line twin of the Pyro model of the same name in
:mod:`benchmarks.models` (priors, likelihoods, plates and their dims, the rescaling
argument ``c``), so a NumPyro fit is scored by the same metrics as every other method:
:meth:`NumPyroSVIResult.posterior` and :meth:`NumPyroSVIResult.draws` return torch
tensors with the Pyro models' site names and shapes.

Example::

    from benchmarks.models import RADON
    from benchmarks.numpyro_models import fit_svi
    train, test = RADON.load("cpu")
    result = fit_svi("radon", train, steps=1000, lr=0.01)
    result.compile_s, result.ms_per_step, result.losses[-1]
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np
import torch

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_median

import pyro.distributions as pdist

JaxData = Dict[str, jnp.ndarray]


def std_normal(shape=()) -> dist.Normal:
    """Normal(0, 1) with batch shape ``shape`` (float32 unless x64 is enabled)."""
    return dist.Normal(jnp.zeros(shape), jnp.ones(shape))


def bus(data: JaxData, c: float = 1.0) -> None:
    """Twin of :func:`benchmarks.models.bus.model`."""
    run_type, company, delay = data["run_type"], data["company"], data["delay"]
    years, boroughs, ids, width_r = run_type.shape
    psi = numpyro.sample("psi", std_normal((width_r,)).to_event(1))
    phi = numpyro.sample("phi", std_normal((company.shape[-1],)).to_event(1))
    sigma_beta = numpyro.sample("sigma_beta", std_normal())
    mu_beta = numpyro.sample("mu_beta", std_normal())
    with numpyro.plate("year", years, dim=-3):
        beta = numpyro.sample("beta", dist.Normal(mu_beta, jnp.exp(sigma_beta)))
        sigma_alpha = numpyro.sample("sigma_alpha", std_normal())
        with numpyro.plate("borough", boroughs, dim=-2):
            alpha = numpyro.sample("alpha", dist.Normal(beta / c, jnp.exp(sigma_alpha) / c))
            with numpyro.plate("id", ids, dim=-1):
                logits = c * alpha + company @ phi + run_type @ psi
                numpyro.sample("delay", dist.Bernoulli(logits=logits), obs=delay)


def radon(data: JaxData, c: float = 1.0) -> None:
    """Twin of :func:`benchmarks.models.radon.model`."""
    basement, log_uranium, log_radon = data["basement"], data["log_uranium"], data["log_radon"]
    states, zips = log_radon.shape
    global_mean = numpyro.sample("global_mean", std_normal())
    global_log_sigma = numpyro.sample("global_log_sigma", std_normal())
    with numpyro.plate("state", states, dim=-2):
        state_mean = numpyro.sample(
            "state_mean", dist.Normal(global_mean / c, jnp.exp(global_log_sigma) / c))
        state_log_sigma = numpyro.sample("state_log_sigma", std_normal())
        beta_u = numpyro.sample("beta_u", std_normal())
        beta_basement = numpyro.sample("beta_basement", std_normal())
        with numpyro.plate("zip", zips, dim=-1):
            loc = c * state_mean + basement * beta_basement + log_uranium * beta_u
            numpyro.sample("log_radon", dist.Normal(loc, jnp.exp(state_log_sigma)),
                           obs=log_radon)


def movielens(data: JaxData, c: float = 1.0) -> None:
    """Twin of :func:`benchmarks.models.movielens.model`."""
    x, rating = data["x"], data["rating"]
    users, films, genres = x.shape
    mu_z = numpyro.sample("mu_z", std_normal((genres,)).to_event(1))
    psi_z = numpyro.sample("psi_z", std_normal((genres,)).to_event(1))
    with numpyro.plate("user", users, dim=-2):
        z = numpyro.sample("z", dist.Normal(mu_z / c, jnp.exp(psi_z) / c).to_event(1))
        with numpyro.plate("film", films, dim=-1):
            logits = (c * z * x).sum(-1)
            numpyro.sample("rating", dist.Bernoulli(logits=logits), obs=rating)


NUMPYRO_MODELS: Dict[str, Callable] = {"bus": bus, "radon": radon, "movielens": movielens}


def to_jax(tensors: Mapping[str, torch.Tensor], dtype=None) -> JaxData:
    """torch tensors (any device) as JAX arrays (float32 unless ``dtype``)."""
    out = {}
    for k, v in tensors.items():
        a = v.detach().cpu().numpy()
        out[k] = jnp.asarray(a if dtype is None else a.astype(dtype))
    return out


def to_torch(arrays: Mapping[str, jnp.ndarray], dtype=torch.float32) -> Dict[str, torch.Tensor]:
    """JAX arrays as CPU torch tensors."""
    return {k: torch.as_tensor(np.array(v), dtype=dtype) for k, v in arrays.items()}


@dataclass
class NumPyroSVIResult:
    """A NumPyro SVI fit: timings (seconds), the loss curve and the fitted AutoNormal.

    :param init_s: jitted ``svi.init`` (traces the model, initialises the guide).
    :param compile_s: ahead-of-time ``jax.jit(svi.update)`` lowering and compilation.
    :param ms_per_step: steady-state median of the jitted ``update`` in a Python loop
        (each step waits for its loss).
    :param scan_compile_s: compiling ``steps`` updates as one ``lax.scan`` (what
        ``svi.run(progress_bar=False)`` runs), first call minus second.
    :param scan_ms_per_step: that compiled loop's second call, per step.
    """

    model: str
    lr: float
    steps: int
    init_s: float
    compile_s: float
    ms_per_step: float
    losses: List[float]
    params: Dict[str, jnp.ndarray]
    event_dims: Dict[str, int]
    guide: AutoNormal = field(repr=False)
    scan_compile_s: float = math.nan
    scan_ms_per_step: float = math.nan

    def posterior(self) -> Dict[str, pdist.Distribution]:
        """The fitted q's as Pyro distributions, like
        :func:`benchmarks.posterior.autonormal_posterior` of a Pyro AutoNormal."""
        return posterior_of(self.params, self.event_dims)

    def draws(self, num: int, seed: int = 0) -> Dict[str, torch.Tensor]:
        """``num`` draws of the guide (NumPyro's own sampler) as torch tensors of shape
        ``(num,) + site shape``."""
        samples = self.guide.sample_posterior(jax.random.PRNGKey(seed), self.params,
                                              sample_shape=(num,))
        return to_torch({k: samples[k] for k in self.event_dims})


def posterior_of(params: Mapping[str, jnp.ndarray], event_dims: Mapping[str, int]
                 ) -> Dict[str, pdist.Distribution]:
    """AutoNormal params (``<site>_auto_loc`` / ``_auto_scale``) as torch Normal q's."""
    out = {}
    for name, event_dim in event_dims.items():
        loc, scale = (torch.as_tensor(np.array(params[f"{name}_auto_{k}"]), dtype=torch.float32)
                      for k in ("loc", "scale"))
        out[name] = pdist.Normal(loc, scale).to_event(event_dim)
    return out


def latent_event_dims(trace) -> Dict[str, int]:
    """Each latent site's event dim in a NumPyro trace (e.g. a guide's prototype trace)."""
    return {k: s["fn"].event_dim for k, s in trace.items()
            if s["type"] == "sample" and not s["is_observed"]}


class JittedSVI:
    """NumPyro SVI (AutoNormal initialised like Pyro's, Trace_ELBO, Adam) with
    ``svi.update`` compiled ahead of time; ``step(data)`` returns the loss as a float,
    like Pyro's ``svi.step`` (``data`` defaults to the training data given here)."""

    def __init__(self, name: str, train: JaxData, lr: float, c: float = 1.0,
                 seed: int = 0) -> None:
        self.model = functools.partial(NUMPYRO_MODELS[name], c=c)
        # Pyro's AutoNormal defaults (NumPyro's init_loc_fn default is init_to_uniform)
        self.guide = AutoNormal(self.model, init_loc_fn=init_to_median(num_samples=15),
                                init_scale=0.1)
        self.svi = SVI(self.model, self.guide, numpyro.optim.Adam(lr), Trace_ELBO())
        self.train = train
        start = time.perf_counter()
        # jitted: eager init dispatches (and compiles) every op of the model, 5x slower
        self.state = jax.jit(self.svi.init)(jax.random.PRNGKey(seed), train)
        jax.block_until_ready(self.state)
        self.init_s = time.perf_counter() - start
        start = time.perf_counter()
        self.update = jax.jit(self.svi.update).lower(self.state, train).compile()
        self.compile_s = time.perf_counter() - start
        self.event_dims = latent_event_dims(self.guide.prototype_trace)

    def step(self, data: Optional[JaxData] = None) -> float:
        self.state, loss = self.update(self.state, self.train if data is None else data)
        return float(loss)

    def params(self) -> Dict[str, jnp.ndarray]:
        return self.svi.get_params(self.state)

    def posterior(self) -> Dict[str, pdist.Distribution]:
        return posterior_of(self.params(), self.event_dims)


def fit_svi(name: str, train: Mapping[str, torch.Tensor], steps: int = 1000,
            lr: float = 0.01, c: float = 1.0, seed: int = 0, scan: bool = True
            ) -> NumPyroSVIResult:
    """Fit NumPyro SVI to the NumPyro twin of benchmark model ``name``.

    Runs ``steps`` jitted updates in a Python loop (the losses and the returned fit come
    from it), and, when ``scan``, times the same number of steps compiled as one
    ``lax.scan`` from the same initial state (compile time and steady state apart)."""
    data = to_jax(train)
    fit = JittedSVI(name, data, lr, c, seed)
    initial = fit.state
    losses, durations = [], []
    for _ in range(steps):
        start = time.perf_counter()
        losses.append(fit.step(data))
        durations.append(time.perf_counter() - start)
    result = NumPyroSVIResult(
        model=name, lr=lr, steps=steps, init_s=fit.init_s, compile_s=fit.compile_s,
        ms_per_step=1e3 * statistics.median(durations[1:] or durations),
        losses=losses, params=fit.params(), event_dims=fit.event_dims, guide=fit.guide)
    if scan:
        result.scan_compile_s, result.scan_ms_per_step = _time_scan(fit.svi, initial, data,
                                                                    steps)
    return result


def _time_scan(svi: SVI, state, data: JaxData, steps: int):
    """(compile s, ms/step) of ``steps`` updates as one jitted ``lax.scan``."""

    @jax.jit
    def loop(state, data):
        def body(s, _):
            return svi.update(s, data)
        return jax.lax.scan(body, state, None, length=steps)

    timings = []
    for _ in range(2):
        start = time.perf_counter()
        jax.block_until_ready(loop(state, data))
        timings.append(time.perf_counter() - start)
    return max(0.0, timings[0] - timings[1]), 1e3 * timings[1] / steps

