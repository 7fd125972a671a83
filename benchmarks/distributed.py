"""Distributed QEM on one machine: wall time per step of one process against P
processes (gloo), and the cost of one all-reduce per message size.

    python -m benchmarks.distributed [--rows 1000000] [--K 10] [--steps 8] [--procs 2]

The model is a regression with 1e6 rows, y_n ~ Normal(a + b x_n, s), whose three global
sites share one particle group (each step's largest factor has K x N entries). One
process with 1 thread steps on all rows; then P processes with 1 thread each step on
their shards (``pyro.plate("data", N, subsample=rows)``), in the same run, after it.
Each time is the median over ``--steps`` steps after two warm-up steps. Then P
processes time an all-reduce of 8 B to 8 MB (median of 50), which is what the README's
projection to 8-64 processes starts from.

The numbers are of a shared, noisy machine: run it twice, and compare within a run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import time

import torch
import torch.multiprocessing as mp


def model(x, y, rows, num_rows):
    import pyro
    import pyro.distributions as dist

    a = pyro.sample("a", dist.Normal(torch.tensor(0.0), 5.0))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0), 5.0))
    s = pyro.sample("s", dist.LogNormal(torch.tensor(0.0), 1.0))
    with pyro.plate("data", num_rows, subsample=rows):
        pyro.sample("y", dist.Normal(a + b * x, s), obs=y)


def data(num_rows: int):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(num_rows, generator=generator)
    y = 1.0 + 2.0 * x + 0.5 * torch.randn(num_rows, generator=generator)
    return x, y


def time_steps(rows, num_rows, K, steps, process_group=None):
    """Median wall and CPU seconds per step, the last loss, and (distributed) messages
    and bytes per step of this process."""
    import pyro

    from pyro_qem import AutoQEM, Inference

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x, y = data(num_rows)
    x, y = x[rows], y[rows]
    guide = AutoQEM(model, groups=[["a", "b", "s"]])
    inference = Inference(model, guide, K=K, lr=0.5, num_threads=1, process_group=process_group)
    for _ in range(2):
        inference.step(x, y, rows, num_rows)
    times, cpu, loss = [], [], None
    messages = bytes_ = 0
    for _ in range(steps):
        if process_group is not None:
            torch.distributed.barrier()  # start together: the slowest process sets the pace
            messages, bytes_ = process_group.messages, process_group.bytes
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = inference.step(x, y, rows, num_rows)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        if process_group is not None:
            messages, bytes_ = process_group.messages - messages, process_group.bytes - bytes_
    return statistics.median(times), statistics.median(cpu), loss, messages, bytes_


def _worker(rank, world, port, args, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=120))
    from pyro_qem.infer.distributed import ProcessGroup

    rows = torch.arange(rank, args.rows, world)
    seconds, cpu, loss, messages, bytes_ = time_steps(rows, args.rows, args.K, args.steps, ProcessGroup())
    sizes = {}
    for exponent in range(0, 21, 4):
        tensor = torch.zeros(max(1, 2 ** exponent))  # 4 B .. 4 MB of float32
        for _ in range(5):
            torch.distributed.all_reduce(tensor)
        laps = []
        for _ in range(50):
            start = time.perf_counter()
            torch.distributed.all_reduce(tensor)
            laps.append(time.perf_counter() - start)
        sizes[tensor.numel() * 4] = statistics.median(laps)
    torch.save({"seconds": seconds, "cpu": cpu, "loss": loss, "messages": messages, "bytes": bytes_,
                "all_reduce": sizes}, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--K", type=int, default=10)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--procs", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    single, single_cpu, single_loss, _, _ = time_steps(torch.arange(args.rows), args.rows, args.K, args.steps)

    import tempfile
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_worker, args=(args.procs, _free_port(), args, out), nprocs=args.procs,
                           join=True, start_method="spawn")
        ranks = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(args.procs)]
    distributed = max(r["seconds"] for r in ranks)
    print(f"QEM step, {args.rows} rows, K = {args.K}, 1 thread per process "
          f"({os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f})")
    print()
    print("| processes | ms / step | ratio | CPU ms / step (per process) | -log P_hat (last step) "
          "| messages / step | bytes / step |")
    print("|---|---|---|---|---|---|---|")
    print(f"| 1 | {1e3 * single:.1f} | 1.00 | {1e3 * single_cpu:.1f} | {single_loss:.1f} | 0 | 0 |")
    cpu = ", ".join(f"{1e3 * r['cpu']:.1f}" for r in ranks)
    print(f"| {args.procs} | {1e3 * distributed:.1f} | {distributed / single:.2f} | {cpu} | "
          f"{ranks[0]['loss']:.1f} | {ranks[0]['messages']} | {ranks[0]['bytes']} |")
    print()
    print(f"gloo all_reduce on {args.procs} processes of this machine (median of 50):")
    print()
    print("| bytes | microseconds |")
    print("|---|---|")
    for size in sorted(ranks[0]["all_reduce"]):
        print(f"| {size} | {1e6 * max(r['all_reduce'][size] for r in ranks):.0f} |")


if __name__ == "__main__":
    main()
