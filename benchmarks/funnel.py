"""Centred against non-centred: QEM on the radon hierarchies (varying intercepts;
varying slopes, independent and correlated under an LKJ prior), whose scale parameters
sit in a funnel, at the README's settings (K = 30, lr = 0.1,
600 steps, averaging from 300, 2000 joint draws), scored against the cached NUTS
reference of ``benchmarks.county`` (run ``python -m benchmarks.county`` once first).

    python -m benchmarks.funnel [--seeds 0,1] [--K 30] [--steps 600] [--num-samples 2000]

Three variants: the centred model with every site proposed as written
(``AutoQEM(model, noncentre=None)``), the centred model with AutoQEM's default
non-centred proposals (``noncentre="auto"``), and the non-centred model written by hand.
The hand-written non-centred models are those NUTS samples in ``benchmarks.county``: the slopes
model wrapped in ``poutine.reparam`` with ``LocScaleReparam(0.0)`` for ``a`` and ``b``,
and the LKJ model written as ``ab = mu_ab + (scale_tril @ z.unsqueeze(-1)).squeeze(-1)``;
their rows read the derived values through the county index, which pyro_qem folds into
the county groups exactly. Their joint draws of the centred latents are recomputed from
the drawn latents by Pyro's ``Predictive``. Printed per variant and seed: the worst mean error in reference sds
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

# model -> the centred latents, deterministic sites of its non-centred version
CASES = {
    "intercepts": ("a",),
    "slopes": ("a", "b"),
    "correlated": ("ab",),
}


VARIANTS = ("centred", "noncentre='auto'", "non-centred by hand")


def fit(name: str, variant: str, K: int, seed: int, steps: int = 600, num_samples: int = 2000):
    cm = COUNTY_MODELS[name]
    centred = variant != "non-centred by hand"
    model = cm.model if centred else cm.nuts_model
    args = radon_args()
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    # AutoQEM's own groups for indexed rows: the globals in one, the latents the rows
    # read (a and b, or their non-centred versions) in another.
    guide = AutoQEM(model, noncentre="auto" if variant == "noncentre='auto'" else None)
    inference = Inference(model, guide, K=K, lr=0.1, average_from=steps // 2)
    start = time.perf_counter()
    for _ in range(steps):
        inference.step(*args)
    seconds = time.perf_counter() - start
    draws = dict(sample_posterior(inference, *args, num_samples=num_samples))
    if not centred:
        # The centred latents are deterministic sites of the non-centred model.
        derived = Predictive(model, posterior_samples=draws, return_sites=list(CASES[name]))(*args)
        for site in CASES[name]:
            value = derived[site]
            draws[site] = value.reshape((num_samples,) + value.shape[-1 - (site == "ab"):])
    return seconds, moments_of(draws)
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--K", type=int, default=30)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--models", default="intercepts,slopes,correlated")
    options = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| model | variant | seed | fit (s) | worst mean err (site) | sd ratio | target met |")
    print("|---|---|---|---|---|---|---|")
    for name in options.models.split(","):
        cm = COUNTY_MODELS[name]
        ref, _ = radon_reference(cm, rebuild=False, run=False)
        if ref is None:
            raise SystemExit("No cached NUTS reference: run `python -m benchmarks.county` first.")
        for variant in VARIANTS:
            for seed in map(int, options.seeds.split(",")):
                seconds, moments = fit(name, variant, options.K, seed, options.steps,
                                       options.num_samples)
                e = errors(moments, ref)
                print(f"| {cm.title} | {variant} | {seed} | {seconds:.1f} | "
                      f"{e['worst_mean']:.3f} ({e['worst_site']}) | {e['sd_min']:.3f}-"
                      f"{e['sd_max']:.3f} | {'yes' if e['meets_target'] else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
