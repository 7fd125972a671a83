"""The compiled QEM step against the eager one, side by side in one process.

    python -m benchmarks.compiled_step [--K 30] [--repeats 200] [--models bus radon movielens]
                                       [--device cuda] [--modes trace inductor cudagraphs] [--warm-cache]

For each benchmark model (its recommended groups, lr = 0.1, one torch thread; AutoQEM's
default non-centred proposals, or with ``--noncentre none`` every site proposed as
written, as ``benchmarks.compare`` fits), three
fits from the same seed: eager (``compile=False``), the recorded step replayed
(``compile="trace"``) and the recording compiled by ``torch.compile``
(``compile="inductor"``). Reported: the seconds spent recording and compiling (on top of
the steps; cold, with a fresh kernel cache, unless ``--warm-cache``; torch caches
inductor's kernels on disk, so a repeat compiles faster: a second fit of the same model
in the same process is shown in brackets), ms per step
timed in alternating blocks (machine noise hits all three alike), the ratio to eager,
the number of steps after which compilation has paid for itself, and the largest
difference of ``-log P_hat`` from the eager fit over the first steps (float32 models: a
fused graph rounds differently).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from typing import List

import pyro
import torch

from pyro_qem import AutoQEM, Inference
from pyro_qem.infer import CompileFallbackWarning

from .models import MODELS
from .step_time import time_blocks

ALL_MODES = (False, "trace", "inductor")
# Steps before timing: set-up, the first eager step, the recording, its check, and six
# replays, whose losses are compared with the eager fit's.
WARMUP = 10


def _inference(name: str, mode, K: int, prefix: str, noncentre="auto") -> Inference:
    bench = MODELS[name]
    pyro.set_rng_seed(0)
    guide = AutoQEM(bench.model, groups=bench.groups, prefix=prefix, noncentre=noncentre)
    return Inference(bench.model, guide, K=K, lr=0.1, compile=mode)


def run(name: str, K: int, repeats: int, modes=ALL_MODES, device: str = "cpu",
        noncentre="auto") -> List[str]:
    train, _ = MODELS[name].load(device)
    inferences, losses, compile_s = {}, {}, {}
    for mode in modes:
        with warnings.catch_warnings():
            warnings.simplefilter("error", CompileFallbackWarning)
            inference = _inference(name, mode, K, f"{name}_{mode}", noncentre)
            losses[mode] = [inference.step(train) for _ in range(WARMUP)]
        inferences[mode] = inference
        compile_s[mode] = inference.compiled.compile_seconds if inference.compiled else 0.0
    again = None
    if "inductor" in modes:  # a second recording in this process: what a repeat costs
        again = _inference(name, "inductor", K, f"{name}_again", noncentre)
        for _ in range(WARMUP):
            again.step(train)
    seconds = time_blocks({str(m): (lambda i=inferences[m]: i.step(train)) for m in modes}, repeats)
    eager = seconds["False"]
    rows = []
    for mode in modes:
        per_step = seconds[str(mode)]
        diff = max(abs(a - b) for a, b in zip(losses[False], losses[mode]))
        if mode is False:
            rows.append(f"| {name} | eager | - | {1000 * per_step:.2f} | 1.00 | - | - |")
            continue
        gain = eager - per_step
        paid = f"{compile_s[mode] / gain:.0f}" if gain > 0 else "never"
        extra = f" ({again.compiled.compile_seconds:.1f} again)" if mode == "inductor" else ""
        rows.append(f"| {name} | {mode} | {compile_s[mode]:.1f}{extra} | {1000 * per_step:.2f} | "
                    f"{per_step / eager:.2f} | {paid} | {diff:.1e} |")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--K", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--models", nargs="+", default=["bus", "radon", "movielens"], choices=sorted(MODELS))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where the data (and so the model's tensors) live")
    parser.add_argument("--modes", nargs="+", default=["trace", "inductor"], choices=["trace", "inductor", "cudagraphs"],
                        help="compiled steps to time beside the eager one")
    parser.add_argument("--noncentre", default="auto", choices=("auto", "none"),
                        help="AutoQEM's proposals: its default non-centred ones where they "
                             "help ('auto'), or every site as written ('none', as "
                             "benchmarks.compare fits)")
    parser.add_argument("--warm-cache", action="store_true",
                        help="keep torch's on-disk kernel cache (default: a fresh one, so the "
                             "first compilation is timed cold, as on a new machine)")
    args = parser.parse_args(argv)
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_")
    torch.set_num_threads(1)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU, one torch thread"
    noncentre = None if args.noncentre == "none" else "auto"
    print(f"K = {args.K}, {where}, torch {torch.__version__}, noncentre={noncentre!r}")
    print("| model | step | record + compile s | ms/step | x eager | steps to pay off | max loss diff (first steps) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        for row in run(name, args.K, args.repeats, (False, *args.modes), args.device, noncentre):
            print(row, flush=True)


if __name__ == "__main__":
    main()
