"""Memory-bounded contraction: one step of a model whose contraction peak exceeds a
budget, whole and in chunks, each configuration in a fresh subprocess.

    python -m benchmarks.memory_chunks [--K 20] [--N 2000] [--budgets-mib 256 64 32 16]
        [--out benchmarks/results/memory_chunks.md]

The model: three global latents, and in a plate of N elements a local latent read by
three observations, each also reading one global. Its factors are K x K x N, but the
plate's contraction builds a K x K x K x N term (and the einsum a K^4 x N one on the
way), with its backward pass for the weights. Per configuration: the planner's
estimated peak (the factors plus the simulated contraction and backward pass), the
measured increase of peak RSS (``ru_maxrss``) over one ``estimate`` + weights (the
factors' computation included) above the RSS just before it, the time of that first
step (planning included) and of a second one (plan cached), and the largest
|difference| from the whole contraction of ``log P_hat`` and of the weights (same seed,
same particles). Then the time a K = 10**4 step of an 8-school hierarchy takes to be
refused, in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = "--child"


def three_globals(y):
    import pyro
    import pyro.distributions as dist
    import torch

    zero = torch.zeros((), dtype=y.dtype)
    zs = [pyro.sample(f"z{i}", dist.Normal(zero, 1.0)) for i in range(3)]
    with pyro.plate("data", y.shape[0]):
        a = pyro.sample("a", dist.Normal(zero, 1.0))
        for i, z in enumerate(zs):
            pyro.sample(f"y{i}", dist.Normal(z + a, 1.0), obs=y[:, i])


def child_step(K: int, N: int, budget: float, out: str) -> None:
    """One configuration, in this (fresh) process: writes its figures to ``out``."""
    import pyro
    import torch

    from pyro_qem import AutoQEM, Inference
    from pyro_qem.estimator import estimate
    from pyro_qem.estimator.contraction import Chunking
    from pyro_qem.estimator.memory import (
        MemoryBudgetError,
        held_bytes,
        plan_contraction,
        simulate_contraction,
    )

    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    y = torch.randn(N, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    run = Inference(three_globals, AutoQEM(three_globals), K=K).run_particles(y)
    # The plan and its estimate, from the factors' layout (computed on a copy of the
    # run's factors, then freed, so that the measured step starts from the run alone).
    layout = estimate(run.sites, run.structure, K, links=run.links, contract=False)
    terms = layout.factors + [s.factor for s in layout.sources]
    held = held_bytes(terms)
    try:
        chunking = None if budget <= 0 else plan_contraction(
            terms, layout.plate_scales, {}, budget, plate_names=run.structure.symbols.plate_names)
    except MemoryBudgetError as error:
        Path(out).write_text(json.dumps({"refused": str(error)}))
        return
    estimated = held + simulate_contraction(terms, layout.plate_scales, {}, chunking=chunking).peak
    del layout, terms
    max_memory = None if budget <= 0 else budget
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    result = estimate(run.sites, run.structure, K, links=run.links, max_memory=max_memory)
    weights = result.weights()
    first = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    log_p_hat = result.log_p_hat.item()
    del result
    start = time.perf_counter()
    again = estimate(run.sites, run.structure, K, links=run.links, max_memory=max_memory)
    again.weights()
    second = time.perf_counter() - start
    torch.save({g: w.detach() for g, w in weights.items()}, out + ".pt")
    Path(out).write_text(json.dumps({
        "chunks": chunking.num_chunks if isinstance(chunking, Chunking) else 1,
        "held": held, "estimated": estimated, "measured": max(0, after - before),
        "first_s": first, "second_s": second, "log_p_hat": log_p_hat,
    }))


def child_refusal(out: str) -> None:
    """Time a K = 10**4 step of an 8-school hierarchy to its refusal."""
    import pyro
    import pyro.distributions as dist
    import torch

    from pyro_qem import AutoQEM, Inference
    from pyro_qem.estimator.memory import MemoryBudgetError

    def hierarchy(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 5.0))
        with pyro.plate("schools", 8):
            theta = pyro.sample("theta", dist.Normal(mu, 2.0))
            pyro.sample("obs", dist.Normal(theta, 1.0), obs=y)

    y = torch.randn(8, dtype=torch.float64)
    inference = Inference(hierarchy, AutoQEM(hierarchy), K=10 ** 4)
    start = time.perf_counter()
    try:
        inference.step(y)
        message = "not refused"
    except MemoryBudgetError as error:
        message = str(error)
    Path(out).write_text(json.dumps({"seconds": time.perf_counter() - start, "message": message}))


# glibc's malloc raises its mmap threshold to the size of each large block freed (up to
# 32 MiB), so freed chunk intermediates below it stay in the heap, fragmented, and RSS
# counts them; a fixed threshold returns every block of 1 MiB or more when freed.
FIXED_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": str(2 ** 20)}


def in_subprocess(*args: str, env: dict = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "figures.json")
        subprocess.run([sys.executable, "-m", "benchmarks.memory_chunks", CHILD, *args, out],
                       check=True, env={**os.environ, **(env or {})})
        figures = json.loads(Path(out).read_text())
        if Path(out + ".pt").exists():
            import torch
            figures["weights"] = torch.load(out + ".pt")
        return figures


def mib(num_bytes: float) -> str:
    return f"{num_bytes / 2 ** 20:.0f}"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--K", type=int, default=20)
    parser.add_argument("--N", type=int, default=2000)
    parser.add_argument("--budgets-mib", type=float, nargs="+", default=[256, 64, 32, 16])
    parser.add_argument("--out", default=None, help="also write the table here")
    args = parser.parse_args(argv)

    rows, refusals = [], []
    step = ("step", str(args.K), str(args.N))
    whole = in_subprocess(*step, "0")
    for budget_mib in [0] + list(args.budgets_mib):
        figures = whole if budget_mib == 0 else in_subprocess(*step, str(budget_mib * 2 ** 20))
        if "refused" in figures:
            refusals.append(f"Budget {budget_mib:g} MiB: refused: \"{figures['refused']}\"")
            continue
        fixed = in_subprocess(*step, str(budget_mib * 2 ** 20), env=FIXED_THRESHOLD)
        diff_w = max((figures["weights"][g] - whole["weights"][g]).abs().max().item()
                     for g in whole["weights"])
        rows.append(
            f"| {'none (whole)' if budget_mib == 0 else f'{budget_mib:g}'} | {figures['chunks']} "
            f"| {mib(figures['held'])} | {mib(figures['estimated'])} | {mib(figures['measured'])} "
            f"| {mib(fixed['measured'])} | {figures['first_s']:.2f} | {figures['second_s']:.2f} "
            f"| {abs(figures['log_p_hat'] - whole['log_p_hat']):.1e} | {diff_w:.1e} |"
        )
    refusal = in_subprocess("refusal")
    table = "\n".join([
        f"One step (estimate + weights) of `three_globals`, K = {args.K}, N = {args.N}, "
        "float64, one thread, each configuration in a fresh process "
        "(`python -m benchmarks.memory_chunks`). Memory in MiB: 'estimated' is the "
        "planner's (factors + simulated contraction and backward pass), 'RSS' the rise of "
        "peak RSS over the step above the RSS before it (factors' computation included), "
        "with glibc's default malloc and with `MALLOC_MMAP_THRESHOLD_=1048576` (glibc "
        "otherwise raises its mmap threshold to each large block freed, up to 32 MiB, "
        "keeping freed chunk intermediates in a fragmented heap). Times with the default.",
        "",
        "| budget (MiB) | chunks | factors | estimated peak | RSS rise | RSS rise, fixed "
        "mmap threshold | 1st step (s) | 2nd step (s) | abs diff log P_hat "
        "| max abs diff weights |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *[line + "\n" for line in refusals],
        f"K = 10**4 on an 8-school hierarchy: refused after {refusal['seconds']:.3f} s: "
        f"\"{refusal['message']}\"",
    ])
    print(table)
    if args.out:
        Path(args.out).write_text("# Memory-bounded contraction\n\n" + table + "\n")
    return table


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        if sys.argv[2] == "step":
            child_step(int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6])
        else:
            child_refusal(sys.argv[3])
    else:
        main()
