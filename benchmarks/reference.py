"""NUTS reference posteriors (Pyro's NUTS), cached under ``benchmarks/results/``.

Run ``python -m benchmarks.reference [--models bus,radon,movielens]`` to (re)build the
cache; :func:`load_or_run` is what the comparison calls.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

import pyro
from pyro.infer import MCMC, NUTS, Predictive
from pyro.infer.reparam import LocScaleReparam
from pyro.ops.stats import autocorrelation

from . import metrics
from .models import MODELS, BenchmarkModel

Moments = Dict[str, Dict[str, np.ndarray]]
DEFAULT_RESULTS = Path(__file__).parent / "results"
# (warmup, samples) per model, limited by NUTS's cost on 2 cores (bus: ~1 s per draw,
# its alpha/phi/psi trade-off needs long trajectories). The JSON next to each cache
# records the time and the minimum ESS over all coordinates: the Monte Carlo error of
# a reference mean is about 1/sqrt(ESS) reference sds.
DRAWS = {"bus": (250, 350), "radon": (500, 1000), "movielens": (250, 350)}
# NUTS samples these sites non-centred (their posteriors are funnels); the centred
# values are recovered as deterministic sites.
NON_CENTRED = {"bus": (), "radon": (), "movielens": ("z",)}
# A dense mass matrix where the posterior has strongly correlated directions (off
# everywhere: on bus, where alpha trades off against phi and psi, it was slower).
FULL_MASS = {"bus": False, "radon": False, "movielens": False}


def nuts_model(bm: BenchmarkModel):
    """``bm.model`` with the :data:`NON_CENTRED` sites reparameterised."""
    config = {site: LocScaleReparam(0.0) for site in NON_CENTRED[bm.name]}
    return pyro.poutine.reparam(bm.model, config=config) if config else bm.model


def centred_draws(bm: BenchmarkModel, model, samples: Dict[str, torch.Tensor],
                  train) -> Dict[str, torch.Tensor]:
    """Draws of every latent site of ``bm.model`` from NUTS draws of ``model``."""
    return latent_draws(bm.model, model, samples, train)


def latent_draws(model, sampled_model, samples: Dict[str, torch.Tensor], *args,
                 **kwargs) -> Dict[str, torch.Tensor]:
    """Draws (float64) of every latent site of ``model`` from NUTS draws of
    ``sampled_model``, a reparameterisation of it whose sites of the same names
    (sampled or deterministic) hold the original values."""
    names = [n for n, site in pyro.poutine.trace(model).get_trace(*args, **kwargs).nodes.items()
             if site["type"] == "sample" and not site["is_observed"]]
    predictive = Predictive(sampled_model, posterior_samples=samples, return_sites=names)
    return {k: v.double() for k, v in predictive(*args, **kwargs).items()}


def moments_of(draws: Dict[str, torch.Tensor]) -> Moments:
    """Mean and sd over the first (draw) dim of every site."""
    return {k: {"mean": v.mean(0).numpy(), "sd": v.std(0).numpy()} for k, v in draws.items()}


def nuts(model, sampled_model, args: tuple, warmup: int, samples: int, seed: int = 0,
         full_mass: bool = False, jit_compile: bool = True,
         kwargs: Optional[Dict] = None) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """One seeded chain of Pyro's NUTS on ``sampled_model(*args)``: draws of every latent
    site of ``model`` (see :func:`latent_draws`), and a record of the run (time,
    divergences, the minimum ESS over all coordinates)."""
    kwargs = kwargs or {}
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    kernel = NUTS(sampled_model, target_accept_prob=0.9, full_mass=full_mass,
                  jit_compile=jit_compile, ignore_jit_warnings=True)
    mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, disable_progbar=True)
    start = time.perf_counter()
    mcmc.run(*args, **kwargs)
    seconds = time.perf_counter() - start
    draws = latent_draws(model, sampled_model, mcmc.get_samples(), *args, **kwargs)
    info = {
        "warmup": warmup, "samples": samples, "seed": seed, "seconds": round(seconds, 1),
        "divergences": int(sum(len(v) for v in mcmc.diagnostics()["divergences"].values())),
        "min_ess": float(min(effective_sample_size(v).min() for v in draws.values())),
    }
    return draws, info


def effective_sample_size(draws: torch.Tensor) -> torch.Tensor:
    """ESS of each coordinate of one chain's ``draws`` (draw dim 0), by Geyer's initial
    monotone sequence estimator (as :func:`pyro.ops.stats.effective_sample_size`, whose
    monotone step takes memory quadratic in the number of draws: 34 GB for 20000)."""
    n = draws.shape[0]
    flat = draws.double().reshape(n, -1)
    rho = autocorrelation(flat, dim=0)
    pairs = rho[: n - n % 2].reshape(n // 2, 2, -1).sum(1)
    monotone = torch.cummin(pairs[1:].clamp(min=0), dim=0).values
    ess = n / (-1 + 2 * pairs[0] + 2 * monotone.sum(0))
    # A constant coordinate (the fixed entries of a Cholesky factor) has no Monte Carlo
    # error: infinite ESS, not the 0/0 of its autocorrelation.
    return torch.where(flat.std(0) > 0, ess, torch.full_like(ess, math.inf))


def run_nuts(bm: BenchmarkModel, warmup: int, samples: int, seed: int = 0) -> Tuple[Moments, Dict]:
    """Posterior means and sds of every latent site of ``bm`` (train data, c = 1)."""
    train, _ = bm.load("cpu")
    draws, run = nuts(bm.model, nuts_model(bm), (train,), warmup, samples, seed,
                      full_mass=FULL_MASS[bm.name])
    info = {**predictive_loglik(bm, draws), "model": bm.name, **run}
    return moments_of(draws), info


def predictive_loglik(bm: BenchmarkModel, draws: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Both held-out scores (:func:`~benchmarks.metrics.predictive_scores`) of the joint
    NUTS draws: what the methods' figures would be with the exact posterior."""
    train, test = bm.load("cpu")
    trace = pyro.poutine.trace(bm.model).get_trace(train)
    event_dims = {name: trace.nodes[name]["fn"].event_dim for name in draws}
    floats = {name: value.float() for name, value in draws.items()}
    log_p = metrics.log_likelihoods(bm.model, test, floats, event_dims, bm.max_plate_nesting)
    return metrics.predictive_scores(log_p)


