"""QEM on the bundled radon data: ``python -m pyro_qem.demo`` (or ``make demo``).

Fits the hierarchical radon regression of the QEM paper (4 states, 150 zip codes per
state) and prints the fitted posterior of the global and state-level latents with the
time taken.
"""

from __future__ import annotations

import argparse
import time

import pyro
import pyro.distributions as dist
import torch

from pyro_qem import AutoQEM, Inference
from pyro_qem.datasets import load_radon

GROUPS = [["global_mean", "global_log_sigma"],
          ["state_mean", "state_log_sigma", "beta_u", "beta_basement"]]


def radon_model(basement: torch.Tensor, log_uranium: torch.Tensor, log_radon: torch.Tensor) -> None:
    """Per-state regression of log radon on basement and log uranium."""
    states, zips = log_radon.shape
    global_mean = pyro.sample("global_mean", dist.Normal(0.0, 1.0))
    global_log_sigma = pyro.sample("global_log_sigma", dist.Normal(0.0, 1.0))
    with pyro.plate("state", states, dim=-2):
        state_mean = pyro.sample("state_mean", dist.Normal(global_mean, global_log_sigma.exp()))
        state_log_sigma = pyro.sample("state_log_sigma", dist.Normal(0.0, 1.0))
        beta_u = pyro.sample("beta_u", dist.Normal(0.0, 1.0))
        beta_basement = pyro.sample("beta_basement", dist.Normal(0.0, 1.0))
        with pyro.plate("zip", zips, dim=-1):
            loc = state_mean + basement * beta_basement + log_uranium * beta_u
            pyro.sample("log_radon", dist.Normal(loc, state_log_sigma.exp()), obs=log_radon)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="QEM on the bundled radon data.")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--K", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    data = {k: v[:, :150] for k, v in load_radon().items()}
    guide = AutoQEM(radon_model, groups=GROUPS)
    inference = Inference(radon_model, guide, K=args.K, lr=args.lr, average_from=args.steps // 2)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = inference.step(**data)
    seconds = time.perf_counter() - start
    print(f"QEM on radon (4 states x 150 zips), K = {args.K}, lr = {args.lr}: {args.steps} steps "
          f"in {seconds:.2f} s ({1000 * seconds / args.steps:.1f} ms/step); "
          f"log P_hat = {-inference.evaluate_loss(**data):.1f} (last step {-loss:.1f})\n")
    print(f"{'site':<18}{'element':>9}{'mean':>9}{'sd':>8}{'5%':>9}{'95%':>9}")
    q = guide.distributions()
    bounds = guide.quantiles([0.05, 0.95])
    for name, d in q.items():
        mean, sd = d.mean.reshape(-1), d.stddev.reshape(-1)
        lo, hi = bounds[name][0].reshape(-1), bounds[name][1].reshape(-1)
        for i in range(mean.numel()):
            label = f"state {i}" if mean.numel() > 1 else ""
            print(f"{name:<18}{label:>9}{mean[i]:>9.3f}{sd[i]:>8.3f}{lo[i]:>9.3f}{hi[i]:>9.3f}")


if __name__ == "__main__":
    main()
