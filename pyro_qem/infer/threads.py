"""How many intra-op threads a step runs with.

A QEM step on a small or medium model is a swarm of small tensor ops. With torch's
default of one thread per core, every op synchronises the thread pool, and as soon as
another process keeps a core busy each op waits for a descheduled worker: measured on a
2-core machine beside one busy process, radon at K = 30 took 70 ms a step with 2
threads against 6.5 ms with 1, bus 160-850 ms against 17-26 ms. Large factors still
gain from several threads, so ``"auto"`` picks one thread only below
:data:`SMALL_FACTOR_ENTRIES`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Union

import torch

# Below this many entries in a step's largest factor, one thread is faster under load.
SMALL_FACTOR_ENTRIES = 1 << 20

Threads = Union[None, int, str]


def check_num_threads(num_threads: Threads) -> Threads:
    if num_threads is None or num_threads == "auto":
        return num_threads
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(
            f"num_threads must be 'auto', None (leave torch's setting) or a positive int, "
            f"got {num_threads!r}."
        )
    return num_threads


@contextlib.contextmanager
def step_threads(num_threads: Threads, largest_factor: Optional[int]) -> Iterator[None]:
    """Run the block with the step's thread count (see the module docstring), then
    restore torch's setting."""
    wanted = num_threads
    if num_threads == "auto":
        small = largest_factor is not None and largest_factor < SMALL_FACTOR_ENTRIES
        wanted = 1 if small else None
    if wanted is None or wanted == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)
