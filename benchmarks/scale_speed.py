"""Step time at scale: a QEM step (eager and compiled) against a Pyro SVI step on a
Bayesian logistic regression with many rows, side by side in one process.

    python -m benchmarks.scale_speed [--rows 100000 1000000] [--P 5] [--K 10 30]
                                     [--device cuda] [--repeats 40] [--no-compile]

Model: ``beta ~ Normal(0, 1)`` (P coefficients, one vector site), ``y_n ~ Bernoulli(logits
= x_n . beta)`` with the logits as one batched matmul (K x N logits, never K x N x P
products), float32 data on ``--device``. QEM: ``AutoQEM`` defaults, lr = 0.1, full batch,
eager (``compile=False``) and compiled (``compile="inductor"``; its recording and
compilation reported apart); Pyro SVI: ``AutoNormal``, ``Trace_ELBO`` (one particle),
Adam. One torch thread. All three are timed in alternating blocks (machine noise hits them alike); every
step returns a float, so GPU work is finished inside each timed step. Reported: ms per
step and the ratio to the SVI step.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Dict, List

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_qem import AutoQEM, Inference
from pyro_qem.infer import CompileFallbackWarning

from .models.base import linear, std_normal
from .step_time import time_blocks

WARMUP = 6  # set-up, the first eager step, the recording, its check and replays


def logistic(X, y):
    beta = pyro.sample("beta", std_normal(X, X.shape[-1:]).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=linear(X, beta)), obs=y)


def data(n: int, p: int, device: str, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=generator)
    beta = torch.randn(p, generator=generator) / p ** 0.5
    y = torch.bernoulli(torch.sigmoid(X @ beta), generator=generator)
    return X.to(device), y.to(device)


def steps_for(n: int, p: int, K: int, device: str, compile_modes) -> Dict[str, tuple]:
    """One step function per method, each warmed up; and the compile seconds."""
    X, y = data(n, p, device)
    steps, compile_s = {}, {}
    for mode in compile_modes:
        pyro.set_rng_seed(0)
        guide = AutoQEM(logistic, prefix=f"scale_{n}_{p}_{K}_{mode}")
        inference = Inference(logistic, guide, K=K, lr=0.1, compile=mode)
        with warnings.catch_warnings():
            warnings.simplefilter("error", CompileFallbackWarning)
            for _ in range(WARMUP):
                inference.step(X, y)
        label = "QEM eager" if mode is False else f"QEM {mode}"
        steps[label] = lambda i=inference: i.step(X, y)
        compile_s[label] = inference.compiled.compile_seconds if inference.compiled else 0.0
    pyro.set_rng_seed(0)
    svi = SVI(logistic, AutoNormal(logistic, init_scale=0.1), pyro.optim.Adam({"lr": 0.02}),
              Trace_ELBO())
    for _ in range(WARMUP):
        svi.step(X, y)
    steps["SVI"] = lambda: svi.step(X, y)
    return steps, compile_s


def main(argv=None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--P", type=int, nargs="+", default=[5])
    parser.add_argument("--K", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--no-compile", action="store_true", help="eager QEM and SVI only")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    modes = (False,) if args.no_compile else (False, "inductor")
    torch.set_num_threads(1)  # on a CPU, as the other step benchmarks (machine noise)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU, one torch thread"
    print(f"device: {device_name}; torch {torch.__version__}\n")
    print("| N | P | K | method | compile s | ms/step | x SVI step |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for n in args.rows:
        for p in args.P:
            for K in args.K:
                pyro.clear_param_store()
                steps, compile_s = steps_for(n, p, K, args.device, modes)
                seconds = time_blocks(steps, args.repeats)
                for label, per_step in seconds.items():
                    ratio = per_step / seconds["SVI"]
                    shown = f"{compile_s[label]:.1f}" if compile_s.get(label) else "-"
                    print(f"| {n:.0e} | {p} | {K} | {label} | {shown} | {1000 * per_step:.2f} "
                          f"| {ratio:.2f} |", flush=True)
                    rows.append({"N": n, "P": p, "K": K, "method": label, "ms": 1000 * per_step,
                                 "x_svi": ratio, "compile_s": compile_s.get(label, 0.0)})
    return rows


if __name__ == "__main__":
    main()