def info_of(name: str, out: Path = DEFAULT_RESULTS) -> Dict:
    """The JSON record next to a cached reference (empty if there is none)."""
    path = out / f"reference_{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save(moments: Moments, info: Dict, out: Path) -> None:
    """Write ``reference_<model>.npz`` (means and sds) and ``reference_<model>.json``."""
    out.mkdir(parents=True, exist_ok=True)
    arrays = {f"{site}.{key}": value for site, m in moments.items() for key, value in m.items()}
    np.savez(out / f"reference_{info['model']}.npz", **arrays)
    (out / f"reference_{info['model']}.json").write_text(json.dumps(info, indent=1) + "\n")


def load(name: str, out: Path) -> Optional[Moments]:
    """The cached moments of model ``name``, or None."""
    path = out / f"reference_{name}.npz"
    if not path.exists():
        return None
    moments: Moments = {}
    with np.load(path) as arrays:
        for key in arrays.files:
            site, stat = key.rsplit(".", 1)
            moments.setdefault(site, {})[stat] = torch.as_tensor(arrays[key])
    return moments


def load_or_run(bm: BenchmarkModel, out: Path = DEFAULT_RESULTS,
                run: bool = True) -> Optional[Moments]:
    """The cached reference of ``bm``; computed (and cached) first if missing and ``run``."""
    cached = load(bm.name, out)
    if cached is not None or not run:
        return cached
    warmup, samples = DRAWS[bm.name]
    moments, info = run_nuts(bm, warmup, samples)
    save(moments, info, out)
    print(f"NUTS reference for {bm.name}: {info}")
    return load(bm.name, out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    for name in args.models.split(","):
        warmup, samples = DRAWS[name]
        moments, info = run_nuts(MODELS[name], warmup, samples)
        save(moments, info, args.out)
        print(json.dumps(info))


if __name__ == "__main__":
    main()
