"""Centred against non-centred: QEM on the radon varying-slopes hierarchy, whose
slope scale ``sigma_b`` sits in a funnel, at the README's settings (K = 30, lr = 0.1,
600 steps, averaging from 300, 2000 joint draws), scored against the cached NUTS
reference of ``benchmarks.county`` (run ``python -m benchmarks.county`` once first).

    python -m benchmarks.funnel [--seeds 0,1] [--K 30] [--steps 600] [--num-samples 2000]

The non-centred model is the same Pyro model wrapped in ``poutine.reparam`` with
``LocScaleReparam(0.0)`` for ``a`` and ``b``; its rows read the derived ``a`` and ``b``
through the county index, which pyro_qem folds into the county groups exactly. Its
joint draws of ``a`` and ``b`` are recomputed from the drawn latents by Pyro's
``Predictive``. Printed per variant and seed: the worst mean error in reference sds
(and its site), the range of sd / reference sd, and whether issue 11's target (0.1 sd,
10%) is met.
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch
from pyro.infer import Predictive

from pyro_qem import AutoQEM, Inference, sample_posterior

from .county import errors, moments_of, radon_reference
from .models.county import COUNTY_MODELS, radon_args

SITES = ("mu_a", "sigma_a", "mu_b", "sigma_b", "sigma", "a", "b")


def fit(centred: bool, K: int, seed: int, steps: int = 600, num_samples: int = 2000):
    cm = COUNTY_MODELS["slopes"]
    model, local = cm.model, ["a", "b"]
    if not centred:
        model, local = cm.nuts_model, ["a_decentered", "b_decentered"]
    args = radon_args()
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    guide = AutoQEM(model, groups=[cm.groups[0], local])
    inference = Inference(model, guide, K=K, lr=0.1, average_from=steps // 2)
    start = time.perf_counter()
    for _ in range(steps):
        inference.step(*args)
    seconds = time.perf_counter() - start
    draws = dict(sample_posterior(inference, *args, num_samples=num_samples))
    if not centred:
        derived = Predictive(model, posterior_samples=draws, return_sites=list(SITES))(*args)
        draws = {name: derived[name].reshape((num_samples,) + derived[name].shape[-1:])
                 if derived[name][0].numel() > 1 else derived[name].reshape(num_samples)
                 for name in SITES}
    return seconds, moments_of(draws)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--K", type=int, default=30)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--num-samples", type=int, default=2000)
    options = parser.parse_args(argv)
    torch.set_num_threads(1)
    ref, _ = radon_reference(COUNTY_MODELS["slopes"], rebuild=False, run=False)
    if ref is None:
        raise SystemExit("No cached NUTS reference: run `python -m benchmarks.county` first.")
    print(f"| variant | seed | fit (s) | worst mean err (site) | sd ratio | target met |")
    print("|---|---|---|---|---|---|")
    for centred in (True, False):
        for seed in map(int, options.seeds.split(",")):
            seconds, moments = fit(centred, options.K, seed, options.steps, options.num_samples)
            e = errors(moments, ref)
            name = "centred" if centred else "non-centred (LocScaleReparam)"
            print(f"| {name} | {seed} | {seconds:.1f} | {e['worst_mean']:.3f} ({e['worst_site']}) | "
                  f"{e['sd_min']:.3f}-{e['sd_max']:.3f} | {'yes' if e['meets_target'] else 'no'} |",
                  flush=True)


if __name__ == "__main__":
    main()
