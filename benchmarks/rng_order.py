"""Does the compiled step draw its particles in the eager order on this device?

    python -m benchmarks.rng_order [cpu|cuda]

First single random ops, recorded with ``make_fx`` and compiled by ``torch.compile``
(``fallback_random``), against eager from the same generator state; then the bus model's
QEM step eager twice (is eager deterministic here?) and recorded / compiled, with any
:class:`~pyro_qem.infer.CompileFallbackWarning` its check raised. On an H200 with torch
2.11 (before the step's draws were lifted out of the compiled graph) the single ops
agreed and the compiled bus step did not (its check fell back: inductor reordered the
draws, pytorch/pytorch#181136).
"""
import sys
import warnings

import pyro
import pyro.distributions as dist
import torch
import torch._inductor.config as inductor_config
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_qem import AutoQEM, Inference

from .models import MODELS

OPS = {
    "normal(loc, scale)": lambda l, s: torch.normal(l, s),
    "Normal.sample": lambda l, s: dist.Normal(l, s).sample(),
    "randn * s + l": lambda l, s: torch.randn(l.shape, device=l.device) * s + l,
    "rand": lambda l, s: torch.rand(l.shape, device=l.device) + l,
    "two normals": lambda l, s: torch.normal(l, s) + 2 * torch.normal(l * 0, s),
    "Gamma.sample": lambda l, s: dist.Gamma(s, s).sample(),
}


def single_ops(device: str) -> None:
    inductor_config.fallback_random = True
    loc = torch.randn(30, 7, device=device)
    scale = torch.rand(30, 7, device=device) + 0.5
    cuda = device == "cuda"
    for name, op in OPS.items():
        compiled = torch.compile(make_fx(op)(loc, scale), dynamic=False)
        state = torch.cuda.get_rng_state() if cuda else torch.get_rng_state()
        compiled(loc, scale)
        out = compiled(loc, scale)
        (torch.cuda.set_rng_state if cuda else torch.set_rng_state)(state)
        op(loc, scale)
        expected = op(loc, scale)
        print(f"{name:20s} max |compiled - eager| = {(out - expected).abs().max().item():.3g}",
              flush=True)


def bus_steps(device: str, steps: int = 5) -> None:
    bm = MODELS["bus"]
    train, _ = bm.load(device)

    def fit(mode):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoQEM(bm.model, groups=bm.groups, prefix=f"rng_order_{mode}")
        inference = Inference(bm.model, guide, K=30, lr=0.1, compile=mode)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            losses = [inference.step(train) for _ in range(steps)]
        return losses, [str(w.message) for w in caught if "Compile" in w.category.__name__]

    eager, _ = fit(False)
    again, _ = fit(False)
    print("bus eager twice: max loss diff", max(abs(a - b) for a, b in zip(eager, again)))
    for mode in ("trace", "inductor"):
        losses, fallbacks = fit(mode)
        diff = max(abs(a - b) for a, b in zip(eager, losses))
        print(f"bus {mode}: max loss diff {diff:.3g}; fallbacks: {fallbacks}", flush=True)


if __name__ == "__main__":
    device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
    single_ops(device)
    bus_steps(device)
