"""Per-step time of ``Inference.step`` against Pyro's ``TraceTMC_ELBO`` loss + gradient
on the same model and the same K (the same massively parallel estimator in Pyro).

    python -m benchmarks.step_time [--repeats 200] [--device cpu]

Models: an 8-group Normal hierarchy (K = 10 and 30) and radon (4 states x 150 zips,
its six latent sites ungrouped, K = 5 and 10: TraceTMC has no groups). Both methods are
timed in alternating blocks in one process, so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import TraceTMC_ELBO, config_enumerate

from pyro_qem import AutoQEM, Inference
from pyro_qem.datasets import load_radon
from pyro_qem.demo import radon_model


def hierarchy(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("groups", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, 2.0))
        pyro.sample("obs", dist.Normal(theta, 1.0), obs=y)


def mean_field_guide(model, *args):
    """A hand-written mean-field Normal guide with the model's plates, for TraceTMC."""
    trace = pyro.poutine.trace(model).get_trace(*args)
    latent = [(n, s) for n, s in trace.nodes.items()
              if s["type"] == "sample" and not s["is_observed"]
              and type(s["fn"]).__name__ != "_Subsample"]
    frames = {f.name: f for _, s in latent for f in s["cond_indep_stack"] if f.vectorized}

    def guide(*args):
        plates = {name: pyro.plate(name, f.size, dim=f.dim) for name, f in frames.items()}
        for name, site in latent:
            shape = site["fn"].batch_shape
            loc = pyro.param(f"tmc_loc_{name}", torch.zeros(shape))
            scale = pyro.param(f"tmc_scale_{name}", torch.ones(shape),
                               constraint=dist.constraints.positive)
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                pyro.sample(name, dist.Normal(loc, scale))

    return guide


def time_blocks(steps, repeats, blocks=4):
    """Seconds per call of each function in ``steps``, alternating blocks."""
    totals = {name: 0.0 for name in steps}
    for _ in range(blocks):
        for name, fn in steps.items():
            start = time.perf_counter()
            for _ in range(repeats // blocks):
                fn()
            totals[name] += time.perf_counter() - start
    return {name: total / (repeats // blocks * blocks) for name, total in totals.items()}


def compare(label, model, args, K, nesting, repeats):
    pyro.clear_param_store()
    inference = Inference(model, AutoQEM(model), K=K)
    guide = config_enumerate(mean_field_guide(model, *args), "parallel", num_samples=K, expand=False)
    elbo = TraceTMC_ELBO(max_plate_nesting=nesting)

    def tmc_step():
        loss = elbo.differentiable_loss(model, guide, *args)
        params = [p.unconstrained() for n, p in pyro.get_param_store().items() if n.startswith("tmc")]
        torch.autograd.grad(loss, params)

    for _ in range(5):
        inference.step(*args)
        tmc_step()
    seconds = time_blocks({"QEM": lambda: inference.step(*args), "TMC": tmc_step}, repeats)
    print(f"{label:<28}{K:>4}{1000 * seconds['QEM']:>12.2f}{1000 * seconds['TMC']:>12.2f}"
          f"{seconds['TMC'] / seconds['QEM']:>10.2f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    print(f"{'model':<28}{'K':>4}{'QEM ms':>12}{'TMC ms':>12}{'TMC/QEM':>10}")
    y = 3.0 * torch.randn(8)
    for K in (10, 30):
        compare("hierarchy (8 groups)", hierarchy, (y,), K, 1, args.repeats)
    radon = {k: v[:, :150] for k, v in load_radon().items()}
    radon_args = (radon["basement"], radon["log_uranium"], radon["log_radon"])
    for K in (5, 10):
        compare("radon (ungrouped)", radon_model, radon_args, K, 2, args.repeats // 4)


if __name__ == "__main__":
    main()
