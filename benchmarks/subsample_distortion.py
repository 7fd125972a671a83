"""How far QEM's minibatch update moves the fitted spread of a global site.

Model: mu ~ N(0, 10), theta_i ~ N(mu, 1), y_i ~ N(theta_i, 1), i = 1..N. Prints, for
full data and for minibatches of B, the fitted mean error of mu (in posterior sds) and
the ratio fitted sd / exact sd, over a few seeds.

    python -m benchmarks.subsample_distortion [--n 200] [--b 50] [--steps 800]
"""

from __future__ import annotations

import argparse
import warnings

import pyro
import pyro.distributions as dist
import torch

from pyro_qem import AutoQEM, Inference
from pyro_qem.infer import SubsampleWarning


def model(y, subsample_size=None):
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 10.0))
    with pyro.plate("items", len(y), subsample_size=subsample_size) as idx:
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.sample("obs", dist.Normal(theta, 1.0), obs=y[idx])


def exact_mu(y):
    var = 1 / (1 / 100 + len(y) / 2)
    return var * y.sum() / 2, var ** 0.5


def fit(y, batch, steps, seed):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = AutoQEM(model)
    inference = Inference(model, guide, K=30, lr=0.1, average_from=steps // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SubsampleWarning)
        for _ in range(steps):
            inference.step(y, batch)
    return guide.distributions()["mu"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--b", type=int, default=50)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{'setting':>12} {'seed':>4} {'mean err (sd)':>14} {'sd ratio':>9}")
    for label, batch in (("full data", None), (f"B = {args.b}", args.b)):
        for seed in range(args.seeds):
            torch.manual_seed(100 + seed)
            y = 2.0 + 1.4 * torch.randn(args.n, dtype=torch.float64)
            m, s = exact_mu(y)
            q = fit(y, batch, args.steps, seed)
            print(f"{label:>12} {seed:>4} {float((q.mean - m) / s):>14.3f} {float(q.stddev / s):>9.3f}")


if __name__ == "__main__":
    main()
