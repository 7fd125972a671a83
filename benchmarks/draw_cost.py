"""The cost of 2000 joint draws (``sample_posterior``) against the 600-step fit they
come from, at the README's settings (K = 30, lr = 0.1, averaging from step 300).

    python -m benchmarks.draw_cost [--num-samples 2000] [--steps 600] [--draws-per-run auto]

Models: centred eight schools (each global site its own particle group, AutoQEM's
default, and mu, tau in one group) and the Minnesota radon hierarchies with indexed
groups (varying intercepts, varying slopes). One torch thread. Printed per model: the
fit's and the draws' wall time, their ratio, the draws taken per particle set, the
number of sets, and the effective number of independent draws that
:class:`pyro_qem.outputs.draws.JointDraws` reports.
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch

from pyro_qem import AutoQEM, Inference, sample_posterior

from .models.county import radon_args, varying_intercepts, varying_slopes
from .models.posteriors import POSTERIORS

SCHOOLS = POSTERIORS["eight_schools_c"]

CASES = {
    "eight schools (default groups)": (SCHOOLS.model, None, None),
    "eight schools (mu, tau grouped)": (SCHOOLS.model, [["mu", "tau"]], None),
    "radon varying intercepts": (varying_intercepts, None, radon_args),
    "radon varying slopes": (varying_slopes, None, radon_args),
}


def measure(model, groups, args, steps: int, num_samples: int, draws_per_run, seed: int = 0):
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    inference = Inference(model, AutoQEM(model, groups=groups), K=30, lr=0.1,
                          average_from=steps // 2)
    start = time.perf_counter()
    for _ in range(steps):
        inference.step(*args)
    fit = time.perf_counter() - start
    start = time.perf_counter()
    draws = sample_posterior(inference, *args, num_samples=num_samples,
                             draws_per_run=draws_per_run)
    return fit, time.perf_counter() - start, draws


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--draws-per-run", default="auto",
                        help='"auto" or an int (1: strictly independent draws)')
    options = parser.parse_args(argv)
    per_run = options.draws_per_run if options.draws_per_run == "auto" else int(options.draws_per_run)
    torch.set_num_threads(1)
    print(f"| model | fit ({options.steps} steps) s | {options.num_samples} draws s | "
          "draws / fit | draws per set | sets | effective draws |")
    print("|---|---|---|---|---|---|---|")
    for name, (model, groups, args) in CASES.items():
        args = args() if args is not None else SCHOOLS.args()
        fit, draw, draws = measure(model, groups, args, options.steps, options.num_samples, per_run)
        print(f"| {name} | {fit:.2f} | {draw:.2f} | {draw / fit:.2f} | {draws.draws_per_set} | "
              f"{draws.num_sets} | {draws.effective_draws:.0f} |", flush=True)


if __name__ == "__main__":
    main()
